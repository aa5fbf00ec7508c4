"""Transformer against LSTM at equal parameter count, through the same `bigbatch train` loop, written to
docs/transformer_vs_rnn.md with plots.

    python benchmarks/transformer_vs_rnn.py                          # everything (about 40 minutes on 2 cores)
    python benchmarks/transformer_vs_rnn.py --parts long throughput  # the synthetic task and the speed sweep
    python benchmarks/transformer_vs_rnn.py --parts real --time-real 300

Parts:
    long        a synthetic long-range task: a string of k + 16 random letters a..j, the label is the letter k
                positions before the end; k = 8 .. 512. Both models trained for the same wall time and,
                separately, the same number of steps; test accuracy (chance 0.1)
    throughput  training tokens/s of each model against sequence length at a fixed number of tokens a step
    real        builtin:debian-descriptions (classification, test accuracy) and builtin:gettext:de
                (translation, test BLEU, beam 4), equal wall time, the baselines of the same split beside them
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / "benchmarks" / "out" / "rnn"
sys.path.insert(0, str(ROOT))


def _params(task: str, **model) -> int:
    from bigbatch.config import ModelConfig
    from bigbatch.nn.models import build_model, count_parameters

    return count_parameters(build_model(task, ModelConfig(**model)))


def run_params(run_dir: str | Path) -> int:
    """The parameter count of the model a run's config.yaml describes (its resolved max_len included)."""
    from bigbatch.config import load_config
    from bigbatch.nn.models import build_model, count_parameters

    cfg = load_config(Path(run_dir) / "config.yaml")
    return count_parameters(build_model(cfg.task, cfg.model))


def _resolved(run_dir: str | Path) -> list[str]:
    """--set lines pinning the dropout and learning rate a run resolved, for its equal-steps twin."""
    from bigbatch.config import load_config

    cfg = load_config(Path(run_dir) / "config.yaml")
    return [f"model.dropout={cfg.model.dropout}", f"optim.lr={cfg.optim.lr}"]


def matched_lstm_width(task: str, transformer: dict, vocab: int, classes: int = 0, max_len: int = 256) -> int:
    """The even LSTM width with the parameter count nearest the Transformer's (same layers, vocabulary and
    max_len: a learned position table counts)."""
    extra = {"vocab_size": vocab, "num_classes": classes} if classes else {"vocab_size": vocab}
    transformer = {**transformer, "max_len": max_len}
    target = _params(task, **transformer, **extra)
    layers = {k: v for k, v in transformer.items() if k.startswith("n_") and k != "n_heads"}
    return min(range(16, 1025, 2), key=lambda d: abs(_params(task, arch="lstm", d_model=d, **layers, **extra) - target))


def _train(name: str, sets: list[str]) -> dict:
    run_dir = WORK / "runs" / name
    subprocess.run(["rm", "-rf", str(run_dir)], check=True)
    cmd = [sys.executable, "-m", "bigbatch", "train", "--run-dir", str(run_dir), "--no-progress", "--json"]
    for s in sets:
        cmd += ["--set", s]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{name}: training failed\n{proc.stderr[-3000:]}")
    return {"run_dir": str(run_dir), **json.loads(proc.stdout)}


