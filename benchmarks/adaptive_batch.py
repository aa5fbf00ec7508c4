"""The adaptive-batch study: the default LM at a fixed token budget, the best fixed batch (its lr swept)
against a batch ramp and the adaptive schedule (train.batch_schedule=adaptive), 3 seeds each.

Parts (each run is cached under --work, so an interrupted study resumes with --reuse):

  fixed     x1 = 4 rows of 256 tokens (1,024 tokens) at lr 1e-3 / 2e-3 / 4e-3, the best lr at seeds 1 and 2;
            x4 and x16 at two lrs each for the S(B) fit; x2 at the x1/x4 best lr: the batch left out of the
            fit, whose steps-to-loss the fit predicts
  adaptive  batch_noise_factor c in --factors at seed 0, the best c at seeds 1 and 2
  ramp      4 -> 16 rows over the first half of the tokens, 3 seeds

Every run: cosine schedule to 10% with a 5% warm-up over the run's tokens, AdamW, the validation loss
over the whole valid split at the end, the n-gram baseline of the same splits beside it. Prints
markdown tables; writes docs/adaptive_batch.png (loss and batch against tokens, the batch beside
c·B_noise) and --json with every number.

    python benchmarks/adaptive_batch.py [--part fixed|adaptive|ramp|all] [--reuse] [--threads 1]
"""

import argparse
import json
import shutil
import statistics
import time
from pathlib import Path

from bigbatch.config import load_config
from bigbatch.presets import default_lm
from bigbatch.train.loop import train
from bigbatch.train.metrics import read_metrics

BUDGET, SEQ, REF_ROWS = 1_600_000, 256, 4
LRS_X1 = (1e-3, 2e-3, 4e-3)
SEEDS = (0, 1, 2)


def common(lr: float, seed: int) -> list[str]:
    return [f"train.max_tokens={BUDGET}", "train.max_time_s=null", "train.eval_every=0", "train.eval_every_s=null",
            "train.save_every=0", "train.sample_tokens=0", "train.log_every=5", f"train.seed={seed}",
            "optim.name=adamw", f"optim.lr={lr}", "optim.schedule=cosine", "optim.min_lr_ratio=0.1",
            "optim.warmup_fraction=0.05", "train.eval_batches=null"]


def fixed_sets(k: int, lr: float, seed: int) -> list[str]:
    rows = REF_ROWS * k
    return common(lr, seed) + [f"train.global_batch_size={rows}", f"train.micro_batch_size={min(rows, 32)}"]


def adaptive_sets(c: float, lr: float, seed: int) -> list[str]:
    """Grows from x1 by 2-row micro-batches up to x16; lr given at x1, the square-root rule above it."""
    return common(lr, seed) + ["train.batch_schedule=adaptive", f"train.global_batch_size={REF_ROWS * 16}",
                               f"train.batch_min={REF_ROWS}", "train.micro_batch_size=2", "train.batch_adapt_every=10",
                               f"train.batch_noise_factor={c}", f"optim.reference_batch={REF_ROWS}"]


def ramp_sets(lr: float, seed: int) -> list[str]:
    return common(lr, seed) + ["train.batch_schedule=ramp", f"train.global_batch_size={REF_ROWS * 4}",
                               f"train.batch_start={REF_ROWS}", "train.micro_batch_size=2",
                               f"train.batch_ramp_tokens={BUDGET // 2}", f"optim.reference_batch={REF_ROWS}"]


def run(name: str, sets: list[str], work: Path, reuse: bool) -> dict:
    run_dir = work / name
    saved = run_dir / "result.json"
    if reuse and saved.exists():
        return json.loads(saved.read_text())
    shutil.rmtree(run_dir, ignore_errors=True)
    cfg = load_config(None, sets, base=default_lm())
    start = time.perf_counter()
    summary = train(cfg, run_dir, progress=False)
    rows = [r for r in read_metrics(run_dir / "metrics.jsonl") if r.get("split") is None and "loss" in r]
    result = {"name": name, "sets": sets, "steps": summary["step"], "tokens": summary["tokens"],
              "valid_loss": summary["valid_loss"], "wall_s": time.perf_counter() - start,
              "lr": load_config(run_dir / "config.yaml").optim.lr,
              "bits_per_byte": summary.get("valid_bits_per_byte"), "baseline": summary.get("baseline", {}),
              "curve": [[r["step"], r["tokens"], r["loss"], r.get("global_batch"), r.get("noise_scale")] for r in rows]}
    saved.write_text(json.dumps(result))
    print(json.dumps({k: v for k, v in result.items() if k != "curve"}), flush=True)
    return result


