"""The global batch during training: fixed, a linear ramp over tokens, or adaptive from the noise scale.

The batch moves in whole micro-batches: a step of k micro-batches on each of R ranks is a global batch of
k·R·micro. Sizes are in the global batch's unit (tokens where train.global_batch_tokens is set, else rows /
examples). adaptive: every batch_adapt_every steps, the batch becomes

    clamp(c · B_noise, batch_min, batch_max)        B_noise: the smoothed online B_simple, in targets

converted to micro-batches with the targets the last step counted per micro-batch (every rank sees the same
all-reduced numbers, so all take the same decision), after 20 measurements and at most doubling per
decision (an early estimate is a ratio of two noisy differences). Growing only, unless train.batch_shrink. The lr follows
the batch by optim.scale_rule from the reference batch (optim.reference_batch, default batch_start).
"""

from __future__ import annotations

import math

from bigbatch.config import Config
from bigbatch.errors import UserError

MIN_UPDATES = 20  # noise-scale measurements before the first adaptive decision: 1 / (1 - EMA 0.95)


class BatchSchedule:
    def __init__(self, cfg: Config, micro: int, accum_steps: int, ranks: int, unit_scale: int, unit: str):
        """``micro``: a micro-batch in the plan's unit; ``unit_scale``: config units per plan unit (seq_len
        where an LM's batch keys count tokens, else 1); ``accum_steps``: of the global batch."""
        t = cfg.train
        self.kind, self.cfg = t.batch_schedule, cfg
        self.unit = unit
        self.step_units = micro * ranks * unit_scale  # one micro-batch on every rank
        self.ranks = ranks
        self.k_global = accum_steps
        self.warmup_steps = t.batch_warmup_steps
        if self.kind == "fixed":
            self.k = self.k_min = self.k_max = accum_steps
            return
        top = accum_steps * self.step_units
        if self.kind == "ramp" and t.batch_start and t.batch_start > top:
            raise UserError(f"train.batch_start={t.batch_start} is larger than the global batch {top}")
        low = t.batch_min or t.batch_start or self.step_units
        high = t.batch_max or top
        start = t.batch_start or low
        for key, value in (("batch_start", start), ("batch_min", low), ("batch_max", high)):
            if value % self.step_units:
                raise UserError(f"train.{key}={value} {unit} is not a whole number of micro-batches of "
                                f"{self.step_units} {unit} (micro-batch x {ranks} ranks); set train.micro_batch_size "
                                "to a divisor of it")
        if self.kind == "adaptive" and not low <= start <= high:
            raise UserError(f"train.batch_start={start} lies outside [batch_min={low}, batch_max={high}]")
        if low > high:
            raise UserError(f"train.batch_min={low} is larger than train.batch_max={high}")
        self.k_min, self.k_max, self.k = low // self.step_units, high // self.step_units, start // self.step_units
        self.k_start = self.k

    @property
    def units(self) -> int:
        """The global batch now, in the config's unit."""
        return self.k * self.step_units

    def micro_batches(self, step: int, tokens: int) -> int:
        """Micro-batches per rank in optimiser step ``step`` (0-based) after ``tokens`` training tokens."""
        if self.kind == "fixed":
            if self.warmup_steps <= 0 or step >= self.warmup_steps:
                return self.k_global
            return max(1, math.ceil(self.k_global * (step + 1) / self.warmup_steps))
        if self.kind == "ramp":
            done = min(tokens / self.cfg.train.batch_ramp_tokens, 1.0)
            self.k = max(self.k_start, min(self.k_max, math.ceil(self.k_start + (self.k_max - self.k_start) * done)))
        return self.k

    def adapt(self, step: int, noise: float | None, n_targets: int, k_used: int, updates: int = MIN_UPDATES) -> str | None:
        """After step ``step`` (1-based) of ``k_used`` micro-batches a rank and ``n_targets`` targets: the new
        adaptive batch, returning a line to print when it changed. No decision before the smoothed estimate has
        MIN_UPDATES measurements (the first are dominated by noise); at most doubling (or halving) at a time."""
        t = self.cfg.train
        if (self.kind != "adaptive" or step % t.batch_adapt_every or noise is None or n_targets <= 0
                or updates < MIN_UPDATES):
            return None
        want = min(self.choose(noise, n_targets / k_used), 2 * self.k)
        want = max(want, self.k if not t.batch_shrink else math.ceil(self.k / 2))
        if want == self.k:
            return None
        before, self.k = self.units, want
        return (f"step {step}: global batch {before:,} -> {self.units:,} {self.unit} "
                f"({t.batch_noise_factor:g} x noise scale {noise:,.0f} targets)")

    def choose(self, noise: float, targets_per_k: float) -> int:
        """Micro-batches per rank for c · B_noise targets, clamped to [batch_min, batch_max]."""
        want = math.ceil(self.cfg.train.batch_noise_factor * noise / max(targets_per_k, 1e-9))
        return min(self.k_max, max(self.k_min, want))

    def lr_factor(self, reference_units: int) -> float:
        """The lr multiplier of the current batch against ``reference_units`` (optim.scale_rule)."""
        if self.kind == "fixed":
            return 1.0
        o = self.cfg.optim
        rule = o.scale_rule if o.scale_rule != "auto" else ("linear" if o.name == "sgd" else "sqrt")
        ratio = self.units / reference_units
        return 1.0 if rule == "none" else ratio if rule == "linear" else math.sqrt(ratio)

    def state_dict(self) -> dict:
        return {"kind": self.kind, "units": self.units}

    def load_state_dict(self, state: dict) -> None:
        if state.get("kind", self.kind) != self.kind or self.kind == "fixed":
            return
        self.k = min(self.k_max, max(self.k_min, math.ceil(state["units"] / self.step_units)))
