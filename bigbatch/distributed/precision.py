"""Precision as one object: an autocast context factory and a gradient scaler (enabled for fp16 only),
so fp32, bf16 and fp16 share one code path in the loop."""

from __future__ import annotations

import contextlib

import torch

from bigbatch.errors import UserError

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


class Precision:
    def __init__(self, name: str, device: torch.device):
        if name == "fp16" and device.type != "cuda":
            raise UserError("train.precision=fp16 needs a CUDA device (gradient scaling); use bf16 or fp32 here")
        self.name, self.device = name, device
        self.scaler = torch.amp.GradScaler(device.type, enabled=(name == "fp16"))

    def autocast(self):
        if self.name in DTYPES:
            return torch.autocast(self.device.type, dtype=DTYPES[self.name])
        return contextlib.nullcontext()