def smoothed(curve: list) -> list[tuple[int, int, float]]:
    """(step, tokens, training loss as the mean of a window of 5 log rows)."""
    out = []
    for i in range(len(curve)):
        window = curve[max(0, i - 4): i + 1]
        out.append((curve[i][0], curve[i][1], sum(r[2] for r in window) / len(window)))
    return out


def reach(curve: list, target: float) -> tuple[int, int] | None:
    """The first (steps, tokens) at which the smoothed training loss is at or below ``target``."""
    return next(((s, t) for s, t, loss in smoothed(curve) if loss <= target), None)


def fit(points: dict[int, int]) -> tuple[float, float]:
    """Least squares of S = S_min + S_min·B_crit/B (a line in 1/B): (S_min, B_crit), B in tokens."""
    xs, ys = [1.0 / b for b in points], [float(s) for s in points.values()]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)
    s_min = my - slope * mx
    return s_min, slope / s_min


def spread(values: list[float]) -> str:
    if len(values) < 2:
        return f"{values[0]:.4f}"
    return f"{statistics.fmean(values):.4f} ± {statistics.stdev(values):.4f}"


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--part", default="all", choices=["fixed", "adaptive", "ramp", "all"])
    p.add_argument("--work", default="/tmp/bigbatch-adaptive")
    p.add_argument("--factors", default="0.25,0.5,1", help="batch_noise_factor values tried at seed 0")
    p.add_argument("--reuse", action="store_true")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    p.add_argument("--out", default="docs/adaptive_batch.png")
    p.add_argument("--json", default="benchmarks/out/adaptive_batch.json")
    args = p.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    work, results = Path(args.work), {}
    parts = ["fixed", "adaptive", "ramp"] if args.part == "all" else [args.part]

    def go(name, sets):
        results[name] = run(name, sets, work, args.reuse)
        return results[name]

    for lr in LRS_X1:
        go(f"x1-lr{lr:g}-s0", fixed_sets(1, lr, 0))
    best_lr = min(LRS_X1, key=lambda lr: results[f"x1-lr{lr:g}-s0"]["valid_loss"])
    if "fixed" in parts:
        for seed in SEEDS[1:]:
            go(f"x1-lr{best_lr:g}-s{seed}", fixed_sets(1, best_lr, seed))
        for k, lrs in ((4, (best_lr, 2 * best_lr)), (16, (best_lr, 4 * best_lr))):
            for lr in lrs:
                go(f"x{k}-lr{lr:g}-s0", fixed_sets(k, lr, 0))
        go(f"x2-lr{best_lr:g}-s0", fixed_sets(2, best_lr, 0))
    factors = [float(c) for c in args.factors.split(",")]
    if "adaptive" in parts:
        for c in factors:
            go(f"adaptive-c{c:g}-s0", adaptive_sets(c, best_lr, 0))
        best_c = min(factors, key=lambda c: results[f"adaptive-c{c:g}-s0"]["valid_loss"])
        for seed in SEEDS[1:]:
            go(f"adaptive-c{best_c:g}-s{seed}", adaptive_sets(best_c, best_lr, seed))
    if "ramp" in parts:
        for seed in SEEDS:
            go(f"ramp-s{seed}", ramp_sets(best_lr, seed))
    report(results, best_lr, factors, Path(args.out))
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(results, indent=1))


