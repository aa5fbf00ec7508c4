"""Quantization, pruning and distillation of real runs, measured in one run: docs/compression.md and a plot.

    python benchmarks/compression.py                      # everything (about 40 minutes on 2 cores)
    python benchmarks/compression.py --parts classify     # one part: classify, wide, lm, translate
    python benchmarks/compression.py --time 120 --reuse   # shorter teachers; reuse runs already in the work dir

Parts (each trains its teacher with the task's resolved defaults for --time seconds, then compresses it):
    classify   builtin:debian-descriptions: dynamic-int8 and weight-int8; structured pruning of heads and FFN
               neurons at 0.1 .. 0.7 (FFN at 0.6x the heads' fraction), without and with recovery fine-tuning;
               global magnitude pruning; a half-depth student with and without the teacher at equal steps.
               Test accuracy beside TF-IDF + logistic regression on the same split.
    wide       the same data, d_model 256 x 4 layers x 4 heads: int8, pruning at 0.5 / 0.3, both together.
    lm         the embedded default LM (builtin:python-stdlib): int8; validation perplexity beside the n-gram
               baseline's bits per byte.
    translate  builtin:gettext:de: int8; a half-depth student with and without the teacher (word-level) at equal
               steps; test BLEU (beam 4) beside the word-dictionary baseline.

Latency: the median of repeated calls of one inference at batch 1 and 32 (bigbatch/compress/measure.py: a
forward over 128 tokens; translation: greedy decoding of 32 tokens from 32-token sources). Run it alone on the
machine: other work distorts the timings.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / "benchmarks" / "out" / "compression"
sys.path.insert(0, str(ROOT))

SOURCES = {"classify": "builtin:debian-descriptions", "lm": None, "translate": "builtin:gettext:de"}


def teacher_config(part: str, seconds: float):
    from bigbatch.config import load_config
    from bigbatch.presets import default_lm

    if part == "lm":
        return load_config(None, [f"train.max_time_s={seconds}"], base=default_lm())
    return load_config(None, [f"task={part}", f"data.source={SOURCES[part]}", f"train.max_time_s={seconds}"])


def trained(path: Path, cfg, reuse: bool) -> Path:
    from bigbatch.train.loop import train

    if reuse and (path / "summary.json").exists():
        return path
    shutil.rmtree(path, ignore_errors=True)
    t0 = time.time()
    train(cfg, path, progress=False)
    print(f"  trained {path.name} in {time.time() - t0:.0f} s", file=sys.stderr)
    return path


def measure(path: Path, name: str, split: str, examples: int | None, reps: int) -> dict:
    from bigbatch.compress.measure import measure_run

    row = measure_run(path, split=split, max_examples=examples, reps=reps)
    row["name"] = name
    print(f"  {name}: " + ", ".join(f"{k} {v:.4g}" for k, v in row.items() if isinstance(v, float)), file=sys.stderr)
    return row


def fresh(path: Path) -> Path:
    shutil.rmtree(path, ignore_errors=True)
    return path


def equal_step_students(part: str, teacher: Path, steps: int, reuse: bool) -> list[Path]:
    """A half-depth student trained ``steps`` steps with the teacher's soft targets (and its every-other-layer
    start), and the same student without either; both on the teacher's tokenizer, data and learning rate."""
    from bigbatch.compress.distill import distill_run
    from bigbatch.config import load_config

    sets = [f"train.max_steps={steps}", "train.max_time_s=null", "train.epochs=null", "train.max_tokens=null",
            "train.patience=null"]
    with_t, without = WORK / f"{part}-student-distilled", WORK / f"{part}-student-alone"
    if not (reuse and (with_t / "summary.json").exists()):
        distill_run(teacher, None, fresh(with_t), sets=sets, progress=False)
    if not (reuse and (without / "summary.json").exists()):
        cfg = load_config(with_t / "config.yaml", sets + ["distill.teacher=null"])
        trained(fresh(without), cfg, False)
    return [with_t, without]


def steps_of(run: Path) -> int:
    return int(json.loads((run / "summary.json").read_text())["step"])


