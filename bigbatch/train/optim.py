"""Optimisers and learning-rate schedules (all with linear warm-up)."""

from __future__ import annotations

import math

import torch
from torch import nn

from bigbatch.config import OptimConfig
from bigbatch.errors import UserError


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Decay matrices and embeddings; leave biases and norm gains alone (tied tensors once)."""
    decay, no_decay, seen = [], [], set()
    for p in model.parameters():
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        (decay if p.dim() >= 2 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.Optimizer:
    groups = param_groups(model, cfg.weight_decay)
    if cfg.name == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum)
    try:  # one fused kernel per step where this torch and device have it
        return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, fused=True)
    except (RuntimeError, TypeError):
        return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, foreach=True)


def lr_factor(step: int, cfg: OptimConfig, max_steps: int) -> float:
    """Multiplier of the peak learning rate at optimiser step ``step`` (0-based)."""
    warmup = cfg.warmup_steps
    if step < warmup:
        return (step + 1) / warmup
    if cfg.schedule == "constant":
        return 1.0
    if cfg.schedule == "inverse_sqrt":  # Vaswani et al.: peak at the end of warm-up, then 1/√step
        return math.sqrt(max(warmup, 1) / (step + 1))
    floor = cfg.min_lr_ratio
    if cfg.schedule == "wsd":  # warm-up, stable, then a linear decay over the last decay_fraction
        decay_start = max_steps * (1.0 - cfg.decay_fraction)
        if step < decay_start:
            return 1.0
        progress = (step - decay_start) / max(max_steps - decay_start, 1)
        return 1.0 - (1.0 - floor) * min(progress, 1.0)
    progress = min((step - warmup) / max(max_steps - warmup, 1), 1.0)
    if cfg.schedule == "linear":
        return 1.0 - (1.0 - floor) * progress
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))  # cosine


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: OptimConfig, max_steps: int):
    if cfg.warmup_steps >= max_steps:
        raise UserError(f"optim.warmup_steps={cfg.warmup_steps} must be smaller than train.max_steps={max_steps}")
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, cfg, max_steps))