def report(results: dict, best_lr: float, factors: list[float], out: Path) -> None:
    print("\n| run | steps | tokens | final valid loss | bits/byte | baseline bits/byte | wall s |")
    print("|---|---|---|---|---|---|---|")
    for r in results.values():
        base = r["baseline"].get("bits_per_byte")
        base = f"{base:.4f} ({r['baseline'].get('method', '?')})" if isinstance(base, float) else "-"
        print(f"| {r['name']} | {r['steps']:,} | {r['tokens']:,} | {r['valid_loss']:.4f} | {r['bits_per_byte']:.4f} | "
              f"{base} | {r['wall_s']:.0f} |")
    x1 = [r for n, r in results.items() if n.startswith(f"x1-lr{best_lr:g}-")]
    groups = {"fixed x1 (best)": x1}
    adaptive = [n for n in results if n.startswith("adaptive-")]
    if adaptive:
        best_c = min(factors, key=lambda c: results[f"adaptive-c{c:g}-s0"]["valid_loss"])
        groups[f"adaptive c={best_c:g}"] = [r for n, r in results.items() if n.startswith(f"adaptive-c{best_c:g}-")]
    groups["ramp"] = [r for n, r in results.items() if n.startswith("ramp-")]
    target = statistics.fmean(r["valid_loss"] for r in x1)
    print(f"\nmean over seeds (target: the best fixed batch's mean final valid loss {target:.4f})\n")
    print("| schedule | seeds | final valid loss | optimiser steps | tokens | steps vs fixed | tokens vs fixed |")
    print("|---|---|---|---|---|---|---|")
    s1, t1 = statistics.fmean(r["steps"] for r in x1), statistics.fmean(r["tokens"] for r in x1)
    for name, rs in groups.items():
        if not rs:
            continue
        s, t = statistics.fmean(r["steps"] for r in rs), statistics.fmean(r["tokens"] for r in rs)
        print(f"| {name} | {len(rs)} | {spread([r['valid_loss'] for r in rs])} | {s:,.0f} | {t:,.0f} | "
              f"{(s / s1 - 1) * 100:+.0f}% | {t / t1:.2f}x |")
    fits = {k: min((r for n, r in results.items() if n.startswith(f"x{k}-") and n.endswith("-s0")),
                   key=lambda r: r["valid_loss"], default=None) for k in (1, 2, 4, 16)}
    if all(fits.values()):
        crit_loss = max(fits[k]["curve"] and smoothed(fits[k]["curve"])[-1][2] for k in (1, 4, 16))
        points = {REF_ROWS * k * SEQ: reach(fits[k]["curve"], crit_loss)[0] for k in (1, 4, 16)}
        s_min, b_crit = fit(points)
        predicted = s_min * (1 + b_crit / (REF_ROWS * 2 * SEQ))
        measured = reach(fits[2]["curve"], crit_loss)
        print(f"\nS(B) fit to training loss {crit_loss:.4f} from x1, x4, x16: S_min = {s_min:.0f} steps, "
              f"B_crit = {b_crit:,.0f} tokens; steps {points}")
        if measured:
            print(f"prediction for x2 (2,048 tokens, not in the fit): {predicted:.0f} steps; measured {measured[0]} "
                  f"steps; error {(predicted / measured[0] - 1) * 100:+.1f}%")
    plot(results, groups, out)


def plot(results: dict, groups: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(12, 4.8))
    colors = {"fixed": "tab:blue", "adaptive": "tab:red", "ramp": "tab:green"}
    for name, rs in groups.items():
        color = colors[name.split()[0]]
        for i, r in enumerate(rs):
            c = smoothed(r["curve"])
            a1.plot([s for s, _, _ in c], [loss for _, _, loss in c], color=color, lw=1, alpha=0.8,
                    label=f"{name} ({len(rs)} seeds)" if i == 0 else None)
            if name.startswith("adaptive") or name.startswith("ramp"):
                rows = [(t, b) for _, t, _, b, _ in r["curve"] if b]
                a2.plot([t for t, _ in rows], [b * SEQ for _, b in rows], color=color, lw=1,
                        label=f"{name}: global batch" if i == 0 else None)
            if name.startswith("adaptive"):
                rows = [(t, n) for _, t, _, _, n in r["curve"] if n]
                a2.plot([t for t, _ in rows], [n for _, n in rows], color="tab:gray", lw=0.8, ls=":",
                        label="measured B_noise (B_simple)" if i == 0 else None)
    a1.set_xlabel("optimiser steps")
    a1.set_ylabel("training loss, 5-row moving mean")
    a1.set_xscale("log")
    a1.set_ylim(top=3.5)
    a1.grid(alpha=0.3)
    a1.legend(fontsize=8)
    a2.set_xlabel("training tokens")
    a2.set_ylabel("tokens")
    a2.set_yscale("log")
    a2.grid(alpha=0.3)
    a2.legend(fontsize=8)
    a2.set_title("global batch beside the measured noise scale")
    a1.set_title("loss against optimiser steps")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)


if __name__ == "__main__":
    main()
