"""What the config leaves open, resolved before training: device, batch plan, sizes from the data."""

from __future__ import annotations

import dataclasses

import torch

from bigbatch.config import Config
from bigbatch.data.pipeline import TaskData
from bigbatch.errors import UserError


@dataclasses.dataclass
class BatchPlan:
    """micro: rows (lm), examples, or a token budget (classify / translate with micro_batch_tokens)."""

    micro: int
    accum_steps: int
    unit: str  # "rows", "examples" or "tokens"
    seq_len: int = 0
    ranks: int = 1

    @property
    def total(self) -> int:
        """The global batch: micro-batch x accumulation x ranks."""
        return self.micro * self.accum_steps * self.ranks

    def describe(self) -> str:
        if self.unit == "rows":
            return (f"global {self.total} x {self.seq_len} = {self.total * self.seq_len:,} tokens, "
                    f"micro-batch {self.micro}")
        return f"global {self.total:,} {self.unit}, micro-batch {self.micro:,} {self.unit}"


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"train.device={name}: CUDA is not available on this machine; use cpu or auto")
    return torch.device(name)


def plan_batch(cfg: Config, ranks: int = 1) -> BatchPlan:
    """Global batch -> micro-batch per rank and accumulation steps; bad divisibility fails showing the numbers.

    The global batch is the config's whatever the number of ranks: more ranks, fewer micro-batches each.
    """
    t, seq_len = cfg.train, cfg.data.seq_len
    given_micro = t.micro_batch_size if t.micro_batch_size != "auto" else None  # auto: resolved once the model exists
    if cfg.task == "lm":
        if t.global_batch_tokens:
            if t.global_batch_tokens % seq_len:
                raise UserError(f"train.global_batch_tokens={t.global_batch_tokens} is not a multiple of "
                                f"data.seq_len={seq_len}")
            global_rows = t.global_batch_tokens // seq_len
        else:
            global_rows = t.global_batch_size or (given_micro or 16 // ranks or 1) * ranks
        unit, name, total = "rows", "train.micro_batch_size", global_rows
    elif t.micro_batch_tokens:
        given_micro, unit, name = t.micro_batch_tokens, "tokens", "train.micro_batch_tokens"
        total = t.global_batch_tokens or given_micro * ranks
    else:
        unit, name, total = "examples", "train.micro_batch_size", t.global_batch_size or (given_micro or 32) * ranks
    micro = given_micro or max(total // ranks, 1)
    if micro * ranks > total or total % (micro * ranks):
        per = f" x {ranks} ranks" if ranks > 1 else ""
        raise UserError(f"global batch of {total} {unit} is not a whole number of {name}={micro}{per} micro-batches")
    return BatchPlan(micro, total // (micro * ranks), unit, seq_len, ranks)


def resolve_config(cfg: Config, data: TaskData) -> Config:
    """Fill values the config left to the data (vocab size, classes, pad id, base_lr) and check they fit."""
    model, tok = cfg.model, data.tokenizer
    if model.vocab_size == 0:
        model = dataclasses.replace(model, vocab_size=tok.vocab_size)
    elif model.vocab_size < tok.vocab_size:
        raise UserError(f"model.vocab_size={model.vocab_size} is smaller than the tokenizer's {tok.vocab_size}")
    if cfg.task == "classify":
        n = len(data.labels)
        if model.num_classes == 0:
            model = dataclasses.replace(model, num_classes=n)
        elif model.num_classes < n:
            raise UserError(f"model.num_classes={model.num_classes} but the data has {n} labels")
    if cfg.task != "lm" and model.pad_id is None:
        model = dataclasses.replace(model, pad_id=tok.pad_id)
    return dataclasses.replace(cfg, model=model)


def global_batch_for_scaling(cfg: Config, plan: BatchPlan) -> int:
    """The global batch in reference_batch's units: tokens if global_batch_tokens is set, else examples."""
    if plan.unit == "rows":
        return plan.total * plan.seq_len if cfg.train.global_batch_tokens else plan.total
    return plan.total
