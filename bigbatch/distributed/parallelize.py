"""Functions that take a model and return it changed from outside; the model code stays unaware."""

from __future__ import annotations

import contextlib
import functools

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.checkpoint import checkpoint

from bigbatch.nn.layers import Block


def apply_ac(model: nn.Module) -> nn.Module:
    """Activation checkpointing per Block: keep only block inputs, recompute inside in backward.

    The forward of each block instance is replaced, so parameter names do not change.
    """
    for block in model.modules():
        if isinstance(block, Block):
            block.forward = functools.partial(checkpoint, block.forward, use_reentrant=False)
    return model


def apply_compile(model: nn.Module) -> nn.Module:
    """Compile each Block with torch.compile (same code per block: compiled once, reused)."""
    for block in model.modules():
        if isinstance(block, Block):
            block.compile()
    return model


class _LocalGradNorm:
    """DDP communication hook state: Σ‖local gradient‖² of this rank, taken from each bucket just
    before it is all-reduced (the per-rank gradient the noise scale needs costs no extra pass)."""

    def __init__(self, device: torch.device):
        self.sq = torch.zeros((), dtype=torch.float64, device=device)

    def take(self) -> torch.Tensor:
        sq, self.sq = self.sq, torch.zeros_like(self.sq)
        return sq


def _sum_and_measure(state, bucket):  # no annotations: DDP checks them and they are strings here
    buffer = bucket.buffer()
    state.sq += buffer.detach().double().square().sum()
    # summed, not averaged: the loss is already divided by the global target count
    return dist.all_reduce(buffer, async_op=True).get_future().then(lambda fut: fut.value()[0])


def apply_ddp(model: nn.Module, device: torch.device) -> nn.Module:
    """DistributedDataParallel whose gradients are summed over ranks. ``model.local_grad_norm.take()``
    returns Σ‖g_rank‖² of the last synchronised backward."""
    device_ids = [device.index] if device.type == "cuda" else None
    try:  # the buffers (rotary / sinusoid tables) are constants: no broadcast before every forward
        ddp = DistributedDataParallel(model, device_ids=device_ids, forward_sync_buffers=False)
    except TypeError:  # torch before forward_sync_buffers
        ddp = DistributedDataParallel(model, device_ids=device_ids, broadcast_buffers=False)
    ddp.local_grad_norm = _LocalGradNorm(device)
    ddp.register_comm_hook(ddp.local_grad_norm, _sum_and_measure)
    return ddp


def apply_fsdp(model: nn.Module, precision: str, reshard_after_forward: bool = True) -> nn.Module:
    """FSDP2: fully_shard each Block, then the root (embeddings, final norm, head: tied weights stay
    together there). bf16 computes in bf16 and reduces gradients in fp32. Gradients are summed over
    ranks, as under DDP. ``reshard_after_forward`` False keeps each block's parameters gathered from
    its forward to its backward (one all-gather per micro-batch instead of two)."""
    try:
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
    except ImportError:  # torch < 2.6
        from torch.distributed._composable.fsdp import MixedPrecisionPolicy, fully_shard
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    policy = MixedPrecisionPolicy(param_dtype=dtype, reduce_dtype=torch.float32 if dtype else None)
    for block in model.modules():
        if isinstance(block, Block):
            fully_shard(block, mp_policy=policy, reshard_after_forward=reshard_after_forward)
    fully_shard(model, mp_policy=policy)
    for module in model.modules():
        if hasattr(module, "set_requires_gradient_sync"):  # each sharded unit: sum, plain SUM ops (gloo too)
            module.set_gradient_divide_factor(1.0)
            module.set_force_sum_reduction_for_comms(True)
    return model


def gradient_sync(model: nn.Module, enabled: bool):
    """A context for one backward: synchronise gradients across ranks only when ``enabled`` (the last
    micro-batch of an accumulation); the others accumulate locally."""
    if isinstance(model, DistributedDataParallel) and not enabled:
        return model.no_sync()
    if hasattr(model, "set_requires_gradient_sync"):  # FSDP2
        model.set_requires_gradient_sync(enabled)
    return contextlib.nullcontext()


def is_sharded(model: nn.Module) -> bool:
    return hasattr(model, "set_requires_gradient_sync")
