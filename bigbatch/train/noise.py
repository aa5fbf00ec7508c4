"""Gradient noise scale and the critical batch size (McCandlish et al. 2018, "An Empirical Model of
Large-Batch Training", appendix A.1).

Training already has gradients at two batch sizes: one micro-batch (B_small targets) and the whole
global batch (B_big targets). With G the true gradient and Σ the per-target gradient covariance,
E|G_B|² = |G|² + tr(Σ)/B, so two sizes give unbiased estimates of both:

    |G|²   ≈ (B_big |G_big|² − B_small |G_small|²) / (B_big − B_small)
    tr(Σ)  ≈ (|G_small|² − |G_big|²) / (1/B_small − 1/B_big)

Each is smoothed with an exponential moving average before the ratio B_simple = tr(Σ) / |G|² is
taken (a ratio of noisy estimates is biased; a ratio of smoothed ones much less). B_simple, in
targets (tokens for language models), approximates the critical batch: below it, doubling the batch
nearly halves the steps; above it, returns diminish.
"""

from __future__ import annotations

import math


class NoiseScale:
    """Online B_simple from (|G_small|², B_small, |G_big|², B_big) pairs, EMA-smoothed."""

    def __init__(self, ema: float = 0.95):
        self.ema = ema
        self.g2 = self.trace = None
        self.updates = 0

    def update(self, sq_small: float, b_small: float, sq_big: float, b_big: float) -> None:
        if not b_big > b_small > 0 or not (math.isfinite(sq_small) and math.isfinite(sq_big)):
            return
        g2 = (b_big * sq_big - b_small * sq_small) / (b_big - b_small)
        trace = (sq_small - sq_big) / (1.0 / b_small - 1.0 / b_big)
        if self.g2 is None:
            self.g2, self.trace = g2, trace
        else:
            self.g2 = self.ema * self.g2 + (1 - self.ema) * g2
            self.trace = self.ema * self.trace + (1 - self.ema) * trace
        self.updates += 1

    @property
    def value(self) -> float | None:
        """B_simple in targets, or None before the first update or while the smoothed |G|² or tr(Σ) is not
        yet positive (early estimates can be negative: each is a difference of noisy terms)."""
        if self.g2 is None or self.g2 <= 0 or self.trace <= 0:
            return None
        return self.trace / self.g2

    def state_dict(self) -> dict:
        return {"g2": self.g2, "trace": self.trace, "updates": self.updates, "ema": self.ema}

    def load_state_dict(self, state: dict) -> None:
        self.g2, self.trace, self.updates, self.ema = state["g2"], state["trace"], state["updates"], state["ema"]