def part_classify(args) -> dict:
    from bigbatch.compress.prune import prune_run
    from bigbatch.compress.quantize import quantize_run
    from bigbatch.evaluate.run import evaluate_run

    teacher = trained(WORK / "classify-teacher", teacher_config("classify", args.time), args.reuse)
    rows = [measure(teacher, "float", "test", None, args.reps)]
    base = evaluate_run(teacher, "test", decode=False)["baseline"]
    for method in ("dynamic-int8", "weight-int8"):
        out = fresh(WORK / f"classify-{method}")
        quantize_run(teacher, out, method, measure=False)
        rows.append(measure(out, method, "test", None, args.reps))
    curve = []
    for f in args.fractions:
        ffn = round(0.6 * f, 3)
        out = fresh(WORK / f"classify-prune-{f}")
        s = prune_run(teacher, out, heads=f, ffn=ffn, finetune_steps=args.finetune_steps, measure=False,
                      progress=False)
        before = measure(out / "pruned", f"pruned heads {f:g} / ffn {ffn:g}", "test", None, args.reps)
        after = measure(out, f"+ {args.finetune_steps} fine-tuning steps", "test", None, args.reps)
        curve.append({"heads": f, "ffn": ffn, "heads_removed": s["heads_removed"], "heads_total": s["heads_total"],
                      "pruned": before, "finetuned": after})
        rows += [before, after]
    out = fresh(WORK / "classify-unstructured")
    prune_run(teacher, out, unstructured=0.5, measure=False, progress=False)
    rows.append(measure(out, "magnitude 50% zeros", "test", None, args.reps))
    students = equal_step_students("classify", teacher, steps_of(teacher), args.reuse)
    rows.append(measure(students[0], "student, distilled", "test", None, args.reps))
    rows.append(measure(students[1], "student, alone", "test", None, args.reps))
    return {"rows": rows, "curve": curve, "baseline": base, "teacher_steps": steps_of(teacher)}


def part_wide(args) -> dict:
    """The same data with a wider classifier (d_model 256, 4 layers, 4 heads): where int8 and pruning pay more."""
    from bigbatch.compress.prune import prune_run
    from bigbatch.compress.quantize import quantize_run
    from bigbatch.config import load_config

    cfg = load_config(None, ["model.d_model=256", "model.n_layers=4", "model.n_heads=4"],
                      base=teacher_config("classify", args.time))
    teacher = trained(WORK / "wide-teacher", cfg, args.reuse)
    rows = [measure(teacher, "float", "test", None, args.reps)]
    out = fresh(WORK / "wide-dynamic-int8")
    quantize_run(teacher, out, "dynamic-int8", measure=False)
    rows.append(measure(out, "dynamic-int8", "test", None, args.reps))
    out = fresh(WORK / "wide-prune")
    prune_run(teacher, out, heads=0.5, ffn=0.3, finetune_steps=args.finetune_steps, measure=False, progress=False)
    rows.append(measure(out / "pruned", "pruned heads 0.5 / ffn 0.3", "test", None, args.reps))
    rows.append(measure(out, f"+ {args.finetune_steps} fine-tuning steps", "test", None, args.reps))
    both = fresh(WORK / "wide-prune-int8")
    quantize_run(out, both, "dynamic-int8", measure=False)
    rows.append(measure(both, "pruned + fine-tuned + dynamic-int8", "test", None, args.reps))
    return {"rows": rows}


def part_lm(args) -> dict:
    from bigbatch.compress.quantize import quantize_run
    from bigbatch.evaluate.run import evaluate_run

    teacher = trained(WORK / "lm-teacher", teacher_config("lm", args.time), args.reuse)
    rows = [measure(teacher, "float", "valid", None, args.reps)]
    for method in ("dynamic-int8", "weight-int8"):
        out = fresh(WORK / f"lm-{method}")
        quantize_run(teacher, out, method, measure=False)
        rows.append(measure(out, method, "valid", None, args.reps))
    full = evaluate_run(teacher, "valid")
    return {"rows": rows, "baseline": full.get("baseline"), "bits_per_byte": full.get("bits_per_byte")}


def part_translate(args) -> dict:
    from bigbatch.compress.quantize import quantize_run
    from bigbatch.evaluate.run import evaluate_run

    teacher = trained(WORK / "translate-teacher", teacher_config("translate", args.time), args.reuse)
    n = args.bleu_sentences
    rows = [measure(teacher, "float", "test", n, args.reps)]
    base = evaluate_run(teacher, "test", max_examples=n, decode=False)["baseline"]
    out = fresh(WORK / "translate-dynamic-int8")
    quantize_run(teacher, out, "dynamic-int8", measure=False)
    rows.append(measure(out, "dynamic-int8", "test", n, args.reps))
    students = equal_step_students("translate", teacher, steps_of(teacher), args.reuse)
    rows.append(measure(students[0], "student, distilled", "test", n, args.reps))
    rows.append(measure(students[1], "student, alone", "test", n, args.reps))
    return {"rows": rows, "baseline": base, "teacher_steps": steps_of(teacher)}


METRIC = {"classify": ("accuracy", "test accuracy"), "wide": ("accuracy", "test accuracy"), "lm": ("perplexity", "valid perplexity"),
          "translate": ("bleu", "test BLEU (beam 4)")}


