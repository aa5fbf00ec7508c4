"""Optimisers and learning-rate schedules (all with linear warm-up)."""

from __future__ import annotations

import math

import torch
from torch import nn

from bigbatch.config import OptimConfig
from bigbatch.errors import UserError


def layer_depth(name: str, n_layers: int) -> int:
    """0 for embeddings, i + 1 for block i of a stack, n_layers + 1 for the rest (head, final norm)."""
    parts = [x for x in name.split(".") if x not in ("module", "_orig_mod", "core")]  # wrappers; audio's core
    if parts[0] in EMBEDDINGS:
        return 0
    if len(parts) > 2 and parts[1] == "blocks" and parts[2].isdigit():
        return int(parts[2]) + 1
    return n_layers + 1


EMBEDDINGS = ("embed", "patch", "pos", "cls", "stem")
"""First names of the input layers: token / position tables (text), patch embedding, positions, class token and
convolutional stem (vision, audio)."""


def param_groups(model: nn.Module, weight_decay: float, lr: float | None = None, layer_decay: float = 1.0) -> list[dict]:
    """Decay matrices and embeddings; leave biases and norm gains alone (tied tensors once). With ``layer_decay``
    < 1 each depth gets its own lr (optim.layer_lr_decay), the top first (the lr the loop logs is group 0's)."""
    names = [n for n, _ in model.named_parameters()]
    n_layers = max((d for d in (layer_depth(n, -1) for n in names) if d > 0), default=0)
    if layer_decay != 1.0 and not n_layers:
        raise UserError(f"optim.layer_lr_decay={layer_decay:g}: this model ({type(model).__name__}) has no "
                        "Transformer blocks to decay the learning rate over")
    groups, seen = ({(0, False): [], (0, True): []} if layer_decay == 1.0 else {}), set()  # two, as always before
    for name, p in model.named_parameters():
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        depth = layer_depth(name, n_layers) if layer_decay != 1.0 else 0
        groups.setdefault((-depth, p.dim() < 2), []).append(p)
    out = []
    for (neg_depth, no_decay), params in sorted(groups.items()):
        group = {"params": params, "weight_decay": 0.0 if no_decay else weight_decay}
        if layer_decay != 1.0 and lr is not None:
            group["lr"] = lr * layer_decay ** (n_layers + 1 + neg_depth)
        out.append(group)
    return out


class LAMB(torch.optim.Optimizer):
    """LAMB (You et al. 2019, "Large Batch Optimization for Deep Learning", Algorithm 2).

    Per tensor w with gradient g, at step t:
        m = β1 m + (1 − β1) g,  v = β2 v + (1 − β2) g²,  m̂ = m / (1 − β1ᵗ),  v̂ = v / (1 − β2ᵗ)
        u = m̂ / (√v̂ + ε) + λ w
        trust = ‖w‖ / ‖u‖   (1 where either norm is 0)
        w ← w − lr · trust · u
    Parameter groups choose λ (0 for biases and norms); global-norm clipping is the trainer's job.
    """

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-6,
                 weight_decay: float = 0.01):
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for w in group["params"]:
                if w.grad is None:
                    continue
                state = self.state[w]
                if not state:
                    state["step"] = 0
                    state["m"] = torch.zeros_like(w, memory_format=torch.preserve_format)
                    state["v"] = torch.zeros_like(w, memory_format=torch.preserve_format)
                state["step"] += 1
                t, m, v, g = state["step"], state["m"], state["v"], w.grad
                m.mul_(beta1).add_(g, alpha=1 - beta1)
                v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
                u = (m / (1 - beta1**t)) / ((v / (1 - beta2**t)).sqrt_().add_(group["eps"]))
                if group["weight_decay"]:
                    u.add_(w, alpha=group["weight_decay"])
                w_norm, u_norm = w.norm(), u.norm()
                trust = torch.where((w_norm > 0) & (u_norm > 0), w_norm / u_norm, torch.ones_like(w_norm))
                w.sub_(u * (group["lr"] * trust))
        return loss


def build_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.Optimizer:
    groups = param_groups(model, cfg.weight_decay, cfg.lr, cfg.layer_lr_decay)
    if cfg.name == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum)
    if cfg.name == "lamb":
        return LAMB(groups, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, weight_decay=cfg.weight_decay)
    try:  # one fused kernel per step where this torch and device have it
        return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, fused=True)
    except (RuntimeError, TypeError):
        return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, foreach=True)


