"""Fitting the micro-batch in memory: a worst-case probe at start-up, and micro_batch_size: auto.

The probe runs one forward and backward at the largest shape training will ever see (the longest
bucket at the full micro-batch), so an out-of-memory happens in the first seconds, not hours in.
"""

from __future__ import annotations

import os

import torch

from bigbatch.config import Config
from bigbatch.errors import UserError
from bigbatch.tasks import get_task


def check_model_fits(cfg: Config, device, world_size: int = 1) -> None:
    """Refuse, before allocating anything, a model whose weights, gradients and AdamW state (16 bytes a
    parameter; FSDP divides them over the ranks) exceed the memory this device has free: counted on
    torch's meta device, so a typo like d_ff=100000000 is one line, not a machine brought down."""
    from bigbatch.nn.models import build_model, count_parameters

    try:
        with torch.device("meta"):
            n = count_parameters(build_model(cfg.task, cfg.model))
    except (RuntimeError, OverflowError) as e:  # sizes past what a tensor can hold
        raise UserError(f"the model cannot be built at this size ({str(e).splitlines()[0][:200]}); lower "
                        "model.d_model, n_layers, d_ff or vocab_size") from None
    except ValueError as e:  # a shape the model refuses (a patch that does not divide the image, ...)
        raise UserError(f"the model cannot be built: {str(e).splitlines()[0][:300]}") from None
    need = 16 * n / (world_size if cfg.train.parallel == "fsdp" else 1)
    if device.type == "cuda":
        free = torch.cuda.mem_get_info(device)[0]
    else:
        free = _available_ram()
    if free and need > free:
        raise UserError(f"the model has {n / 1e6:,.1f}M parameters: its weights, gradients and optimizer state "
                        f"need about {need / 2**30:,.1f} GiB, more than the {free / 2**30:,.1f} GiB free on {device}; "
                        "lower model.d_model, n_layers, d_ff or vocab_size")


def _available_ram() -> int | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def worst_case_batch(cfg: Config, rows: int, device) -> dict:
    """A synthetic batch of ``rows`` examples at the longest length of the task."""
    return get_task(cfg.task).worst_case_batch(cfg, rows, device)


def probe(model, cfg: Config, rows: int, device, precision) -> None:
    """One forward/backward at the worst-case shape; gradients and RNG state are left as they were."""
    batch = worst_case_batch(cfg, rows, device)
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        with precision.autocast():
            loss_sum, n, _ = get_task(cfg.task).objective(model, batch)
        (loss_sum / n).backward()
    model.zero_grad(set_to_none=True)


def rows_per_micro_batch(cfg: Config, micro: int) -> int:
    """Examples in the largest micro-batch: micro rows, or a token budget over the longest length."""
    if cfg.task == "lm" or not cfg.train.micro_batch_tokens:
        return micro
    return max(1, micro // (cfg.model.max_len + 1))


def activation_bytes_per_example(cfg: Config) -> float:
    """Activations kept for backward, per example at the longest length (Korthikanti et al. 2022:
    about T·d·(34 + 5·h·T/d) bytes per layer at 16 bits), doubled for fp32, plus the logits."""
    m = cfg.model
    task = get_task(cfg.task)
    T, layers = task.context_len(cfg), task.activation_layers(m)
    scale = 2.0 if cfg.train.precision == "fp32" else 1.0
    per_layer = T * m.d_model * (34 + 5 * m.n_heads * T / m.d_model) * scale
    logits = 3 * T * m.vocab_size * 4 if task.output_vocab else 0
    return layers * per_layer + logits


def auto_micro_batch(model, cfg: Config, global_rows: int, device, precision) -> int:
    """The largest divisor of the global batch whose worst case fits: on CUDA by trying it (halving on
    out-of-memory), on CPU by estimate against train.memory_budget_gb (default: half the free RAM)."""
    divisors = [d for d in range(global_rows, 0, -1) if global_rows % d == 0]
    if device.type == "cuda":
        for rows in divisors:
            try:
                probe(model, cfg, rows, device, precision)
                return rows
            except torch.cuda.OutOfMemoryError:
                model.zero_grad(set_to_none=True)
                torch.cuda.empty_cache()
        raise UserError("not even one example fits in GPU memory at the longest length; shorten data.seq_len / model.max_len")
    budget = (cfg.train.memory_budget_gb or _free_ram_gb() / 2) * 1e9
    per_example = activation_bytes_per_example(cfg)
    for rows in divisors:
        if rows * per_example <= budget:
            return rows
    return 1


def _free_ram_gb() -> float:
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / 1e9
    except (ValueError, OSError):
        return 8.0
