"""Language modelling (task: lm): packed rows of seq_len + 1 tokens, next-token prediction."""

from __future__ import annotations

import sys

import numpy as np
import torch

from bigbatch.config import Config
from bigbatch.tasks.base import Task


class LanguageModelling(Task):
    name = "lm"

    def input_tokens(self, batch: dict) -> int:
        ids = batch["input_ids"]
        if "attention_mask" in batch and batch["attention_mask"].dim() == 2:
            return int(batch["attention_mask"].sum())
        return ids.size(0) * (ids.size(1) - 1)  # packed rows: every position but the last is an input

    def context_len(self, cfg: Config) -> int:
        return cfg.data.seq_len

    def worst_case_batch(self, cfg: Config, rows: int, device) -> dict:
        g = torch.Generator().manual_seed(0)
        ids = torch.randint(0, cfg.model.vocab_size, (rows, cfg.data.seq_len + 1), generator=g)
        return {"input_ids": ids.to(device)}

    def describe(self, result: dict, data, valid, summary: dict) -> str:
        summary["unigram_bits_per_byte"] = unigram_baseline(data.train, valid, data.tokenizer.vocab_size)
        return (f", {result['bits_per_byte']:.3f} bits/byte (token-unigram baseline "
                f"{summary['unigram_bits_per_byte']:.3f} bits/byte)")

    def after_report(self, cfg: Config, model, data, valid, device) -> None:
        print_sample(cfg, model, data.tokenizer, device, valid)


def unigram_baseline(train, valid, vocab_size: int) -> float:
    """Bits per byte of the valid split under the train split's token frequencies (first train shard)."""
    from bigbatch.evaluate.evaluate import unigram_bits_per_byte  # evaluate imports the tasks

    train_shard = train.shards.shards[0]
    valid_tokens = np.concatenate([s.read(0, s.n_tokens) for s in valid.shards.shards])
    return unigram_bits_per_byte(train_shard.read(0, train_shard.n_tokens), valid_tokens, vocab_size,
                                 valid.shards.bytes_per_token)


def print_sample(cfg: Config, model, tok, device, valid=None) -> None:
    """train.sample_tokens generated from train.sample_prompt (default: the start of the first validation
    document), printed after the closing lines."""
    from bigbatch.nn.generate import generate

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