def table(part: str, result: dict) -> list[str]:
    key, label = METRIC[part]
    first = result["rows"][0]
    lines = [f"| method | parameters | size MB | latency ms, batch 1 | batch 32 | speed-up at 32 | {label} |",
             "|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        lines.append(f"| {r['name']} | {r['parameters'] / 1e6:.2f}M | {r['size_mb']:.2f} | {r['latency_ms_b1']:.2f} | "
                     f"{r['latency_ms_b32']:.1f} | {first['latency_ms_b32'] / r['latency_ms_b32']:.2f}x | "
                     f"{r[key]:.4f} |")
    return lines


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    parts = [p for p in ("classify", "wide", "translate", "lm") if p in results]
    n = len(parts) + ("classify" in results)
    cols = min(n, 3)
    fig, grid = plt.subplots(-(-n // cols), cols, figsize=(5.4 * cols, 4.4 * -(-n // cols)), squeeze=False)
    axes = [list(grid.flat)]
    for ax in axes[0][n:]:
        ax.axis("off")
    for ax, part in zip(axes[0], parts):
        key, label = METRIC[part]
        for r in results[part]["rows"]:
            ax.scatter(r["latency_ms_b32"], r[key], s=30)
            ax.annotate(r["name"], (r["latency_ms_b32"], r[key]), fontsize=7, xytext=(3, 3), textcoords="offset points")
        base = (results[part].get("baseline") or {}).get(key)
        if base is not None:
            ax.axhline(base, ls="--", c="gray", lw=1, label=f"baseline ({results[part]['baseline'].get('method')})")
            ax.legend(fontsize=8)
        ax.set_xlabel("latency at batch 32 (ms)")
        ax.ticklabel_format(axis="y", useOffset=False)
        ax.set_ylabel(label)
        ax.set_title(part)
    if "classify" in results:
        ax = axes[0][n - 1]
        curve = results["classify"]["curve"]
        xs = [c["heads"] for c in curve]
        ax.plot(xs, [c["pruned"]["accuracy"] for c in curve], "o-", label="pruned")
        ax.plot(xs, [c["finetuned"]["accuracy"] for c in curve], "s-", label="pruned + fine-tuned")
        ax.axhline(results["classify"]["rows"][0]["accuracy"], c="k", lw=1, label="unpruned")
        ax.axhline(results["classify"]["baseline"]["accuracy"], ls="--", c="gray", lw=1, label="TF-IDF + LR")
        ax.set_xlabel("fraction of heads removed (FFN neurons: 0.6x that)")
        ax.set_ylabel("test accuracy")
        ax.set_title("debian-descriptions: structured pruning")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--parts", nargs="+", default=["classify", "wide", "lm", "translate"])
    ap.add_argument("--time", type=float, default=300.0, help="seconds of training per teacher")
    ap.add_argument("--fractions", type=float, nargs="+", default=[0.1, 0.3, 0.5, 0.7])
    ap.add_argument("--finetune-steps", type=int, default=300)
    ap.add_argument("--bleu-sentences", type=int, default=1000)
    ap.add_argument("--reps", type=int, default=15)
    ap.add_argument("--reuse", action="store_true", help="keep teachers / students already trained in the work dir")
    ap.add_argument("--docs", default=str(ROOT / "docs" / "compression_results.md"))
    args = ap.parse_args()
    WORK.mkdir(parents=True, exist_ok=True)
    import torch

    torch.set_flush_denormal(True)
    results_file = WORK / "results.json"
    results = json.loads(results_file.read_text()) if results_file.exists() else {}
    for part in args.parts:
        print(f"== {part}", file=sys.stderr)
        results[part] = {"classify": part_classify, "wide": part_wide, "lm": part_lm,
                         "translate": part_translate}[part](args)
        results_file.write_text(json.dumps(results, indent=1, default=str))
    lines = [f"Measured by `python benchmarks/compression.py {' '.join(sys.argv[1:])}` on {torch.get_num_threads()} "
             f"CPU threads, torch {torch.__version__}; teachers trained {args.time:g} s each.", ""]
    for part in ("classify", "wide", "lm", "translate"):
        if part in results:
            r = results[part]
            base = r.get("baseline") or {}
            title = {"classify": "debian-descriptions classifier (the resolved default: d_model 128, 2 layers)",
                     "wide": "debian-descriptions, a wider classifier (d_model 256, 4 layers, 4 heads)",
                     "lm": "the embedded default LM (python-stdlib)", "translate": "gettext:de translator"}[part]
            lines += [f"### {title}", ""] + table(part, r) + [""]
            if base:
                shown = {k: v for k, v in base.items() if k in ("accuracy", "macro_f1", "bleu", "chrf", "bits_per_byte")}
                lines.append(f"Baseline on the same split: {base.get('method')} " +
                             ", ".join(f"{k} {v:.4f}" for k, v in shown.items()) + "")
            if "bits_per_byte" in r:
                lines.append(f"The float LM: {r['bits_per_byte']:.3f} bits per byte on the same split.")
            if "teacher_steps" in r:
                lines.append(f"Students: half the teacher's layers, {r['teacher_steps']} steps each (the teacher's).")
            lines.append("")
    Path(args.docs).write_text("\n".join(lines))
    plot(results, ROOT / "docs" / "compression.png")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
