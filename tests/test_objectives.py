"""Exact loss normalisation: k micro-batches of ragged, padded sequences give the gradients of one batch."""

import torch
from helpers import PAD, reverse_batch

from bigbatch.nn import CausalLM, Seq2Seq, TextClassifier
from bigbatch.objectives import IGNORE, classify_objective, lm_objective, translate_objective

SMALL = dict(d_model=16, n_heads=2, n_layers=2, max_len=32)


def grads_of(model, objective, micro_batches, normalise="global"):
    model.zero_grad()
    counts = []
    for b in micro_batches:
        with torch.no_grad():
            counts.append(objective(model, b)[1])
    total = sum(counts)
    for b, n in zip(micro_batches, counts):
        loss_sum, _, _ = objective(model, b)
        loss = loss_sum / total if normalise == "global" else loss_sum / n / len(micro_batches)
        loss.backward()
    return [p.grad.clone() for p in model.parameters() if p.grad is not None]


def trim(batch, keys, mask_key):
    """Cut a micro-batch to its own longest sequence, so micro-batches are padded differently."""
    width = int(batch[mask_key].sum(dim=1).max())
    return {k: (v[:, :width] if k in keys else v) for k, v in batch.items()}


def split(batch, sizes):
    out, start = [], 0
    for n in sizes:
        out.append({k: v[start : start + n] for k, v in batch.items()})
        start += n
    return out


def lm_batch(g, B=6, T=12):
    lengths = torch.randint(3, T + 1, (B,), generator=g)
    ids = torch.randint(0, 40, (B, T), generator=g)
    mask = torch.arange(T)[None] < lengths[:, None]
    labels = torch.cat([ids[:, 1:], torch.zeros(B, 1, dtype=torch.long)], 1)
    labels = labels.masked_fill(~(torch.arange(T)[None] < (lengths[:, None] - 1)), IGNORE)
    return {"input_ids": ids, "labels": labels, "attention_mask": mask}


def check(model, objective, batch, sizes, keys, mask_key):
    model = model.double()
    whole = grads_of(model, objective, [batch])
    micro = [trim(b, keys, mask_key) for b in split(batch, sizes)]
    for a, b in zip(whole, grads_of(model, objective, micro)):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-10)
    # the common bug, the mean of micro-batch means, gives different gradients
    wrong = grads_of(model, objective, micro, normalise="mean_of_means")
    assert any(not torch.allclose(a, b, atol=1e-6) for a, b in zip(whole, wrong))


def test_lm_micro_batches_equal_one_batch():
    torch.manual_seed(0)
    batch = lm_batch(torch.Generator().manual_seed(0))
    check(CausalLM(vocab_size=40, **SMALL), lm_objective, batch, [1, 2, 3], ("input_ids", "labels", "attention_mask"),
          "attention_mask")


def test_translation_micro_batches_equal_one_batch():
    torch.manual_seed(1)
    batch = reverse_batch(6, torch.Generator().manual_seed(1))
    del batch["lengths"]
    model = Seq2Seq(vocab_size=13, pad_id=PAD, **SMALL)
    check(model, translate_objective, trim(batch, ("src_ids", "src_mask"), "src_mask"), [2, 4],
          ("tgt_ids", "tgt_mask"), "tgt_mask")


def test_classification_micro_batches_equal_one_batch():
    torch.manual_seed(2)
    g = torch.Generator().manual_seed(2)
    lengths = torch.randint(2, 11, (6,), generator=g)
    mask = torch.arange(10)[None] < lengths[:, None]
    batch = {"input_ids": torch.randint(1, 30, (6, 10), generator=g).masked_fill(~mask, 0),
             "attention_mask": mask, "labels": torch.randint(0, 3, (6,), generator=g)}
    model = TextClassifier(vocab_size=30, num_classes=3, **SMALL)
    # one target per example: exact whenever the per-micro-batch counts are summed, not averaged
    model = model.double()
    whole = grads_of(model, classify_objective, [batch])
    micro = [trim(b, ("input_ids", "attention_mask"), "attention_mask") for b in split(batch, [1, 5])]
    for a, b in zip(whole, grads_of(model, classify_objective, micro)):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-10)
