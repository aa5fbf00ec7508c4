"""Sequence classification (task: classify): padded examples, one label each."""

from __future__ import annotations

import torch

from bigbatch.config import Config
from bigbatch.tasks.base import Task


class Classification(Task):
    name = "classify"
    best_metrics = ("accuracy", "macro_f1", "loss")
    output_vocab = False
    labelled = True

    def input_tokens(self, batch: dict) -> int:
        return int(batch["attention_mask"].sum())

    def describe(self, result: dict, data, valid, summary: dict) -> str:
        return f", accuracy {result['accuracy']:.4f}, macro-F1 {result['macro_f1']:.4f}"

    def predict(self, model, tokenizer, labels: list, item: str) -> tuple[object, float]:
        return classify_text(model, tokenizer, labels, item)

    def worst_case_batch(self, cfg: Config, rows: int, device) -> dict:
        g = torch.Generator().manual_seed(0)
        T = cfg.model.max_len
        return {"input_ids": torch.randint(0, cfg.model.vocab_size, (rows, T), generator=g).to(device),
                "attention_mask": torch.ones(rows, T, dtype=torch.bool, device=device),
                "labels": torch.zeros(rows, dtype=torch.long, device=device)}


def classify_text(model, tokenizer, labels: list, text: str) -> tuple[object, float]:
    """(label, probability) of the most likely class of ``text`` (cut to model.config.max_len tokens)."""
    ids = torch.from_numpy(tokenizer.encode(text, special=True)[: model.config.max_len].astype("int64"))[None]
    with torch.no_grad():
        probs = model(ids, torch.ones_like(ids, dtype=torch.bool)).softmax(-1)[0]
    k = int(probs.argmax())
    return labels[k], float(probs[k])
