"""`bigbatch ...`: a map of subcommands to library functions; parse, call, print.

Bad input prints one line on stderr and exits with code 2 (``--debug`` shows the traceback).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from bigbatch import __version__
from bigbatch.errors import TrainingError, UserError


def _base(args, run_dir: Path | None = None):
    """The config --set overrides apply to without a CONFIG: the run's own config.yaml when ``run_dir``
    holds one (a resume), else the embedded default LM, unless the overrides name another task or data
    source (then every unset key is resolved from that task and data)."""
    from bigbatch.config import load_config, parse_set
    from bigbatch.presets import default_lm

    if args.config:
        return None
    if run_dir is not None and (Path(run_dir) / "config.yaml").exists():
        return load_config(Path(run_dir) / "config.yaml")
    sets = parse_set(args.set)
    other = sets.get("task", "lm") != "lm" or "source" in (sets.get("data") or {})
    return None if other else default_lm()


def _resume_dir(args) -> Path | None:
    """--run-dir, or with --resume and no --run-dir the newest run under ./runs that holds a checkpoint."""
    if args.resume and args.run_dir is None:
        runs = sorted({p.parent.parent for p in Path("runs").glob("*/checkpoints/step_*")})
        if not runs:
            raise UserError("--resume: no run with a checkpoint under ./runs; give --run-dir")
        return runs[-1]
    if args.resume and not any((Path(args.run_dir) / "checkpoints").glob("step_*")):
        raise UserError(f"--resume: {args.run_dir} has no checkpoint to resume from")
    return Path(args.run_dir) if args.run_dir else None


def cmd_train(args) -> int:
    from bigbatch.config import load_config
    from bigbatch.train.loop import train

    run_dir = _resume_dir(args)
    cfg = load_config(args.config, args.set, base=_base(args, run_dir))
    if args.nproc is not None and "LOCAL_RANK" not in os.environ:
        return _launch(args, cfg)
    summary = train(cfg, run_dir, progress=not args.no_progress)
    if "stopped_by_signal" in summary:
        return 128 + summary["stopped_by_signal"]
    if args.json and os.environ.get("RANK", "0") == "0":
        print(json.dumps(summary))
    return 0


def _launch(args, cfg) -> int:
    """`bigbatch train --nproc N`: check the config here (bad input: exit 2 before any process starts),
    then become torchrun (single node), which starts N ranks of the same command."""
    import time

    from bigbatch.train.setup import plan_batch

    if args.nproc < 1:
        raise UserError(f"--nproc {args.nproc}: expected a number of processes >= 1")
    plan_batch(cfg, args.nproc)
    argv = list(sys.argv[1:] if args.argv is None else args.argv)
    i = next(k for k, a in enumerate(argv) if a == "--nproc" or a.startswith("--nproc="))
    del argv[i : i + (1 if "=" in argv[i] else 2)]
    if args.run_dir is None and not args.resume:  # every rank must write to the same run directory
        argv += ["--run-dir", str(Path("runs") / time.strftime("%Y%m%d-%H%M%S"))]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={args.nproc}",
           "-m", "bigbatch", *argv]
    from bigbatch.distributed.process import cpu_cores

    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, cpu_cores() // args.nproc)))  # each rank's share
    print("bigbatch: running " + " ".join(cmd[1:]), file=sys.stderr)
    sys.stderr.flush()
    os.execv(sys.executable, cmd)  # signals (Ctrl-C, SIGTERM) now reach torchrun, which passes them on


def _load(path: str, task: str, which: str = "best"):
    """(model, config, tokenizer, labels) of a run or checkpoint, checking it was trained for ``task``."""
    from bigbatch import load
    from bigbatch.train.checkpoint import checkpoint_assets, resolve_checkpoint

    model, cfg = load(path, which)
    if cfg.task != task:
        raise UserError(f"{path}: this command needs a task={task} run, this one has task={cfg.task}")
    return (model, cfg, *checkpoint_assets(resolve_checkpoint(path, which), cfg))


def _inputs(texts: list[str]) -> list[str]:
    lines = texts or [line.rstrip("\n") for line in sys.stdin if line.strip()]
    if not lines:
        raise UserError("no input text: give TEXT arguments or lines on stdin")
    return lines


def cmd_generate(args) -> int:
    import torch

    from bigbatch.nn.generate import generate

    model, cfg, tokenizer, _ = _load(args.run, "lm", args.checkpoint)
    ids = tokenizer.encode(args.prompt).astype("int64")
    if len(ids) == 0:
        raise UserError("--prompt is empty: give at least one character to continue")
    gen = torch.Generator().manual_seed(args.seed)
    out = generate(model, torch.from_numpy(ids)[None], args.max_new_tokens, temperature=args.temperature,
                   top_k=args.top_k, top_p=args.top_p, eos_id=tokenizer.eos_id, generator=gen)
    print(tokenizer.decode(out[0].tolist()))
    return 0


def cmd_translate(args) -> int:
    from bigbatch.tasks.translate import translate_text

    model, cfg, tokenizer, _ = _load(args.run, "translate", args.checkpoint)
    for line in _inputs(args.text):
        print(translate_text(model, tokenizer, line, beam=args.beam, length_penalty=args.length_penalty))
    return 0


def cmd_classify(args) -> int:
    """Texts (arguments or stdin lines) of a classify run; image files of a vision run; WAV files of an audio run."""
    from bigbatch import load
    from bigbatch.tasks import get_task
    from bigbatch.train.checkpoint import checkpoint_assets, resolve_checkpoint

    model, cfg = load(args.run, args.checkpoint)
    task = get_task(cfg.task)
    if not task.labelled:
        raise UserError(f"{args.run}: this command needs a classify or vision run, this one has task={cfg.task}")
    tokenizer, labels = checkpoint_assets(resolve_checkpoint(args.run, args.checkpoint), cfg)
    for line in _inputs(args.text):
        label, p = task.predict(model, tokenizer, labels, line)
        if args.json:
            print(json.dumps({"label": label, "p": round(p, 4), ("file" if task.media else "text"): line}))
        else:
            print(f"{label}\t{p:.4f}\t{line}" if task.media else f"{label}\t{line}")
    return 0


def cmd_attention(args) -> int:
    from bigbatch import load
    from bigbatch.evaluate.attention_maps import attention_maps, plot_attention, select
    from bigbatch.train.checkpoint import checkpoint_assets, resolve_checkpoint

    model, cfg = load(args.run, args.checkpoint)
    tokenizer, labels = checkpoint_assets(resolve_checkpoint(args.run, args.checkpoint), cfg)
    if cfg.task == "vision":  # an image file: attention rollout over it
        return _attention_image(args, model, labels)
    if cfg.task == "audio" or cfg.model.arch != "transformer":
        raise UserError(f"{args.run}: bigbatch attention draws Transformer attention of text and vision runs; this "
                        f"is a task={cfg.task}, model.arch={cfg.model.arch} run")
    try:
        is_file = Path(args.input).is_file()
    except OSError:  # a text too long to be a file name
        is_file = False
    if is_file:
        with open(args.input, "rb") as f:  # the model reads at most max_len tokens: 64 KiB is plenty
            text = f.read(1 << 16).decode("utf-8", errors="replace")
    else:
        text = args.input
    chosen = select(attention_maps(model, cfg.task, tokenizer, text, cfg.model.max_len), args.stack, args.layer)
    out = plot_attention(chosen, args.out, args.head)
    print(f"{out}: {chosen.stack} attention, layer {chosen.layer}, head {args.head}, "
          f"{len(chosen.queries)} x {len(chosen.keys)} tokens")
    return 0


def _attention_image(args, model, labels) -> int:
    import torch

    from bigbatch.data.images import load_image_file
    from bigbatch.evaluate.attention_maps import attention_rollout, image_attention_maps, plot_rollout
    from bigbatch.tasks.vision import classify_image

    m = model.config
    pixels = torch.from_numpy(load_image_file(args.input, m.image_size, m.channels))
    rollout = attention_rollout(image_attention_maps(model, pixels), model.cls is not None)
    label, p = classify_image(model, labels, args.input)
    out = plot_rollout(pixels, rollout, model.grid, args.out, f"attention rollout: {label} ({p:.2f})")
    print(f"{out}: attention rollout over {len(rollout)} patches of {args.input} (predicted {label}, p {p:.4f})")
    return 0


def cmd_eval(args) -> int:
    from bigbatch.evaluate.run import evaluate_run

    result = evaluate_run(args.run, args.split, checkpoint=args.checkpoint, beam=args.beam,
                          length_penalty=args.length_penalty, max_examples=args.max_examples, seed=args.seed,
                          decode=not args.no_decode, baseline=not args.no_baseline, device=args.device,
                          progress=not args.json)
    if args.json:
        print(json.dumps(result))
        return 0
    from bigbatch.train.report import describe_baseline

    base = result.get("baseline")
    shown = {k: v for k, v in result.items() if k not in ("baseline", "checkpoint", "split", "confusion", "confusion_png")}
    print(f"{args.split} ({result['checkpoint']}): "
          + ", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in shown.items()))
    if base:
        print(f"{args.split} ({result['checkpoint']}), same split: {describe_baseline(base)}")
    if "confusion_png" in result:
        print(f"confusion matrix: {result['confusion_png']}")
    return 0


def cmd_prepare(args) -> int:
    from bigbatch.config import load_config
    from bigbatch.data.pipeline import prepare_spec
    from bigbatch.data.prepare import prepare

    sets = list(args.set)
    if args.source:
        tokenizer = args.tokenizer or {"vision": "pixels", "audio": "pcm16"}.get(args.task, "byte")
        sets += [f"data.source={args.source}", f"data.tokenizer={tokenizer}", f"task={args.task}"]
    if args.workers:
        sets.append(f"data.num_workers={args.workers}")
    if args.verify and args.out and not args.config and not args.source:  # a shard directory, wherever it came from
        from bigbatch.data.shards import verify_shards

        print(f"OK: {verify_shards(Path(args.out))} shard files in {args.out} match manifest.json")
        return 0
    if not args.config and not args.source:
        raise UserError("give a CONFIG.yaml or --source SRC (or, with --verify, --out SHARD_DIR)")
    cfg = load_config(args.config, sets)
    if args.verify:
        from bigbatch.data.prepare import verify_prepared

        out, n_files = verify_prepared(prepare_spec(cfg), args.out or cfg.data.shard_dir)
        print(f"OK: {n_files} shard files in {out} match manifest.json")
        return 0
    out = prepare(prepare_spec(cfg), args.out or cfg.data.shard_dir)
    manifest = json.loads((out / "manifest.json").read_text())
    for split, info in manifest["splits"].items():
        print(f"{split}: {info['n_examples']:,} examples, {info['n_tokens']:,} tokens in {len(info['shards'])} shards")
    print(out)
    return 0


def cmd_baseline(args) -> int:
    from bigbatch.config import load_config
    from bigbatch.evaluate.baseline import baseline

    path = Path(args.config)
    if path.is_dir():
        if not (path / "config.yaml").exists():
            raise UserError(f"{path}: no config.yaml; expected a YAML config or a run directory")
        path = path / "config.yaml"
    elif not path.exists():
        raise UserError(f"{path}: no such file; expected a YAML config or a run directory")
    cfg = load_config(path, args.set)
    result = baseline(cfg, args.split, max_train_examples=args.max_examples, progress=not args.json)
    if args.json:
        print(json.dumps(result))
        return 0
    for name, metrics in result["methods"].items():
        values = ", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in metrics.items())
        print(f"{result['split']} {name}: {values}" + ("  (best)" if name == result["method"] else ""))
    print(f"{result['train_examples']:,} of {result['train_examples_total']:,} train and {result['eval_examples']:,} "
          f"of {result['eval_examples_total']:,} {result['split']} examples, {result['seconds']:.1f} s")
    return 0


def cmd_noise_scale(args) -> int:
    from bigbatch.config import load_config
    from bigbatch.train.probe import measure_noise_scale

    cfg = load_config(args.config, args.set, base=_base(args))
    result = measure_noise_scale(cfg, args.steps, progress=not args.json)
    if args.json:
        print(json.dumps(result))
    else:
        print(f"gradient noise scale B_simple = {result['noise_scale']:,.0f} {result['unit']} after {args.steps} steps; "
              f"recommended global batch: {result['recommended_setting']}; train.batch_schedule=adaptive "
              f"(batch_noise_factor {cfg.train.batch_noise_factor:g}) would choose {result['adaptive_batch']:,} "
              f"{result['adaptive_unit']} now")
    return 0


def cmd_compress(args) -> int:
    from bigbatch.config import load_config
    from bigbatch.train.checkpoint import resolve_checkpoint

    source = args.teacher if args.how == "distill" else args.run
    saved = load_config(resolve_checkpoint(source) / "config.yaml")
    if saved.task == "classify" and not saved.model.num_classes:
        raise UserError(f"{source}: this model has no classifier head (an encoder imported without one); fine-tune "
                        "it on labelled data first (train.init_from), then compress that run")
    if args.how == "quantize":
        from bigbatch.compress.quantize import quantize_run

        summary = quantize_run(args.run, args.out, args.method, measure=not args.no_measure,
                               eval_examples=args.eval_examples)
    elif args.how == "prune":
        from bigbatch.compress.prune import prune_run

        summary = prune_run(args.run, args.out, heads=args.heads, ffn=args.ffn, unstructured=args.unstructured,
                            finetune_steps=args.finetune_steps, measure=not args.no_measure,
                            eval_examples=args.eval_examples, sets=args.set, progress=not args.no_progress)
    else:
        from bigbatch.compress.distill import distill_run

        summary = distill_run(args.teacher, args.student, args.out, sets=args.set,
                              sequence_level=args.sequence_level, progress=not args.no_progress)
    if args.json:
        print(json.dumps(summary))
    return 0


def cmd_import_hf(args) -> int:
    from bigbatch.interop.hf import import_hf

    from bigbatch.config import load_config

    out = import_hf(args.hf_dir, args.out_dir)
    cfg = load_config(out / "config.yaml")
    m = cfg.model
    layers = m.n_layers if cfg.task != "translate" else f"{m.n_encoder_layers}+{m.n_decoder_layers}"
    head = f", {m.num_classes} classes" if m.num_classes else (", no classifier head" if cfg.task == "classify" else "")
    print(f"{out}: task={cfg.task}, {layers} layers x {m.d_model} wide, {m.n_heads} heads, vocab {m.vocab_size}"
          f"{head}")
    return 0


def cmd_export_hf(args) -> int:
    from bigbatch.interop.hf import export_hf

    out = export_hf(args.run, args.out_dir, encoder_only=args.encoder_only)
    print(f"{out}: {json.loads((out / 'config.json').read_text())['architectures'][0]} "
          "(transformers.AutoModel*.from_pretrained and AutoTokenizer.from_pretrained read it)")
    return 0


def cmd_bench(args) -> int:
    from bigbatch.train.bench import matmul_peak, throughput

    if args.what == "peak":
        result = matmul_peak(args.device, args.dtype)
        line = f"{result['device']} {args.dtype} matmul peak: {result['peak_flops'] / 1e9:,.1f} GFLOP/s"
    elif args.what == "latency":
        from bigbatch.compress.measure import measure_run

        if not args.config:
            raise UserError("bench latency: give a run or checkpoint directory")
        if any(b < 1 for b in args.batch) or args.reps < 1:
            raise UserError("--batch and --reps: expected numbers >= 1")
        result = measure_run(args.config, batches=tuple(args.batch), reps=args.reps, evaluate=False)
        line = f"{args.config}: {result['size_mb']:.2f} MB, " + ", ".join(
            f"batch {b}: {result[f'latency_ms_b{b}']:.2f} ms" for b in args.batch)
    else:
        from bigbatch.config import load_config

        cfg = load_config(args.config, args.set, base=_base(args))
        result = throughput(cfg, args.steps, args.peak_flops)
        mfu = f"{result['mfu']:.1%}" if result["mfu"] is not None else "unknown"
        line = f"{result['tokens_per_s']:,.0f} tokens/s, MFU {mfu} (peak {result['peak_flops'] / 1e9:,.1f} GFLOP/s)"
    print(json.dumps(result) if args.json else line)
    return 0


def cmd_plot(args) -> int:
    from bigbatch.train.metrics import plot_runs

    print(plot_runs([Path(r) for r in args.runs], Path(args.out), args.x))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bigbatch", description="Train Transformers on large data with large batches.")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a model (no CONFIG: the embedded default LM)")
    t.add_argument("config", nargs="?", help="YAML config; omitted = the embedded default")
    t.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    t.add_argument("--run-dir", help="run directory (default runs/TIMESTAMP); one with a checkpoint resumes")
    t.add_argument("--resume", action="store_true", help="resume --run-dir, or the newest run under ./runs")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")
    t.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    t.add_argument("--nproc", type=int, default=None, metavar="N",
                   help="run N processes on this machine through torchrun (data parallel: train.parallel)")
    t.set_defaults(func=cmd_train)

    g = sub.add_parser("generate", help="sample from a trained language model")
    g.add_argument("run", help="run directory or checkpoint directory")
    g.add_argument("--checkpoint", default="best", help="best (default), latest, or a checkpoint name")
    g.add_argument("--prompt", required=True)
    g.add_argument("--max-new-tokens", type=int, default=200)
    g.add_argument("--temperature", type=float, default=0.8, help="0 = greedy")
    g.add_argument("--top-k", type=int, default=None)
    g.add_argument("--top-p", type=float, default=None)
    g.add_argument("--seed", type=int, default=0)
    g.set_defaults(func=cmd_generate)

    e = sub.add_parser("eval", help="evaluate a run on a split")
    e.add_argument("run", help="run directory or checkpoint directory")
    e.add_argument("--split", choices=["valid", "test"], default="valid")
    e.add_argument("--checkpoint", default="best", help="best (default), latest, or a checkpoint name (step_N)")
    e.add_argument("--beam", type=int, default=4, help="translation: beam size for BLEU / chrF (1 = greedy)")
    e.add_argument("--length-penalty", type=float, default=1.0,
                   help="translation beam search: hypotheses score log p / length^this")
    e.add_argument("--max-examples", type=int, default=None,
                   help="score a seeded random sample of about N examples instead of the whole split")
    e.add_argument("--seed", type=int, default=0, help="seed of the --max-examples sample")
    e.add_argument("--no-decode", action="store_true", help="translation: loss only, no BLEU / chrF")
    e.add_argument("--no-baseline", action="store_true", help="leave out the strong simple baseline")
    e.add_argument("--device", default=None, help="cpu, cuda, cuda:N or auto (default: the run's train.device)")
    e.add_argument("--json", action="store_true", help="print one JSON object")
    e.set_defaults(func=cmd_eval)

    tr = sub.add_parser("translate", help="translate TEXT arguments (or stdin lines) with a translate run")
    tr.add_argument("run")
    tr.add_argument("--checkpoint", default="best", help="best (default), latest, or a checkpoint name")
    tr.add_argument("text", nargs="*")
    tr.add_argument("--beam", type=int, default=4)
    tr.add_argument("--length-penalty", type=float, default=1.0, help="beam hypotheses score log p / length^this")
    tr.set_defaults(func=cmd_translate)

    c = sub.add_parser("classify", help="classify TEXT arguments (or stdin lines) with a classify run; image files (vision) or WAV files (audio)")
    c.add_argument("run")
    c.add_argument("--checkpoint", default="best", help="best (default), latest, or a checkpoint name")
    c.add_argument("text", nargs="*")
    c.add_argument("--json", action="store_true", help="one JSON object per line")
    c.set_defaults(func=cmd_classify)

    at = sub.add_parser("attention", help="draw a trained model's attention weights on an input as heatmaps")
    at.add_argument("run")
    at.add_argument("input", help="the text (or a text file) to run the model on; an image file for a vision run "
                    "(drawn as attention rollout over the image)")
    at.add_argument("--out", required=True, help="the PNG file to write")
    at.add_argument("--layer", type=int, default=0, help="layer number (negative counts from the last)")
    at.add_argument("--head", default="all", help="head number, or all (side by side)")
    at.add_argument("--stack", choices=("encoder", "decoder", "cross"), default=None,
                    help="which attention (default: cross for a translator, else the model's own)")
    at.add_argument("--checkpoint", default="best", help="best (default), latest, or a checkpoint name")
    at.set_defaults(func=cmd_attention)

    pr = sub.add_parser("prepare", help="tokenise data into shards (train does this itself when needed)")
    pr.add_argument("config", nargs="?", help="YAML config whose data section to prepare")
    pr.add_argument("--source", help="data source (instead of a config)")
    pr.add_argument("--tokenizer", default=None, help="byte (default), bpe, unigram, or a tokenizer.json / HF directory "
                    "(task vision: pixels, audio: pcm16)")
    pr.add_argument("--task", default="lm", choices=["lm", "classify", "translate", "vision", "audio"])
    pr.add_argument("--out", help="output directory (default: the cache, keyed by fingerprint)")
    pr.add_argument("--workers", type=int, default=0, help="tokenising processes (default data.num_workers)")
    pr.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    pr.add_argument("--verify", action="store_true", help="re-hash the prepared shards against manifest.json "
                    "(opening them checks sizes only); exit 2 naming the first file that differs")
    pr.set_defaults(func=cmd_prepare)

    bl = sub.add_parser("baseline", help="simple strong baselines (TF-IDF + logistic regression, word dictionary, "
                                         "byte n-gram) on the splits a config trains and evaluates on")
    bl.add_argument("config", metavar="CONFIG_OR_RUN", help="YAML config, or a run directory (its config.yaml)")
    bl.add_argument("--split", choices=["valid", "test"], default="valid")
    bl.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    bl.add_argument("--max-examples", type=int, default=None, metavar="N",
                    help="train on at most N sampled training examples (default: the task's cap)")
    bl.add_argument("--json", action="store_true", help="print one JSON object")
    bl.set_defaults(func=cmd_baseline)

    ns = sub.add_parser("noise-scale", help="measure the gradient noise scale and recommend a global batch")
    ns.add_argument("config", nargs="?", help="YAML config (omitted: the embedded default)")
    ns.add_argument("--steps", type=int, default=50)
    ns.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    ns.add_argument("--json", action="store_true", help="print one JSON object")
    ns.set_defaults(func=cmd_noise_scale)

    b = sub.add_parser("bench", help="peak: matmul FLOP/s of this device; throughput: tokens/s and MFU of a config; "
                                     "latency: inference time of a trained (or compressed) run")
    b.add_argument("what", choices=["peak", "throughput", "latency"])
    b.add_argument("config", nargs="?", help="throughput: YAML config (omitted: the embedded default); "
                                            "latency: a run or checkpoint directory")
    b.add_argument("--batch", type=int, nargs="+", default=[1, 32], help="latency: batch sizes (default 1 32)")
    b.add_argument("--reps", type=int, default=20, help="latency: timed calls per batch size (the median is shown)")
    b.add_argument("--steps", type=int, default=20)
    b.add_argument("--device", default="auto")
    b.add_argument("--dtype", default="fp32", choices=["fp32", "bf16", "fp16"])
    b.add_argument("--peak-flops", type=float, default=None, help="throughput: peak to compute MFU against")
    b.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    b.add_argument("--json", action="store_true", help="print one JSON object")
    b.set_defaults(func=cmd_bench)

    cp = sub.add_parser("compress", help="quantize, prune or distill a trained run into a new run directory")
    how = cp.add_subparsers(dest="how", required=True, metavar="{quantize,prune,distill}")
    q = how.add_parser("quantize", help="int8 linear layers (CPU inference)")
    q.add_argument("run", help="run or checkpoint directory")
    q.add_argument("--method", default="dynamic-int8", choices=["dynamic-int8", "weight-int8"],
                   help="dynamic-int8: int8 products on the CPU (fastest there); weight-int8: int8 storage, float "
                        "products (4x smaller, float speed; GPUs)")
    pn = how.add_parser("prune", help="remove attention heads and feed-forward neurons (structured), then fine-tune")
    pn.add_argument("run", help="run or checkpoint directory")
    pn.add_argument("--heads", type=float, default=0.0, help="fraction of all attention heads to remove, in [0, 1)")
    pn.add_argument("--ffn", type=float, default=0.0, help="fraction of all feed-forward neurons to remove, in [0, 1)")
    pn.add_argument("--unstructured", type=float, default=0.0,
                    help="instead: zero this fraction of all weights by global magnitude (saves no time)")
    pn.add_argument("--finetune-steps", type=int, default=0, help="recovery fine-tuning steps on the run's data")
    pn.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override a key of the fine-tuning config (e.g. optim.lr=1e-4)")
    dl = how.add_parser("distill", help="train a student config with a teacher run's soft targets")
    dl.add_argument("--teacher", required=True, help="the teacher's run or checkpoint directory")
    dl.add_argument("--student", default=None, help="the student's config YAML (default: the teacher's config "
                                                    "with half the layers)")
    dl.add_argument("--sequence-level", action="store_true",
                    help="translate: train the student on the teacher's beam outputs (Kim & Rush 2016)")
    dl.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a student config key")
    for sp in (q, pn, dl):
        sp.add_argument("--out", required=True, help="the new run directory (must not exist, or be empty)")
        sp.add_argument("--json", action="store_true", help="print one JSON object (the summary)")
        sp.add_argument("--no-progress", action="store_true", help="no progress bars")
        sp.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks")
    for sp in (q, pn):
        sp.add_argument("--no-measure", action="store_true", help="skip measuring size, latency and metric")
        sp.add_argument("--eval-examples", type=int, default=2000,
                        help="validation examples the metric is measured on (default 2000)")
    cp.set_defaults(func=cmd_compress)

    ih = sub.add_parser("import-hf", help="a Hugging Face checkpoint directory (BERT/MiniLM, GPT-2, Marian) -> a run "
                                          "directory every command accepts")
    ih.add_argument("hf_dir", help="directory with config.json, model.safetensors or pytorch_model.bin, tokenizer "
                                   "files; or package:NAME/DIR, a directory inside an installed Python package")
    ih.add_argument("out_dir", help="the run directory to write (new or empty)")
    ih.set_defaults(func=cmd_import_hf)
    eh = sub.add_parser("export-hf", help="a run (lm, classify or translate) -> a Hugging Face checkpoint directory "
                                          "(GPT-2, BERT, Marian)")
    eh.add_argument("run", help="run or checkpoint directory")
    eh.add_argument("out_dir", help="the directory to write (new or empty)")
    eh.add_argument("--encoder-only", action="store_true",
                    help="classify: write the encoder alone (BertModel), e.g. for a mean-pooling classifier")
    eh.set_defaults(func=cmd_export_hf)

    pl = sub.add_parser("plot", help="overlay train / valid loss, lr and tokens/s of runs in one PNG")
    pl.add_argument("runs", nargs="+", help="run directories")
    pl.add_argument("--x", default="step", metavar="step|tokens|time",
                    help="x axis: optimizer steps, training tokens, or training time in seconds (default step)")
    pl.add_argument("--out", default="plots.png", help="the figure to write (.png, .svg or .pdf; default plots.png)")
    pl.set_defaults(func=cmd_plot)
    for command in sub.choices.values():  # --debug after the subcommand too; SUPPRESS keeps one given before
        command.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks")
    return p


def _rank() -> str:
    """" (rank N)" under torchrun with several processes, so a message says which rank it comes from."""
    return f" (rank {os.environ['RANK']})" if int(os.environ.get("WORLD_SIZE", 1)) > 1 else ""


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    args.argv = argv
    if extra and hasattr(args, "text") and not any(x.startswith("-") for x in extra):
        args.text += extra  # TEXT arguments given after an option: `classify RUN --json "a" "b"`
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    from bigbatch.train.setup import subnormals_flushed

    try:
        with subnormals_flushed():
            return args.func(args)
    except UserError as e:
        if args.debug:
            raise
        print(f"bigbatch: error{_rank()}: {e}", file=sys.stderr)
        return 2
    except TrainingError as e:
        if args.debug:
            raise
        print(f"bigbatch: training stopped{_rank()}: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("bigbatch: interrupted", file=sys.stderr)
        return 130
    except (MemoryError, RuntimeError) as e:  # torch.OutOfMemoryError is a RuntimeError
        text = str(e)
        if args.debug or not (isinstance(e, MemoryError) or "out of memory" in text or "can't allocate" in text):
            raise
        first = (text.strip().splitlines() or [type(e).__name__])[0][:300]
        print(f"bigbatch: error{_rank()}: out of memory ({first}); lower model.d_model / n_layers / max_len / "
              "vocab_size or the (micro-)batch (--debug shows where)", file=sys.stderr)
        return 2
