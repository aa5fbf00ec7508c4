"""int8 linear layers for inference: ``bigbatch compress quantize``.

Every ``nn.Linear`` of a model becomes an :class:`Int8Linear`: the weight stored as int8 with one float scale per
output row (symmetric, W ≈ q · scale, |q| <= 127), the bias kept in float. Two ways to compute with it:

* ``dynamic-int8``: activations are quantized on the fly and the product runs in int8 (fbgemm's
  ``quantized::linear_dynamic``, the kernel ``torch.ao.quantization.quantize_dynamic`` uses, called directly so
  no deprecated API and no pickled packed module is involved). CPU only; elsewhere it falls back to the
  weight-int8 path, and says so once.
* ``weight-int8``: the int8 weight is widened to the activation's dtype per call, then a float matmul: 4x smaller
  weights, the same speed as float (the storage form for GPUs, or for a model you ship rather than time).

What is saved is plain tensors (``qweight`` int8, ``scale`` float32, ``bias``) in model.safetensors, and the
config says which layers they are (model.quantized, model.int8_layers); loading builds the float model, swaps
those layers for empty Int8Linear modules and fills them, with no pickle anywhere. docs/compression.md has the
measurements behind the choice (torchao's eager int8 was slower than float here).
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

METHODS = ("dynamic-int8", "weight-int8")
_WARNED: set[str] = set()


class Int8Linear(nn.Module):
    """y = x Wᵀ + b with W = qweight · scale[:, None]; qweight (out, in) int8, scale (out,) float32."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, method: str = "dynamic-int8"):
        super().__init__()
        if method not in METHODS:
            raise ValueError(f"int8 method must be one of {', '.join(METHODS)}, got {method!r}")
        self.in_features, self.out_features, self.method = in_features, out_features, method
        self.register_buffer("qweight", torch.zeros(out_features, in_features, dtype=torch.int8))
        self.register_buffer("scale", torch.ones(out_features))
        self.register_buffer("bias", torch.zeros(out_features) if bias else None)
        self._packed = None  # fbgemm's prepacked weight, made on first use (and after a load)

    @classmethod
    def from_linear(cls, linear: nn.Linear, method: str) -> "Int8Linear":
        """Quantize a float layer: per output row, scale = max |w| / 127, q = round(w / scale)."""
        w = linear.weight.detach().float()
        new = cls(linear.in_features, linear.out_features, linear.bias is not None, method).to(w.device)
        scale = w.abs().amax(dim=1).clamp(min=1e-12) / 127.0
        new.qweight.copy_(torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8))
        new.scale.copy_(scale)
        if linear.bias is not None:
            new.bias.copy_(linear.bias.detach().float())
        return new

    def dequantized(self, dtype=torch.float32) -> Tensor:
        return self.qweight.to(dtype) * self.scale.to(dtype)[:, None]

    def _load_from_state_dict(self, *args, **kwargs):
        self._packed = None
        super()._load_from_state_dict(*args, **kwargs)

    def _apply(self, fn, recurse=True):  # .to(device) / .half(): the packed copy is stale
        self._packed = None
        return super()._apply(fn, recurse)

    def _fbgemm(self):
        if self._packed is None:
            with warnings.catch_warnings():  # "quantized tensor creation functions ... are deprecated"
                warnings.simplefilter("ignore")
                zero = torch.zeros(self.out_features, dtype=torch.long)
                q = torch._make_per_channel_quantized_tensor(self.qweight, self.scale.double(), zero, 0)
                self._packed = torch.ops.quantized.linear_prepack(q, self.bias)
        return self._packed

    def forward(self, x: Tensor) -> Tensor:
        if self.method == "dynamic-int8":
            if x.device.type == "cpu" and x.dtype == torch.float32 and not torch.is_grad_enabled():
                # reduce_range: 7-bit activations, as fbgemm needs on x86 to keep its int16 sums from saturating
                return torch.ops.quantized.linear_dynamic(x, self._fbgemm(), True)
            if "dynamic" not in _WARNED:
                _WARNED.add("dynamic")
                print(f"note: dynamic-int8 layers run int8 on the CPU in float32 inference only; here ({x.device}, "
                      f"{x.dtype}, gradients {'on' if torch.is_grad_enabled() else 'off'}) they widen their int8 "
                      "weights to float", file=sys.stderr)
        return F.linear(x, self.dequantized(x.dtype), None if self.bias is None else self.bias.to(x.dtype))

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, method={self.method}"