def lr_factor(step: int, cfg: OptimConfig, max_steps: int | None = None, progress: float | None = None) -> float:
    """Multiplier of the peak learning rate at optimiser step ``step`` (0-based).

    ``progress`` is the fraction of the run done, in [0, 1]: of its steps, tokens or seconds, whichever limit
    is nearest (None = step / max_steps). Warm-up is ``warmup_steps`` steps, or (None) the first
    ``warmup_fraction`` of the progress; the decay of cosine / linear / wsd follows the progress, so a run
    bounded by time or tokens ends annealed whatever its speed.
    """
    if progress is None:
        progress = step / max_steps if max_steps else 0.0
    progress = min(max(progress, 0.0), 1.0)
    if cfg.warmup_steps is not None:
        warmup = cfg.warmup_steps
        if step < warmup:
            return (step + 1) / warmup
        warm_progress = warmup / max_steps if max_steps else 0.0
    else:
        warm_progress = cfg.warmup_fraction
        if progress < warm_progress:
            return max(progress / warm_progress, 0.01)
    if cfg.schedule == "constant":
        return 1.0
    if cfg.schedule == "inverse_sqrt":  # Vaswani et al.: peak at the end of warm-up, then 1/√step
        if cfg.warmup_steps is not None:
            return math.sqrt(max(cfg.warmup_steps, 1) / (step + 1))
        return math.sqrt(warm_progress / max(progress, warm_progress, 1e-9))
    floor = cfg.min_lr_ratio
    if cfg.schedule == "wsd":  # warm-up, stable, then a linear decay over the last decay_fraction
        decay_start = 1.0 - cfg.decay_fraction
        if progress < decay_start:
            return 1.0
        return 1.0 - (1.0 - floor) * min((progress - decay_start) / max(cfg.decay_fraction, 1e-9), 1.0)
    done = min((progress - warm_progress) / max(1.0 - warm_progress, 1e-9), 1.0)
    if cfg.schedule == "linear":
        return 1.0 - (1.0 - floor) * done
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * done))  # cosine (auto resolves to wsd)


class RunSchedule(torch.optim.lr_scheduler.LambdaLR):
    """LambdaLR whose factor also sees the run's ``progress`` (set by the loop before each ``step()``)."""

    def __init__(self, optimizer: torch.optim.Optimizer, cfg: OptimConfig, max_steps: int | None):
        self.progress = None if max_steps else 0.0
        self.batch_factor = 1.0  # ramp / adaptive batch: the scaling rule's multiplier for the current batch
        super().__init__(optimizer, lambda step: lr_factor(step, cfg, max_steps, self.progress) * self.batch_factor)


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: OptimConfig, max_steps: int | None) -> RunSchedule:
    if cfg.warmup_steps is not None and max_steps and cfg.warmup_steps >= max_steps:
        raise UserError(f"optim.warmup_steps={cfg.warmup_steps} must be smaller than train.max_steps={max_steps}")
    return RunSchedule(optimizer, cfg, max_steps)


def scale_for_batch(cfg: OptimConfig, global_batch: int) -> tuple[OptimConfig, str]:
    """Rescale lr and warm-up from ``cfg.reference_batch`` to ``global_batch`` (same units).

    lr: linear k·lr or square-root √k·lr with k = global / reference; warm-up steps: divided by k, so
    the warm-up covers the same number of examples. Values already scaled (base_lr set) are scaled
    again from their base, so a saved config resolves to itself. Returns the new config and a line
    describing what was done ("" when nothing was).
    """
    import dataclasses

    base_lr = cfg.base_lr or cfg.lr
    base_warmup = cfg.base_warmup_steps if cfg.base_warmup_steps is not None else cfg.warmup_steps
    if base_warmup is None:  # a fraction of the run: the same examples whatever the batch
        scaled = dataclasses.replace(cfg, warmup_steps=0, base_warmup_steps=0)
        out, note = scale_for_batch(scaled, global_batch)
        return dataclasses.replace(out, warmup_steps=None, base_warmup_steps=None), note.replace(", warm-up 0 -> 0 steps", "")
    rule = cfg.scale_rule if cfg.scale_rule != "auto" else ("linear" if cfg.name == "sgd" else "sqrt")
    if cfg.reference_batch is None or rule == "none":
        return dataclasses.replace(cfg, base_lr=base_lr, base_warmup_steps=base_warmup, lr=base_lr,
                                   warmup_steps=base_warmup), ""
    k = global_batch / cfg.reference_batch
    lr = base_lr * (k if rule == "linear" else math.sqrt(k))
    warmup = max(1, round(base_warmup / k)) if base_warmup else 0
    note = (f"{rule} scaling for global batch {global_batch:,} / reference {cfg.reference_batch:,} (k={k:g}): "
            f"lr {base_lr:g} -> {lr:g}, warm-up {base_warmup} -> {warmup} steps")
    return dataclasses.replace(cfg, base_lr=base_lr, base_warmup_steps=base_warmup, lr=lr, warmup_steps=warmup), note
