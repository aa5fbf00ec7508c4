"""`bigbatch ...`: a map of subcommands to library functions; parse, call, print.

Bad input prints one line on stderr and exits with code 2 (``--debug`` shows the traceback).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from bigbatch.errors import UserError


def cmd_train(args) -> int:
    from bigbatch.config import load_config
    from bigbatch.presets import default_lm
    from bigbatch.train.loop import train

    cfg = load_config(args.config, args.set, base=None if args.config else default_lm())
    run_dir = args.run_dir
    if args.resume and run_dir is None:
        runs = sorted(p.parent.parent for p in Path("runs").glob("*/checkpoints/latest"))
        if not runs:
            raise UserError("--resume: no run with a checkpoint under ./runs; give --run-dir")
        run_dir = runs[-1]
    elif args.resume and not (Path(run_dir) / "checkpoints" / "latest").exists():
        raise UserError(f"--resume: {run_dir} has no checkpoint to resume from")
    summary = train(cfg, run_dir, progress=not args.no_progress)
    if "stopped_by_signal" in summary:
        return 128 + summary["stopped_by_signal"]
    if args.json:
        print(json.dumps(summary))
    return 0


def cmd_generate(args) -> int:
    import torch

    from bigbatch import load
    from bigbatch.data.tokenizer import get_tokenizer
    from bigbatch.nn.generate import generate

    model, cfg = load(args.run)
    if cfg.task != "lm":
        raise UserError(f"{args.run}: generate needs a language model (task=lm), this run has task={cfg.task}")
    tokenizer = get_tokenizer(cfg.data.tokenizer)
    ids = tokenizer.encode(args.prompt).astype("int64")
    if len(ids) == 0:
        raise UserError("--prompt is empty: give at least one character to continue")
    gen = torch.Generator().manual_seed(args.seed)
    out = generate(model, torch.from_numpy(ids)[None], args.max_new_tokens, temperature=args.temperature,
                   top_k=args.top_k, top_p=args.top_p, eos_id=tokenizer.eos_id, generator=gen)
    print(tokenizer.decode(out[0].tolist()))
    return 0


def cmd_eval(args) -> int:
    from bigbatch import load
    from bigbatch.data.lm import load_lm_split
    from bigbatch.data.tokenizer import get_tokenizer
    from bigbatch.evaluate.lm import evaluate_lm

    model, cfg = load(args.run)
    tokenizer = get_tokenizer(cfg.data.tokenizer)
    explicit = cfg.data.valid_source if args.split == "valid" else cfg.data.test_source
    tokens = load_lm_split(cfg.data.source, explicit, args.split, tokenizer, cfg.data.seq_len)
    result = evaluate_lm(model, tokens, cfg.data.seq_len, 16, "cpu")
    if args.json:
        print(json.dumps(result))
    else:
        print(f"{args.split}: loss {result['loss']:.4f} nats/token, perplexity {result['perplexity']:.3f}, "
              f"{result['bits_per_byte']:.3f} bits/byte over {result['eval_tokens']:,} tokens")
    return 0


def cmd_plot(args) -> int:
    from bigbatch.train.metrics import plot_runs

    for run in args.runs:
        if not (Path(run) / "metrics.jsonl").exists():
            raise UserError(f"{run}: no metrics.jsonl; expected a run directory")
    print(plot_runs([Path(r) for r in args.runs], Path(args.out)))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bigbatch", description="Train Transformers on large data with large batches.")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a model (no CONFIG: the embedded default LM)")
    t.add_argument("config", nargs="?", help="YAML config; omitted = the embedded default")
    t.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    t.add_argument("--run-dir", help="run directory (default runs/TIMESTAMP); one with a checkpoint resumes")
    t.add_argument("--resume", action="store_true", help="resume --run-dir, or the newest run under ./runs")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")
    t.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    t.set_defaults(func=cmd_train)

    g = sub.add_parser("generate", help="sample from a trained language model")
    g.add_argument("run", help="run directory or checkpoint directory")
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
    e.add_argument("--json", action="store_true", help="print one JSON object")
    e.set_defaults(func=cmd_eval)

    pl = sub.add_parser("plot", help="plot loss / lr / throughput of runs into one PNG")
    pl.add_argument("runs", nargs="+", help="run directories")
    pl.add_argument("--out", default="plots.png")
    pl.set_defaults(func=cmd_plot)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except UserError as e:
        if args.debug:
            raise
        print(f"bigbatch: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("bigbatch: interrupted", file=sys.stderr)
        return 130
