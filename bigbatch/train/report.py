"""The end of a run, on rank 0: plots, summary.json, the closing line, a sample or example translations."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch

from bigbatch.config import Config
from bigbatch.evaluate.evaluate import unigram_bits_per_byte
from bigbatch.nn.generate import generate
from bigbatch.train.checkpoint import write_text_atomic
from bigbatch.train.metrics import MetricsLogger, write_run_plots


def report(cfg: Config, model: torch.nn.Module, data, valid, run_dir: Path, device, logger: MetricsLogger,
           state: dict, result: dict, extra: dict) -> dict:
    """Write plots and summary.json, print the closing lines; ``model`` is a plain (unsharded) module."""
    write_run_plots(run_dir)
    summary = {"run_dir": str(run_dir), "step": state["step"], "tokens": state["tokens"],
               **{f"valid_{k}": v for k, v in result.items()}, **extra}
    line = f"valid: loss {result['loss']:.4f} nats/target"
    if cfg.task == "lm":
        summary["unigram_bits_per_byte"] = unigram_baseline(data.train, valid, data.tokenizer.vocab_size)
        line += (f", {result['bits_per_byte']:.3f} bits/byte (token-unigram baseline "
                 f"{summary['unigram_bits_per_byte']:.3f} bits/byte)")
    elif cfg.task == "classify":
        line += f", accuracy {result['accuracy']:.4f}, macro-F1 {result['macro_f1']:.4f}"
    elif "bleu" in result:
        line += f", BLEU {result['bleu']:.2f}, chrF {result['chrf']:.2f} (greedy, {result['bleu_sentences']} sentences)"
    if cfg.train.baseline:
        summary["baseline"] = _baseline(cfg, data.shard_dir)
        line += "; " + describe_baseline(summary["baseline"])
    write_text_atomic(run_dir / "summary.json", json.dumps(summary, indent=1) + "\n")
    speed = f"{summary['tokens_per_s']:,.0f} tokens/s" if summary.get("tokens_per_s") else "no step trained"
    print(f"{line}; {speed}, wall {summary['wall_seconds']:.0f} s; run dir {run_dir}",
          file=sys.stderr)
    if extra.get("best_step") is not None:
        print(f"best: {extra['best_metric']} {extra['best_value']:.4f} at step {extra['best_step']} "
              f"(checkpoints/best; eval, classify, translate and generate use it)", file=sys.stderr)
    if cfg.task == "lm":
        print_sample(cfg, model, data.tokenizer, device, valid)
    return summary


def _baseline(cfg: Config, shard_dir: Path) -> dict:
    from bigbatch.errors import UserError
    from bigbatch.evaluate.run import baseline_cached

    try:
        return baseline_cached(cfg, "valid", shard_dir)
    except UserError as e:  # an optional dependency missing: say so beside the model's numbers
        return {"error": str(e)}
    except Exception as e:  # noqa: BLE001 - the trained run must still be reported; the failure is named
        return {"error": f"the baseline failed: {type(e).__name__}: {e}"}


def describe_baseline(base: dict) -> str:
    """One phrase for a baseline result: its method and metrics, or why there is none."""
    if "error" in base:
        return f"no baseline ({base['error']})"
    metrics = ", ".join(f"{k} {base[k]:.4f}" for k in ("accuracy", "macro_f1", "bleu", "chrf", "bits_per_byte")
                        if isinstance(base.get(k), float))
    return f"baseline {base.get('method', '?')}: {metrics}"


def unigram_baseline(train, valid, vocab_size: int) -> float:
    """Bits per byte of the valid split under the train split's token frequencies (first train shard)."""
    train_shard = train.shards.shards[0]
    valid_tokens = np.concatenate([s.read(0, s.n_tokens) for s in valid.shards.shards])
    return unigram_bits_per_byte(train_shard.read(0, train_shard.n_tokens), valid_tokens, vocab_size,
                                 valid.shards.bytes_per_token)


def print_sample(cfg: Config, model, tok, device, valid=None) -> None:
    prompt, n = cfg.train.sample_prompt, cfg.train.sample_tokens
    if prompt is None and valid is not None:  # the start of the first validation document
        shard = valid.shards.shards[0]
        prompt = tok.decode(shard.read(0, min(8, shard.n_tokens)).tolist())
    if not (prompt and n):
        return
    gen = torch.Generator(device=device).manual_seed(cfg.train.seed)
    ids = torch.from_numpy(tok.encode(prompt).astype(np.int64))[None].to(device)
    model.eval()
    out = generate(model, ids, n, temperature=0.8, top_k=50, eos_id=tok.eos_id, generator=gen)
    print(f"--- sample (prompt {prompt!r}) ---\n{tok.decode(out[0].tolist())}\n---", file=sys.stderr)
