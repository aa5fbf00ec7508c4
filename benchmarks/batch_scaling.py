"""The large-batch study: the default stdlib LM at a fixed token budget, global batch x1, x4, x16 of a
small reference, with AdamW unscaled, AdamW with square-root scaling and LAMB with square-root scaling.

For each run: final validation loss (the whole valid split), optimiser steps, wall time, and the
gradient noise scale measured during the run (runs with at least two micro-batches per step).
Warm-up covers the same number of tokens in every run. Writes a markdown table to stdout and a plot
of validation loss against tokens.

    python benchmarks/batch_scaling.py [--budget 1600000] [--out docs/large_batch.png]
"""

import argparse
import json
import shutil
import time
from pathlib import Path

from bigbatch.config import load_config
from bigbatch.presets import default_lm
from bigbatch.train.loop import train
from bigbatch.train.metrics import read_metrics

REF_ROWS, SEQ = 4, 256  # reference global batch: 4 rows x 256 tokens = 1,024 tokens
REF_WARMUP = 100        # warm-up steps at the reference batch
MICRO_ROWS = 32


def run(name: str, k: int, optim: str, rule: str, lr: float, budget: int, work: Path) -> dict:
    rows = REF_ROWS * k
    steps = budget // (rows * SEQ)
    warmup = max(1, REF_WARMUP // k)
    sets = [f"train.global_batch_size={rows}", f"train.micro_batch_size={min(rows, MICRO_ROWS)}",
            f"train.max_steps={steps}", f"train.eval_every={max(1, steps // 8)}", "train.eval_batches=8",
            "train.save_every=0", "train.sample_tokens=0", f"train.log_every={max(1, steps // 50)}",
            f"optim.name={optim}", f"optim.lr={lr}", f"optim.warmup_steps={warmup}"]
    if rule != "none":  # lr from the reference: the rule rescales it (and would rescale the warm-up given at x1)
        sets = [s for s in sets if not s.startswith("optim.warmup_steps")]
        sets += [f"optim.scale_rule={rule}", f"optim.reference_batch={REF_ROWS}", f"optim.warmup_steps={REF_WARMUP}"]
    run_dir = work / name
    shutil.rmtree(run_dir, ignore_errors=True)
    cfg = load_config(None, sets, base=default_lm())
    start = time.perf_counter()
    summary = train(cfg, run_dir, progress=False)
    wall = time.perf_counter() - start
    noise = [r["noise_scale"] for r in read_metrics(run_dir / "metrics.jsonl") if r.get("noise_scale")]
    return {"name": name, "k": k, "optim": optim, "rule": rule, "global_tokens": rows * SEQ, "steps": steps,
            "lr": load_config(run_dir / "config.yaml").optim.lr, "valid_loss": summary["valid_loss"],
            "bits_per_byte": summary["valid_bits_per_byte"], "wall_s": wall,
            "noise_scale": noise[-1] if noise else None, "run_dir": str(run_dir)}


def plot(results: list[dict], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    for r in results:
        rows = [x for x in read_metrics(Path(r["run_dir"]) / "metrics.jsonl") if x.get("split") == "valid"]
        ax.plot([x["tokens"] for x in rows], [x["loss"] for x in rows], "o-", ms=3,
                label=f"x{r['k']} {r['optim']} {r['rule']} ({r['steps']} steps)")
    ax.set_xlabel("training tokens")
    ax.set_ylabel("validation loss (nats/token)")
    ax.set_title("Default stdlib LM at a fixed token budget")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--budget", type=int, default=1_600_000, help="training tokens of every run")
    p.add_argument("--lr", type=float, default=2e-3, help="AdamW / LAMB learning rate at the reference batch")
    p.add_argument("--work", default="/tmp/bigbatch-batch-scaling")
    p.add_argument("--out", default="docs/large_batch.png")
    p.add_argument("--reuse", action="store_true", help="keep runs that already have a result.json")
    args = p.parse_args()
    work = Path(args.work)
    plan = [("x1-adamw", 1, "adamw", "none")]
    for k in (4, 16):
        plan += [(f"x{k}-adamw-none", k, "adamw", "none"), (f"x{k}-adamw-sqrt", k, "adamw", "sqrt"),
                 (f"x{k}-lamb-sqrt", k, "lamb", "sqrt")]
    results = []
    for name, k, optim, rule in plan:
        saved = work / name / "result.json"
        if args.reuse and saved.exists():  # a finished run of an interrupted study
            results.append(json.loads(saved.read_text()))
            continue
        results.append(run(name, k, optim, rule, args.lr, args.budget, work))
        saved.write_text(json.dumps(results[-1]))
        print(json.dumps(results[-1]), flush=True)
    plot(results, Path(args.out))
    base = results[0]
    print("\n| run | global batch (tokens) | optimiser steps | lr | valid loss | vs x1 | wall s | noise scale (tokens) |")
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        noise = f"{r['noise_scale']:,.0f}" if r["noise_scale"] else "-"
        print(f"| {r['name']} | {r['global_tokens']:,} | {r['steps']} | {r['lr']:.2g} | {r['valid_loss']:.4f} | "
              f"{(r['valid_loss'] / base['valid_loss'] - 1) * 100:+.1f}% | {r['wall_s']:.0f} | {noise} |")


if __name__ == "__main__":
    main()