def _eval(run_dir: str, baseline: bool = True) -> dict:
    proc = subprocess.run([sys.executable, "-m", "bigbatch", "eval", run_dir, "--split", "test", "--json",
                           *([] if baseline else ["--no-baseline"])], capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{run_dir}: eval failed\n{proc.stderr[-3000:]}")
    result = json.loads(proc.stdout)
    result.pop("confusion", None)
    return result


def long_range_data(k: int, n: int = 6000, seed: int = 0) -> Path:
    path = WORK / "data" / f"long_k{k}.jsonl"
    if path.exists():
        return path
    rng = np.random.default_rng(seed + k)
    letters = np.array(list("abcdefghij"))
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        for _ in range(n):
            s = "".join(rng.choice(letters, size=k + 16))
            f.write(json.dumps({"text": s, "label": s[-1 - k]}) + "\n")
    return path


def part_long(ks: list[int], seconds: float, steps: int) -> list[dict]:
    rows = []
    tf = {"d_model": 64, "n_layers": 2, "n_heads": 2}
    for k in ks:
        width = matched_lstm_width("classify", tf, 259, 10, max_len=k + 16)
        data = long_range_data(k)
        base = ["task=classify", f"data.source={data}", "data.tokenizer=byte", f"model.max_len={k + 16}",
                "train.micro_batch_size=64", "train.eval_every=0", "train.baseline=false", "optim.lr=2e-3",
                "model.dropout=0"]
        models = {"transformer": [f"model.d_model={tf['d_model']}", f"model.n_layers={tf['n_layers']}",
                                  f"model.n_heads={tf['n_heads']}"],
                  "lstm": ["model.arch=lstm", "model.pool=last", f"model.d_model={width}", f"model.n_layers={tf['n_layers']}"]}
        for arch, sets in models.items():
            for regime, limit in (("time", f"train.max_time_s={seconds}"), ("steps", f"train.max_steps={steps}")):
                t0 = time.time()
                summary = _train(f"long-k{k}-{arch}-{regime}", base + sets + [limit])
                ev = _eval(summary["run_dir"], baseline=False)  # a letter at a position: no bag of n-grams finds it
                rows.append({"k": k, "arch": arch, "regime": regime, "accuracy": ev["accuracy"],
                             "steps": summary["step"], "train_seconds": summary["train_seconds"],
                             "tokens_per_s": summary["tokens_per_s"], "wall_s": time.time() - t0,
                             "params": run_params(summary["run_dir"]), "pool": "last" if arch == "lstm" else "mean"})
                print(json.dumps(rows[-1]), file=sys.stderr)
    return rows


def part_throughput(lengths: list[int], tokens: int = 16384, reps: int = 5) -> list[dict]:
    import torch

    from bigbatch.config import ModelConfig
    from bigbatch.nn.models import build_model
    from bigbatch.train.setup import subnormals_flushed

    subnormals_flushed().__enter__()  # as bigbatch train does, for the rest of this process
    torch.manual_seed(0)
    tf = {"d_model": 128, "n_layers": 2, "n_heads": 2}
    width = matched_lstm_width("classify", tf, 4096, 20, max_len=max(lengths))
    rows = []
    for arch, model in (("transformer", tf), ("lstm", {"arch": "lstm", "d_model": width, "n_layers": 2})):
        for L in lengths:
            m = build_model("classify", ModelConfig(vocab_size=4096, num_classes=20, max_len=max(lengths), **model))
            opt = torch.optim.AdamW(m.parameters(), 1e-3)
            B = max(tokens // L, 1)
            ids = torch.randint(0, 4096, (B, L))
            mask = torch.ones(B, L, dtype=torch.bool)
            y = torch.randint(0, 20, (B,))
            times = []
            for r in range(reps + 1):
                t0 = time.perf_counter()
                loss = torch.nn.functional.cross_entropy(m(ids, mask), y)
                opt.zero_grad()
                loss.backward()
                opt.step()
                if r:  # the first step warms up
                    times.append(time.perf_counter() - t0)
            rows.append({"arch": arch, "seq_len": L, "batch": B, "tokens_per_s": B * L / float(np.median(times))})
            print(json.dumps(rows[-1]), file=sys.stderr)
    return rows


def part_real(seconds: float) -> list[dict]:
    """Each task at equal wall time; then at equal steps: the model that made more steps in that time is
    trained again for the other's step count."""
    rows = []
    specs = {"debian-descriptions": ("classify", "builtin:debian-descriptions", {"d_model": 128, "n_layers": 2}),
             "gettext:de": ("translate", "builtin:gettext:de", {"d_model": 128, "n_layers": 2})}
    for name, (task, source, tf) in specs.items():
        from bigbatch.config import Config, DataConfig
        from bigbatch.data.pipeline import resolve_before_data

        vocab = resolve_before_data(Config(task=task, data=DataConfig(source=source)))[0].data.vocab_size
        width = matched_lstm_width(task, {**tf, "n_heads": 2}, vocab, 20 if task == "classify" else 0)
        models = {"transformer": [f"model.d_model={tf['d_model']}", f"model.n_layers={tf['n_layers']}"],
                  "lstm": ["model.arch=lstm", f"model.d_model={width}", f"model.n_layers={tf['n_layers']}"]}
        metric = "accuracy" if task == "classify" else "bleu"
        timed = {}
        for arch, sets in models.items():
            summary = _train(f"real-{name.replace(':', '-')}-{arch}-time", [f"task={task}", f"data.source={source}",
                                                                            f"train.max_time_s={seconds}", *sets])
            timed[arch] = summary["step"]
            rows.append(_real_row(name, arch, "time", summary, metric, tf["d_model"] if arch == "transformer" else width))
        steps = min(timed.values())
        for arch, sets in models.items():
            if timed[arch] == steps:  # its equal-time run already stopped at this step count
                rows.append({**next(r for r in rows if r["data"] == name and r["arch"] == arch), "regime": "steps"})
                continue
            twin = WORK / "runs" / f"real-{name.replace(':', '-')}-{arch}-time"
            summary = _train(f"real-{name.replace(':', '-')}-{arch}-steps", [f"task={task}", f"data.source={source}",
                                                                             f"train.max_steps={steps}", *sets,
                                                                             *_resolved(twin)])
            rows.append(_real_row(name, arch, "steps", summary, metric, tf["d_model"] if arch == "transformer" else width))
    return rows


def _real_row(name: str, arch: str, regime: str, summary: dict, metric: str, width: int) -> dict:
    ev = _eval(summary["run_dir"])
    row = {"data": name, "arch": arch, "regime": regime, metric: ev[metric], "steps": summary["step"],
           "train_seconds": summary["train_seconds"], "tokens_per_s": summary["tokens_per_s"],
           "baseline": ev.get("baseline", {}), "d_model": width, "params": run_params(summary["run_dir"])}
    print(json.dumps(row)[:500], file=sys.stderr)
    return row


def plot(results: dict, out_dir: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = []
    if results.get("long"):
        fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
        for ax, regime in zip(axes, ("time", "steps")):
            for arch in ("transformer", "lstm"):
                pts = sorted((r["k"], r["accuracy"]) for r in results["long"] if r["arch"] == arch and r["regime"] == regime)
                ax.plot(*zip(*pts), marker="o", label=arch)
            ax.set_xscale("log", base=2)
            ax.set_xlabel("k (positions back)")
            ax.set_ylabel("test accuracy")
            ax.set_title(f"equal {'wall time' if regime == 'time' else 'steps'}")
            ax.axhline(0.1, color="grey", lw=0.5)
            ax.legend()
        fig.tight_layout()
        fig.savefig(out_dir / "transformer_vs_rnn_long.png", dpi=110)
        files.append("transformer_vs_rnn_long.png")
    if results.get("throughput"):
        fig, ax = plt.subplots(figsize=(4.5, 3.5))
        for arch in ("transformer", "lstm"):
            pts = sorted((r["seq_len"], r["tokens_per_s"]) for r in results["throughput"] if r["arch"] == arch)
            ax.plot(*zip(*pts), marker="o", label=arch)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("sequence length")
        ax.set_ylabel("training tokens/s")
        ax.legend()
        fig.tight_layout()
        fig.savefig(out_dir / "transformer_vs_rnn_speed.png", dpi=110)
        files.append("transformer_vs_rnn_speed.png")
    return files


def write_doc(results: dict, path: Path) -> None:
    lines = ["# Transformer against LSTM", "",
             "Measured by `python benchmarks/transformer_vs_rnn.py` on this project's 2-core CPU machine, both models "
             "trained by the same `bigbatch train` loop at (nearly) equal parameter count; the LSTM is "
             "`model.arch=lstm` (bigbatch/nn/rnn.py: a bidirectional LSTM classifier, an LSTM encoder-decoder with "
             "attention).", ""]
    if results.get("long"):
        lines += ["## Long-range dependency (label = the letter k positions before the end)", "",
                  "| k | regime | Transformer accuracy (steps) | LSTM accuracy (steps) | training tokens/s, Transformer / "
                  "LSTM | parameters, Transformer / LSTM |", "|---|---|---|---|---|---|"]
        for k in sorted({r["k"] for r in results["long"]}):
            for regime in ("time", "steps"):
                cell = {r["arch"]: r for r in results["long"] if r["k"] == k and r["regime"] == regime}
                if len(cell) == 2:
                    lines.append(f"| {k} | equal {'wall time' if regime == 'time' else 'steps'} | "
                                 f"{cell['transformer']['accuracy']:.3f} ({cell['transformer']['steps']}) | "
                                 f"{cell['lstm']['accuracy']:.3f} ({cell['lstm']['steps']}) | "
                                 f"{cell['transformer']['tokens_per_s']:,.0f} / {cell['lstm']['tokens_per_s']:,.0f} | "
                                 f"{cell['transformer']['params']:,} / {cell['lstm']['params']:,} |")
        lines += ["", "Chance is 0.1. The Transformer pools by mean over positions (learned positions); the LSTM "
                  "(bidirectional, 2 layers) by the final state of each direction (`model.pool: last`).",
                  "", "![long range](transformer_vs_rnn_long.png)", ""]
    if results.get("throughput"):
        lines += ["## Training speed against sequence length (16k tokens a step)", "",
                  "| sequence length | Transformer tokens/s | LSTM tokens/s |", "|---|---|---|"]
        for L in sorted({r["seq_len"] for r in results["throughput"]}):
            cell = {r["arch"]: r["tokens_per_s"] for r in results["throughput"] if r["seq_len"] == L}
            lines.append(f"| {L} | {cell.get('transformer', 0):,.0f} | {cell.get('lstm', 0):,.0f} |")
        lines += ["", "![speed](transformer_vs_rnn_speed.png)", ""]
    if results.get("real"):
        lines += ["## Real tasks, equal wall time and equal steps", "",
                  "| data | regime | model | test metric | steps | train s | tokens/s | baseline, same split |",
                  "|---|---|---|---|---|---|---|---|"]
        for r in results["real"]:
            metric = "accuracy" if "accuracy" in r else "bleu"
            base = r["baseline"]
            bl = (f"TF-IDF + LR {base.get('accuracy', float('nan')):.3f}" if metric == "accuracy" else
                  f"copy-source {base.get('methods', {}).get('copy_source', {}).get('bleu', float('nan')):.1f}, "
                  f"dictionary {base.get('methods', {}).get('word_dictionary', {}).get('bleu', float('nan')):.1f}")
            regime = "equal wall time" if r.get("regime", "time") == "time" else "equal steps"
            lines.append(f"| {r['data']} | {regime} | {r['arch']} (d_model {r['d_model']}, {r.get('params', 0) / 1e6:.2f}M) | "
                         f"{metric} {r[metric]:.3f} | "
                         f"{r['steps']} | {r.get('train_seconds', 0):.0f} | {r['tokens_per_s']:,.0f} | {bl} |")
        lines.append("")
    lines += ["## The founding document's two claims", "", results.get("answer", "(see the tables)"), ""]
    path.write_text("\n".join(lines) + "\n")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--parts", nargs="*", default=["long", "throughput", "real"], choices=["long", "throughput", "real"])
    p.add_argument("--ks", nargs="*", type=int, default=[8, 32, 128, 512])
    p.add_argument("--time-long", type=float, default=40.0, help="train.max_time_s of each synthetic run")
    p.add_argument("--steps-long", type=int, default=300, help="train.max_steps of the equal-steps synthetic runs")
    p.add_argument("--time-real", type=float, default=300.0, help="train.max_time_s of each real-task run")
    p.add_argument("--answer", help="the paragraph answering the two claims (written after reading the numbers)")
    p.add_argument("--doc", default=str(ROOT / "docs" / "transformer_vs_rnn.md"))
    args = p.parse_args()
    WORK.mkdir(parents=True, exist_ok=True)
    results_file = WORK / "results.json"
    results = json.loads(results_file.read_text()) if results_file.exists() else {}
    if "long" in args.parts:
        results["long"] = part_long(args.ks, args.time_long, args.steps_long)
    if "throughput" in args.parts:
        results["throughput"] = part_throughput([16, 64, 256, 1024])
    if "real" in args.parts:
        results["real"] = part_real(args.time_real)
    if args.answer:
        results["answer"] = args.answer
    results_file.write_text(json.dumps(results, indent=1))
    doc = Path(args.doc)
    plot(results, doc.parent)
    write_doc(results, doc)
    print(doc.read_text())


if __name__ == "__main__":
    main()
