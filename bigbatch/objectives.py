"""Objectives: (model, batch) -> (loss_sum, n_targets, logs). Sums, never means.

Training passes ``label_smoothing`` (a regulariser); evaluation leaves it at 0, so its losses are plain
cross-entropy. The training loop divides the summed loss of every micro-batch by the number of targets in
the whole global batch, once; that is what makes gradient accumulation and data parallelism
exact when sequences are ragged and padded.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

IGNORE = -100


def _token_loss(logits: Tensor, labels: Tensor, label_smoothing: float = 0.0) -> tuple[Tensor, Tensor]:
    """Summed cross-entropy over labels != IGNORE, and their count. logits (..., V), labels (...)."""
    loss_sum = F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), labels.reshape(-1),
                               ignore_index=IGNORE, reduction="sum", label_smoothing=label_smoothing)
    return loss_sum, (labels != IGNORE).sum()


def lm_objective(model, batch: dict, label_smoothing: float = 0.0) -> tuple[Tensor, Tensor, dict]:
    """Next-token prediction. batch["input_ids"] (B, T + 1) packed rows; or input_ids (B, T) with
    labels (B, T) already shifted (IGNORE = no target) and an optional attention_mask."""
    ids = batch["input_ids"]
    if "labels" in batch:
        inputs, labels = ids, batch["labels"]
    else:
        inputs, labels = ids[:, :-1], ids[:, 1:]
    logits = model(inputs, attention_mask=batch.get("attention_mask"))
    loss_sum, n = _token_loss(logits, labels, label_smoothing)
    return loss_sum, n, {}


def translate_objective(model, batch: dict, label_smoothing: float = 0.0) -> tuple[Tensor, Tensor, dict]:
    """Teacher-forced translation. batch: src_ids (B, S), src_mask (B, S), tgt_ids (B, T + 1) =
    bos, target, eos, then padding; tgt_mask (B, T + 1) True on real tokens."""
    tgt, mask = batch["tgt_ids"], batch["tgt_mask"]
    labels = tgt[:, 1:].masked_fill(~mask[:, 1:].bool(), IGNORE)
    logits = model(batch["src_ids"], tgt[:, :-1], src_mask=batch.get("src_mask"))
    loss_sum, n = _token_loss(logits, labels, label_smoothing)
    return loss_sum, n, {}


def classify_objective(model, batch: dict, label_smoothing: float = 0.0) -> tuple[Tensor, Tensor, dict]:
    """Sequence classification: input_ids (B, T), attention_mask (B, T), labels (B,). One target per example.
    logs: "pred" (B,) the predicted classes, "correct" their count of hits."""
    return _class_loss(model(batch["input_ids"], batch.get("attention_mask")), batch["labels"], label_smoothing)


def vision_objective(model, batch: dict, label_smoothing: float = 0.0) -> tuple[Tensor, Tensor, dict]:
    """Image classification: pixels (B, H, W, C), labels (B,). Same sums and logs as classify_objective."""
    return _class_loss(model(batch["pixels"]), batch["labels"], label_smoothing)


def audio_objective(model, batch: dict, label_smoothing: float = 0.0) -> tuple[Tensor, Tensor, dict]:
    """Audio classification: waveform (B, N) int16, labels (B,)."""
    return _class_loss(model(batch["waveform"]), batch["labels"], label_smoothing)


def _class_loss(logits: Tensor, labels: Tensor, label_smoothing: float) -> tuple[Tensor, Tensor, dict]:
    loss_sum = F.cross_entropy(logits.float(), labels, reduction="sum", label_smoothing=label_smoothing)
    pred = logits.detach().argmax(dim=-1)
    return loss_sum, labels.new_tensor(labels.numel()), {"pred": pred, "correct": (pred == labels).sum()}


def target_labels(task: str, batch: dict) -> Tensor:
    """The labels the task's objective scores, aligned with its logits: (B,) one per example (classify, vision,
    audio) or (B, T) per position with IGNORE where there is no target (lm, translate)."""
    if task == "lm":
        return batch["labels"] if "labels" in batch else batch["input_ids"][:, 1:]
    if task == "translate":
        return batch["tgt_ids"][:, 1:].masked_fill(~batch["tgt_mask"][:, 1:].bool(), IGNORE)
    return batch["labels"]


OBJECTIVES = {"lm": lm_objective, "translate": translate_objective, "classify": classify_objective,
              "vision": vision_objective, "audio": audio_objective}
