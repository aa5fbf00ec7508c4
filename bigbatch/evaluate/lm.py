"""Language-model evaluation: loss, perplexity and bits per byte on a token split."""

from __future__ import annotations

import contextlib
import math

import numpy as np
import torch

from bigbatch.data.lm import eval_batches
from bigbatch.objectives import lm_objective


@torch.no_grad()
def evaluate_lm(model, tokens: np.ndarray, seq_len: int, batch_size: int, device,
                max_batches: int | None = None, autocast=contextlib.nullcontext) -> dict:
    """Mean next-token loss (nats) over the rows of ``tokens``; bits per byte = summed nats /
    bytes of text / ln 2 (eos targets add their loss but no bytes). Restores train mode."""
    was_training = model.training
    model.eval()
    loss_sum, n_targets, n_bytes = 0.0, 0, 0
    for batch in eval_batches(tokens, seq_len, batch_size, max_batches):
        with autocast():
            s, n, _ = lm_objective(model, {"input_ids": batch["input_ids"].to(device)})
        loss_sum += s.item()
        n_targets += int(n)
        n_bytes += batch["n_bytes"]
    model.train(was_training)
    loss = loss_sum / max(n_targets, 1)
    return {"loss": loss, "perplexity": math.exp(min(loss, 50.0)),
            "bits_per_byte": loss_sum / max(n_bytes, 1) / math.log(2), "eval_tokens": n_targets}


def unigram_bits_per_byte(train_tokens: np.ndarray, eval_tokens: np.ndarray, vocab_size: int) -> float:
    """The byte-frequency baseline: cross-entropy of ``eval_tokens`` under the train split's
    unigram distribution (add-one smoothed), in bits per byte of text."""
    counts = np.bincount(train_tokens, minlength=vocab_size).astype(np.float64) + 1.0
    log2p = np.log2(counts / counts.sum())
    targets = eval_tokens[1:]
    return float(-log2p[targets].sum() / max(int((targets < 256).sum()), 1))
