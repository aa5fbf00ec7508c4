"""`bigbatch noise-scale`: a short run that measures the gradient noise scale and recommends a global batch."""

from __future__ import annotations

import dataclasses
import math
import tempfile

from bigbatch.config import Config
from bigbatch.errors import UserError
from bigbatch.train.loop import train
from bigbatch.train.setup import plan_batch


def measure_noise_scale(cfg: Config, steps: int = 50, progress: bool = True) -> dict:
    """Train ``steps`` steps of ``cfg`` (from scratch, in a temporary run directory) with at least two
    micro-batches per step, and return the smoothed B_simple and a recommended global batch.

    B_simple is counted in targets: tokens for lm / translate, examples for classify. Early in training
    it is small and it grows as the loss falls, so a probe from scratch gives a lower bound for later.
    """
    if steps < 5:
        raise UserError(f"--steps {steps}: the estimate needs at least 5 steps")
    plan = plan_batch(cfg)
    train_cfg = dataclasses.replace(cfg.train, max_steps=steps, eval_every=0, save_every=0, sample_tokens=0,
                                    max_time_s=None, max_tokens=None, epochs=None, eval_every_s=None, baseline=False)
    if plan.accum_steps < 2:  # the estimator needs two batch sizes: split the global batch
        if plan.unit == "tokens":
            train_cfg = dataclasses.replace(train_cfg, micro_batch_tokens=plan.micro // 2,
                                            global_batch_tokens=plan.micro // 2 * 2)
        elif plan.micro < 2:
            raise UserError("the global batch has one example; the noise scale needs at least two")
        else:
            global_rows = plan.micro // 2 * 2
            train_cfg = dataclasses.replace(train_cfg, micro_batch_size=global_rows // 2, global_batch_size=global_rows,
                                            global_batch_tokens=None)
    warmup = cfg.optim.warmup_steps
    optim = dataclasses.replace(cfg.optim, warmup_steps=None if warmup is None else min(warmup, steps // 2))
    probe = dataclasses.replace(cfg, train=train_cfg, optim=optim)
    with tempfile.TemporaryDirectory(prefix="bigbatch-noise-") as run_dir:
        summary = train(probe, run_dir, progress=progress)
    b = summary.get("noise_scale")
    if b is None or not math.isfinite(b) or b <= 0:
        raise UserError("the gradient noise scale could not be estimated (|G|² estimate not positive); run more --steps")
    unit = "examples" if cfg.task == "classify" else "tokens"
    out = {"noise_scale": b, "unit": unit, "steps": steps, "valid_loss": summary["valid_loss"]}
    if cfg.task == "lm":
        rows = max(1, math.ceil(b / cfg.data.seq_len))
        out.update(recommended_batch=rows * cfg.data.seq_len, recommended_setting=f"train.global_batch_tokens={rows * cfg.data.seq_len}")
    elif cfg.task == "classify":
        out.update(recommended_batch=max(1, round(b)), recommended_setting=f"train.global_batch_size={max(1, round(b))}")
    else:
        out.update(recommended_batch=max(1, round(b)), recommended_setting=f"train.global_batch_tokens≈{round(b)} target tokens")
    t = cfg.train  # what batch_schedule=adaptive would set now: c x B_simple, in the global batch's unit
    per = cfg.data.seq_len if cfg.task == "lm" and not t.global_batch_tokens else 1
    chosen = max(1, math.ceil(t.batch_noise_factor * b / per))
    chosen = min(t.batch_max or chosen, max(t.batch_min or 1, chosen))
    out.update(adaptive_batch=chosen, adaptive_unit="rows" if per > 1 else unit)
    return out
