"""The small interface every task implements; the loop, the memory probe and validation call only this.

A task knows how its batches count tokens, which objective trains it, the longest sequence a batch
can hold, a synthetic worst-case batch for the start-up probe, and which metrics may choose
checkpoints/best. Adding a task is one file here, not branches in the trainer.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

from torch import Tensor

from bigbatch import objectives
from bigbatch.config import Config, ModelConfig
from bigbatch.errors import UserError


class Task(ABC):
    name: str = ""
    best_metrics: tuple[str, ...] = ("loss",)  # the first is train.best_metric=auto's choice
    output_vocab = True  # the model ends in a vocabulary-sized projection (its logits count in memory)
    decodes = False  # validation also scores decoded outputs (decoded_scores), on one rank
    labelled = False  # one class label per example: accuracy, macro-F1 and a confusion matrix
    media = False  # fixed-size examples decoded from images / audio (batches count examples), not token sequences

    def objective(self, model, batch: dict, label_smoothing: float = 0.0) -> tuple[Tensor, Tensor, dict]:
        """(loss_sum, n_targets, logs) of one micro-batch; looked up at call time, so a test may replace it."""
        return objectives.OBJECTIVES[self.name](model, batch, label_smoothing=label_smoothing)

    @abstractmethod
    def input_tokens(self, batch: dict) -> int:
        """Real (non-pad) input tokens of a batch: what tokens/s and train.max_tokens count."""

    def context_len(self, cfg: Config) -> int:
        """The longest sequence one example of a batch holds."""
        return cfg.model.max_len

    @abstractmethod
    def worst_case_batch(self, cfg: Config, rows: int, device) -> dict:
        """A synthetic batch of ``rows`` examples at the longest length (the start-up probe)."""

    def decoded_scores(self, model, batches, tokenizer, device) -> dict:
        """Metrics of the model's decoded outputs on ``batches``; none for a task that does not decode."""
        return {}

    def predict(self, model, tokenizer, labels: list | None, item: str):
        """What `bigbatch classify` prints for one input (a text, an image file): (label, probability)."""
        raise UserError(f"task={self.name} does not classify inputs (bigbatch classify takes a classify or vision run)")

    def describe(self, result: dict, data, valid, summary: dict) -> str:
        """The task's metrics of an end-of-run validation ``result``, as a phrase after the loss (and any
        extra numbers the task adds to ``summary``)."""
        return ""

    def after_report(self, cfg: Config, model, data, valid, device) -> None:
        """Anything printed after the closing lines (a language model's sample); nothing by default."""
        return None

    def activation_layers(self, m: ModelConfig) -> int:
        """Layers whose activations backward keeps (cross-attention counts as a layer of its own)."""
        return m.n_layers
