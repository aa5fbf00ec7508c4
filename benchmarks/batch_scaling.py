"""The large-batch study: the default stdlib LM at a fixed token budget, global batch x1, x4, x16 of a
small reference, AdamW over a learning-rate sweep at every batch (the unscaled lr and the square-root
rule's are points of it), LAMB at x16 (the square-root rule applied by `optim.scale_rule`, and a
larger lr).

For each run: final validation loss (the whole valid split), optimiser steps, wall time, and the
gradient noise scale measured during the run (runs with at least two micro-batches per step). From
the best run of each batch size, the steps S(B) and tokens E(B) to reach a common training loss
give a measured critical batch: McCandlish et al.'s S = S_min (1 + B_crit / B) is a line in 1/B,
fitted by least squares. Then the same x1 and x16 settings on 2 processes (DDP) over a shorter
budget: wall time and the number of gradient all-reduces (one per optimiser step).

Writes markdown tables to stdout and a plot of training loss against tokens.

    python benchmarks/batch_scaling.py [--budget 1600000] [--out docs/large_batch.png] [--reuse]
"""

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

from bigbatch.config import load_config
from bigbatch.presets import default_lm
from bigbatch.train.loop import train
from bigbatch.train.metrics import read_metrics

REF_ROWS, SEQ = 4, 256  # reference global batch: 4 rows x 256 tokens = 1,024 tokens
MICRO_ROWS = 32


def settings(k: int, optim: str, rule: str, lr: float, budget: int) -> tuple[list[str], int]:
    """--set overrides of one run, and its optimiser steps. Warm-up: 5% of the steps (at least 10)."""
    rows = REF_ROWS * k
    steps = budget // (rows * SEQ)
    sets = [f"train.global_batch_size={rows}", f"train.micro_batch_size={min(rows, MICRO_ROWS)}",
            f"train.max_steps={steps}", "train.eval_every=0", "train.save_every=0", "train.sample_tokens=0",
            f"train.log_every={max(1, steps // 100)}", f"optim.name={optim}", f"optim.lr={lr}",
            f"optim.warmup_steps={max(10, steps // 20)}"]
    if rule != "none":  # lr given at the reference batch: the rule rescales it for this batch
        sets += [f"optim.scale_rule={rule}", f"optim.reference_batch={REF_ROWS}"]
    return sets, steps


def run(name: str, k: int, optim: str, rule: str, lr: float, budget: int, work: Path) -> dict:
    sets, steps = settings(k, optim, rule, lr, budget)
    if rule != "none":  # the warm-up given is the reference's: the rule divides it by k
        sets = [s if not s.startswith("optim.warmup_steps") else f"optim.warmup_steps={max(10, steps // 20) * k}"
                for s in sets]
    run_dir = work / name
    shutil.rmtree(run_dir, ignore_errors=True)
    cfg = load_config(None, sets, base=default_lm())
    start = time.perf_counter()
    summary = train(cfg, run_dir, progress=False)
    wall = time.perf_counter() - start
    noise = [r["noise_scale"] for r in read_metrics(run_dir / "metrics.jsonl") if r.get("noise_scale")]
    return {"name": name, "k": k, "optim": optim, "rule": rule, "global_tokens": REF_ROWS * k * SEQ, "steps": steps,
            "lr": load_config(run_dir / "config.yaml").optim.lr, "valid_loss": summary["valid_loss"],
            "bits_per_byte": summary["valid_bits_per_byte"], "wall_s": wall,
            "noise_scale": noise[-1] if noise else None, "run_dir": str(run_dir)}


def run_ddp(name: str, k: int, lr: float, budget: int, work: Path) -> dict:
    """The same setting on 2 processes (DDP, one gradient all-reduce per optimiser step)."""
    sets, steps = settings(k, "adamw", "none", lr, budget)
    sets = [s if not s.startswith("train.micro_batch_size") else
            f"train.micro_batch_size={min(REF_ROWS * k // 2, MICRO_ROWS)}" for s in sets]
    run_dir = work / name
    shutil.rmtree(run_dir, ignore_errors=True)
    cmd = [sys.executable, "-m", "bigbatch", "train", "--nproc", "2", "--run-dir", str(run_dir), "--no-progress"]
    for s in sets:
        cmd += ["--set", s]
    start = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True, cwd=Path(__file__).resolve().parent.parent)
    wall = time.perf_counter() - start
    summary = json.loads((run_dir / "summary.json").read_text())
    return {"name": name, "k": k, "steps": steps, "all_reduces": steps, "global_tokens": REF_ROWS * k * SEQ,
            "valid_loss": summary["valid_loss"], "wall_s": wall, "train_s": summary["train_seconds"]}


def smoothed_train_loss(run_dir: Path) -> list[tuple[int, int, float]]:
    """(step, tokens, loss) of the training rows, each loss the mean of a window of 5 log rows."""
    rows = [r for r in read_metrics(run_dir / "metrics.jsonl") if r.get("split") is None and "loss" in r]
    out = []
    for i in range(len(rows)):
        window = rows[max(0, i - 4) : i + 1]
        out.append((rows[i]["step"], rows[i]["tokens"], sum(r["loss"] for r in window) / len(window)))
    return out


