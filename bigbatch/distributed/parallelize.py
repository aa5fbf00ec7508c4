"""Functions that take a model and return it changed from outside; the model code stays unaware."""

from __future__ import annotations

import functools

from torch import nn
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