def linear_layers(model: nn.Module) -> list[str]:
    """Names of the model's nn.Linear modules, in module order."""
    return [name for name, m in model.named_modules() if isinstance(m, nn.Linear)]


def _swap(model: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, new)


def quantize_model(model: nn.Module, method: str, layers: list[str] | None = None) -> list[str]:
    """Replace ``layers`` (default: every nn.Linear) by Int8Linear quantized from their weights, in place;
    returns the names replaced."""
    names = linear_layers(model) if layers is None else layers
    names = [n for n in names if model.get_submodule(n).weight.numel() > 0]  # a pruned-away layer stays empty
    for name in names:
        _swap(model, name, Int8Linear.from_linear(model.get_submodule(name), method))
    return names


def int8_skeleton(model: nn.Module, method: str, layers: list[str]) -> None:
    """Give ``model`` empty Int8Linear modules at ``layers`` (the shapes a quantized checkpoint holds), in place,
    so its model.safetensors loads; a name that is not a Linear of this model raises ValueError."""
    for name in layers:
        try:
            old = model.get_submodule(name)
        except AttributeError:
            old = None
        if not isinstance(old, nn.Linear):
            raise ValueError(f"model.int8_layers names {name!r}, which is not a linear layer of this model")
        _swap(model, name, Int8Linear(old.in_features, old.out_features, old.bias is not None, method))


def linear_weight_bytes(model: nn.Module) -> int:
    """Bytes the weights (and scales, biases) of the linear layers take, shared tensors counted once."""
    seen, total = set(), 0
    for m in model.modules():
        if isinstance(m, (nn.Linear, Int8Linear)):
            for t in (*m.parameters(recurse=False), *m.buffers(recurse=False)):
                if id(t) not in seen:
                    seen.add(id(t))
                    total += t.numel() * t.element_size()
    return total


def quantize_run(run: str | Path, out: str | Path, method: str = "dynamic-int8", measure: bool = True,
                 eval_examples: int | None = 2000) -> dict:
    """``bigbatch compress quantize``: the run's best checkpoint with every linear layer int8, as the run
    directory ``out``; with ``measure`` the size / latency / metric of both are printed and returned."""
    import dataclasses
    import json

    from bigbatch import load
    from bigbatch.compress.measure import measure_run, print_comparison
    from bigbatch.errors import UserError
    from bigbatch.train.checkpoint import (checkpoint_asset_files, resolve_checkpoint, write_text_atomic,
                                           write_weights_run)

    if method not in METHODS:
        raise UserError(f"--method {method}: expected one of {', '.join(METHODS)}")
    if eval_examples is not None and eval_examples < 1:
        raise UserError(f"--eval-examples {eval_examples}: expected a number of examples >= 1")
    if Path(out).exists() and (not Path(out).is_dir() or any(Path(out).iterdir())):
        raise UserError(f"--out {out}: already exists and is not empty; give a new directory (nothing is overwritten)")
    ckpt = resolve_checkpoint(run)
    model, cfg = load(ckpt)
    if cfg.model.quantized:
        raise UserError(f"{run}: already quantized (model.quantized={cfg.model.quantized}); quantize the float run "
                        "it was made from")
    if cfg.model.arch != "transformer":
        raise UserError(f"{run}: model.arch={cfg.model.arch}; quantize handles the Transformer models")
    before = linear_weight_bytes(model)
    names = quantize_model(model, method)
    after = linear_weight_bytes(model)
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, quantized=method, int8_layers=names))
    summary = {"compressed_from": str(ckpt), "method": method, "int8_layers": len(names),
               "linear_bytes_before": before, "linear_bytes_after": after}
    write_weights_run(Path(out), model, cfg, checkpoint_asset_files(ckpt), summary)
    print(f"{out}: {len(names)} linear layers int8 ({method}); their weights {before / 1e6:.2f} MB -> "
          f"{after / 1e6:.2f} MB ({before / after:.2f}x smaller)", file=sys.stderr)
    if measure:
        rows = [measure_run(ckpt, max_examples=eval_examples), measure_run(out, max_examples=eval_examples)]
        print_comparison(rows, ["float", method])
        summary["measured"] = rows
        write_text_atomic(Path(out) / "summary.json", json.dumps(summary, indent=1))
    return summary