def critical_batch(best: dict[int, dict]) -> dict:
    """Steps and tokens each batch size needed to reach the loss the worst of them ends at, and the
    least-squares fit S = S_min + S_min * B_crit / B (McCandlish et al. 2018, eq. 2.11)."""
    curves = {k: smoothed_train_loss(Path(r["run_dir"])) for k, r in best.items()}
    target = max(c[-1][2] for c in curves.values())
    reached = {}
    for k, curve in curves.items():
        step, tokens = next((s, t) for s, t, loss in curve if loss <= target)
        reached[k] = {"batch_tokens": best[k]["global_tokens"], "steps": step, "tokens": tokens}
    xs = [1.0 / r["batch_tokens"] for r in reached.values()]
    ys = [float(r["steps"]) for r in reached.values()]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)
    s_min = my - slope * mx
    return {"target_loss": target, "reached": reached, "s_min": s_min,
            "b_crit": slope / s_min if s_min > 0 else None}


def plot(results: list[dict], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 5.5))
    colors = {1: "tab:blue", 4: "tab:orange", 16: "tab:red"}
    for r in results:
        curve = smoothed_train_loss(Path(r["run_dir"]))
        ax.plot([t for _, t, _ in curve], [loss for _, _, loss in curve], color=colors[r["k"]],
                ls="--" if r["optim"] == "lamb" else "-", lw=1.2, alpha=0.9,
                label=f"x{r['k']} {r['optim']} lr {r['lr']:.3g} ({r['steps']} steps): {r['valid_loss']:.3f}")
    ax.set_ylim(top=2.6)
    ax.set_xlabel("training tokens")
    ax.set_ylabel("training loss, 5-row moving mean (nats/token)")
    ax.set_title("Default stdlib LM at a fixed token budget")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, title="run (steps): final valid loss", title_fontsize=7)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--budget", type=int, default=1_600_000, help="training tokens of every run")
    p.add_argument("--ddp-budget", type=int, default=400_000, help="training tokens of the 2-process runs")
    p.add_argument("--work", default="/tmp/bigbatch-batch-scaling")
    p.add_argument("--out", default="docs/large_batch.png")
    p.add_argument("--reuse", action="store_true", help="keep runs that already have a result.json")
    args = p.parse_args()
    work = Path(args.work)
    plan = [(f"x1-adamw-{lr:g}", 1, "adamw", "none", lr) for lr in (1e-3, 2e-3, 4e-3)]
    plan += [(f"x4-adamw-{lr:g}", 4, "adamw", "none", lr) for lr in (1e-3, 2e-3, 4e-3, 8e-3)]
    plan += [(f"x16-adamw-{lr:g}", 16, "adamw", "none", lr) for lr in (1e-3, 2e-3, 4e-3, 8e-3, 1.6e-2)]
    plan += [("x16-lamb-sqrt", 16, "lamb", "sqrt", 2e-3), ("x16-lamb-1.6e-02", 16, "lamb", "none", 1.6e-2)]
    results = [_cached(work / name, args.reuse, run, name, k, o, rule, lr, args.budget, work)
               for name, k, o, rule, lr in plan]
    plot(results, Path(args.out))
    best = {}
    for r in results:
        if r["k"] not in best or r["valid_loss"] < best[r["k"]]["valid_loss"]:
            best[r["k"]] = r
    base = best[1]
    print("\n| run | global batch (tokens) | optimiser steps | lr | valid loss | vs best x1 | wall s | noise scale (tokens) |")
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        noise = f"{r['noise_scale']:,.0f}" if r["noise_scale"] else "-"
        mark = " **best**" if best[r["k"]] is r else ""
        print(f"| {r['name']}{mark} | {r['global_tokens']:,} | {r['steps']} | {r['lr']:.3g} | {r['valid_loss']:.4f} | "
              f"{(r['valid_loss'] / base['valid_loss'] - 1) * 100:+.1f}% | {r['wall_s']:.0f} | {noise} |")
    crit = critical_batch(best)
    print(f"\nSteps / tokens of the best run of each batch to reach training loss {crit['target_loss']:.4f}:\n")
    print("| global batch (tokens) | steps | tokens |")
    print("|---|---|---|")
    for r in crit["reached"].values():
        print(f"| {r['batch_tokens']:,} | {r['steps']} | {r['tokens']:,} |")
    print(f"\nfit S = S_min (1 + B_crit / B): S_min = {crit['s_min']:.0f} steps, B_crit = "
          f"{crit['b_crit']:,.0f} tokens" if crit["b_crit"] else "\nfit failed (S_min <= 0)")
    ddp = [_cached(work / name, args.reuse, run_ddp, name, k, best[k]["lr"], args.ddp_budget, work)
           for name, k in (("ddp-x1", 1), ("ddp-x16", 16))]
    print("\n| 2 processes (DDP) | global batch (tokens) | optimiser steps = gradient all-reduces | train s | wall s | valid loss |")
    print("|---|---|---|---|---|---|")
    for r in ddp:
        print(f"| {r['name']} | {r['global_tokens']:,} | {r['all_reduces']} | {r['train_s']:.0f} | {r['wall_s']:.0f} | "
              f"{r['valid_loss']:.4f} |")


def _cached(run_dir: Path, reuse: bool, compute, *args) -> dict:
    """compute(*args), or with --reuse the result a finished run of an interrupted study saved."""
    saved = run_dir / "result.json"
    if reuse and saved.exists():
        return json.loads(saved.read_text())
    result = compute(*args)
    saved.write_text(json.dumps(result))
    print(json.dumps(result), flush=True)
    return result


if __name__ == "__main__":
    main()
