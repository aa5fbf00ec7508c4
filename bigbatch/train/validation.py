"""Validation during training: which metric picks checkpoints/best, when to evaluate, early stopping.

    tracker = BestTracker(metric_for(cfg))
    result = validate(...)                  # loss (+ accuracy / macro-F1, or BLEU / chrF on a fixed sample)
    if tracker.update(step, result): ...    # True: a new best -> the checkpoint of this step becomes best
    tracker.patience_spent(cfg.train.patience)
"""

from __future__ import annotations

import dataclasses
import math

from bigbatch.config import Config
from bigbatch.tasks import get_task

HIGHER_IS_BETTER = {"accuracy": True, "macro_f1": True, "bleu": True, "loss": False}
BLEU_SAMPLE = 500  # sentences decoded (greedy) in a periodic translation evaluation


def metric_for(cfg: Config, strategy: str = "none") -> str:
    """The validation metric that chooses checkpoints/best (auto: accuracy, bleu, loss by task).

    BLEU needs a whole model on one rank to decode: under FSDP the loss stands in.
    """
    allowed = get_task(cfg.task).best_metrics
    metric = cfg.train.best_metric
    if metric == "auto":
        metric = allowed[0]
    if metric == "bleu" and strategy == "fsdp":
        import sys

        print("note: train.best_metric bleu needs the whole model on one rank to decode; under fsdp the validation "
              "loss chooses checkpoints/best", file=sys.stderr)
        return "loss"
    if metric not in allowed:
        from bigbatch.errors import UserError

        raise UserError(f"train.best_metric={metric} does not apply to task={cfg.task}; expected one of "
                        f"{', '.join(allowed)}")
    return metric


@dataclasses.dataclass
class BestTracker:
    """The best validation value so far, its step, and evaluations since it (for train.patience)."""

    metric: str
    value: float | None = None
    step: int | None = None
    since: int = 0

    def better(self, value: float) -> bool:
        if self.value is None:
            return True
        return value > self.value if HIGHER_IS_BETTER[self.metric] else value < self.value

    def update(self, step: int, result: dict) -> bool:
        """Record an evaluation; True when it is a new best."""
        value = result.get(self.metric)
        if value is None or not math.isfinite(value):
            self.since += 1  # a diverged evaluation counts against patience, never as a best
            return False
        if self.better(value):
            self.value, self.step, self.since = float(value), step, 0
            return True
        self.since += 1
        return False

    def patience_spent(self, patience: int | None) -> bool:
        return bool(patience) and self.since >= patience

    def state_dict(self) -> dict:
        return dataclasses.asdict(self)

    def load_state_dict(self, state: dict) -> None:
        for k, v in state.items():
            setattr(self, k, v)


def eval_due(cfg: Config, step: int, clock: float, last_eval_clock: float) -> bool:
    """A periodic evaluation after this step: every eval_every steps or eval_every_s seconds of training."""
    t = cfg.train
    by_steps = bool(t.eval_every) and step % t.eval_every == 0
    by_time = bool(t.eval_every_s) and clock - last_eval_clock >= t.eval_every_s
    return by_steps or by_time


FINAL_EVAL_TOKENS = 4_000_000  # the end-of-run report reads at most about this many validation tokens


def final_batches(cfg: Config, loader, quiet: bool = False):
    """The validation batches of the end-of-run report: the whole split up to FINAL_EVAL_TOKENS (about a
    minute of forward passes for a small model on 2 CPU cores), past that a seeded sample (classify /
    translate) or the first rows (lm), said in one line; `bigbatch eval RUN --split valid` reads it all."""
    shards = loader.shards
    if shards.n_tokens <= FINAL_EVAL_TOKENS:
        return loader.eval_batches()
    share = FINAL_EVAL_TOKENS / shards.n_tokens
    if cfg.task == "lm":
        batches = max(1, int(FINAL_EVAL_TOKENS // (loader.batch_size * loader.seq_len)))
        what, it = f"its first {batches:,} batches", loader.eval_batches(batches)
    else:
        examples = max(1, int(shards.n_examples * share))
        what, it = f"a seeded sample of ~{examples:,} of its {shards.n_examples:,} examples", \
            loader.eval_batches(max_examples=examples, seed=cfg.train.seed)
    if not quiet:
        import sys

        print(f"note: the validation split holds {shards.n_tokens:,} tokens; the end-of-run report reads {what} "
              "(`bigbatch eval RUN --split valid` scores every example)", file=sys.stderr)
    return it


def periodic_batches(cfg: Config, loader):
    """The validation batches of a periodic evaluation: eval_batches micro-batches, or a fixed seeded
    sample of eval_examples examples (classify / translate), the same sample every time."""
    t = cfg.train
    if cfg.task == "lm" or t.eval_batches:
        return loader.eval_batches(t.eval_batches or 20)
    return loader.eval_batches(max_examples=t.eval_examples, seed=t.seed)
