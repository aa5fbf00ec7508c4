"""Scaled dot-product attention and multi-head attention.

Attention is exactly softmax(Q Kᵀ / √d_k + mask) V. Two paths compute it:

* ``reference_attention`` writes the formula out in plain tensor operations
  (readable, differentiable, returns the weights when asked);
* ``torch.nn.functional.scaled_dot_product_attention`` is torch's fused kernel
  (flash / memory-efficient / math, picked by torch per device and dtype).

``scaled_dot_product_attention`` picks the fused kernel whenever it can give
the same answer, and the reference path otherwise (a boolean or additive mask
together with ``is_causal``, which torch's kernel refuses) or when the caller
forces it with ``attention_backend("reference")``.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

_BACKEND = "auto"


@contextlib.contextmanager
def attention_backend(name: str) -> Iterator[None]:
    """Force the attention path inside a ``with`` block: "auto", "fused" or "reference"."""
    global _BACKEND
    if name not in ("auto", "fused", "reference"):
        raise ValueError(f"attention backend must be auto, fused or reference, got {name!r}")
    previous, _BACKEND = _BACKEND, name
    try:
        yield
    finally:
        _BACKEND = previous


def causal_mask(query_len: int, key_len: int, device=None) -> Tensor:
    """Boolean (L, S) mask, True = attend, aligned to the bottom right.

    Query i (of L) sits at absolute position S - L + i and sees keys 0..S-L+i, which is
    what decoding with a key-value cache needs. For L == S it is the usual lower triangle.
    """
    return torch.ones(query_len, key_len, dtype=torch.bool, device=device).tril(key_len - query_len)


def reference_attention(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    attn_mask: Tensor | None = None,
    dropout_p: float = 0.0,
    is_causal: bool = False,
    scale: float | None = None,
    return_weights: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """softmax(Q Kᵀ · scale + mask) V written out; shapes as in ``scaled_dot_product_attention``.

    ``is_causal`` uses torch's convention (top-left aligned lower triangle). A query row
    whose keys are all masked gets zero weights (and a zero output), not NaN.
    """
    L, S = query.size(-2), key.size(-2)
    scale = 1.0 / math.sqrt(query.size(-1)) if scale is None else scale
    scores = (query @ key.transpose(-2, -1)) * scale  # (..., L, S)
    allowed = None
    if is_causal:
        allowed = torch.ones(L, S, dtype=torch.bool, device=query.device).tril()
    if attn_mask is not None:
        if attn_mask.dtype == torch.bool:
            allowed = attn_mask if allowed is None else allowed & attn_mask
        else:
            scores = scores + attn_mask
    if allowed is not None:
        scores = scores.masked_fill(~allowed, float("-inf"))
    weights = torch.softmax(scores, dim=-1)
    # a fully masked row is all -inf: softmax gives NaN there; define it as zero weights
    weights = torch.nan_to_num(weights, nan=0.0)
    if dropout_p > 0.0:
        weights = F.dropout(weights, p=dropout_p)
    out = weights @ value
    return (out, weights) if return_weights else out


def scaled_dot_product_attention(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    attn_mask: Tensor | None = None,
    dropout_p: float = 0.0,
    is_causal: bool = False,
    scale: float | None = None,
) -> Tensor:
    """softmax(Q Kᵀ / √d_k + mask) V.

    query (..., L, E), key (..., S, E), value (..., S, Ev) -> (..., L, Ev). ``attn_mask``
    broadcasts to (..., L, S): boolean (True = attend) or additive float. ``scale``
    defaults to 1/√E. Same semantics as torch.nn.functional.scaled_dot_product_attention,
    and additionally accepts a mask together with ``is_causal``.
    """
    use_reference = _BACKEND == "reference" or (
        _BACKEND == "auto" and is_causal and attn_mask is not None
    )
    if use_reference:
        return reference_attention(query, key, value, attn_mask, dropout_p, is_causal, scale)
    return F.scaled_dot_product_attention(
        query, key, value, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal, scale=scale
    )


class KVCache:
    """Keys and values of past positions for one attention layer, preallocated.

    k, v: (B, n_heads, max_len, head_dim); ``length`` positions are filled. ``update``
    writes new positions in place (no concatenation per step) and returns views of
    everything filled so far.
    """

    def __init__(self, batch: int, n_heads: int, max_len: int, head_dim: int, dtype, device):
        shape = (batch, n_heads, max_len, head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self.length = 0

    def update(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        start, end = self.length, self.length + k.size(2)
        if end > self.k.size(2):
            raise ValueError(f"key-value cache holds {self.k.size(2)} positions, asked for {end}")
        self.k[:, :, start:end] = k
        self.v[:, :, start:end] = v
        self.length = end
        return self.k[:, :, :end], self.v[:, :, :end]

    def reorder(self, index: Tensor) -> None:
        """Keep batch rows ``index`` (beam search): index (B',) into the batch dimension."""
        self.k = self.k.index_select(0, index)
        self.v = self.v.index_select(0, index)


class MultiHeadAttention(nn.Module):
    """Multi-head attention, self or cross, with an optional key-value cache.

    Self-attention uses torch.nn.MultiheadAttention's layout: ``in_proj`` maps d_model to [q; k; v]
    (3 · n_heads · head_dim) and ``out_proj`` maps back. Cross-attention (``cross=True``) has ``q_proj`` for the
    query and ``kv_proj`` for the keys/values of the memory, so each is one whole linear layer (quantizable, and
    the memory's keys/values are computed once per source). ``head_dim`` defaults to d_model / n_heads; a pruned
    layer keeps the head size with fewer heads (n_heads · head_dim < d_model), or none (the output is then
    out_proj's bias).
    """

    def __init__(self, d_model: int, n_heads: int, dropout: float = 0.0, bias: bool = True, cross: bool = False,
                 head_dim: int | None = None):
        super().__init__()
        if head_dim is None:
            if n_heads <= 0 or d_model % n_heads:
                raise ValueError(f"d_model={d_model} is not divisible by n_heads={n_heads}")
            head_dim = d_model // n_heads
        self.d_model, self.n_heads, self.head_dim, self.cross = d_model, n_heads, head_dim, cross
        self.dropout = dropout
        self.record = False  # True: each forward keeps its per-head weights (B, H, L, S) in .recorded
        self.recorded: Tensor | None = None
        inner = n_heads * head_dim
        if cross:
            self.q_proj = nn.Linear(d_model, inner, bias=bias)
            self.kv_proj = nn.Linear(d_model, 2 * inner, bias=bias)
            self._register_load_state_dict_pre_hook(_split_cross_in_proj)
        else:
            self.in_proj = nn.Linear(d_model, 3 * inner, bias=bias)
        self.out_proj = nn.Linear(inner, d_model, bias=bias)

    def _heads(self, t: Tensor, n: int) -> Tensor:
        # (B, L, n·H·D) -> n tensors (B, H, L, head_dim), views without copies
        B, L, _ = t.shape
        return t.view(B, L, n, self.n_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)

    def project_memory(self, memory: Tensor) -> tuple[Tensor, Tensor]:
        """Keys and values of the encoder output, (B, H, S, head_dim) each; computed once per source."""
        return self._heads(self.kv_proj(memory), 2)

    def keep_heads(self, heads) -> None:
        """Keep only the heads ``heads`` (indices, in order), physically: the projections lose their rows
        and columns. ``keep_heads(range(n))`` just gives the layer n heads (the shape a pruned checkpoint has)."""
        heads = torch.as_tensor(list(heads), dtype=torch.long)
        dim = torch.arange(self.head_dim)
        rows = (heads[:, None] * self.head_dim + dim).reshape(-1)  # the kept heads' rows within q (or k, or v)
        inner = self.n_heads * self.head_dim
        if self.cross:
            self.q_proj = linear_rows(self.q_proj, rows)
            self.kv_proj = linear_rows(self.kv_proj, torch.cat([rows, rows + inner]))
        else:
            self.in_proj = linear_rows(self.in_proj, torch.cat([rows, rows + inner, rows + 2 * inner]))
        self.out_proj = linear_columns(self.out_proj, rows)
        self.n_heads = len(heads)

    def forward(
        self,
        x: Tensor,
        memory: Tensor | None = None,
        attn_mask: Tensor | None = None,
        is_causal: bool = False,
        rope=None,
        cache: KVCache | None = None,
        memory_kv: tuple[Tensor, Tensor] | None = None,
        need_weights: bool = False,
    ) -> Tensor | tuple[Tensor, Tensor]:
        """x (B, L, D); memory (B, S, D) for cross-attention -> (B, L, D).

        attn_mask broadcasts to (B, H, L, S), True = attend. ``cache`` (self-attention)
        appends this call's keys/values and attends over all cached positions;
        ``memory_kv`` gives precomputed cross-attention keys/values. With
        ``need_weights`` also returns the head-averaged weights (B, L, S).
        """
        B, L, D = x.shape
        if (memory is not None or memory_kv is not None) != self.cross:
            raise ValueError("a cross-attention layer (cross=True) needs memory, a self-attention layer takes none")
        if self.n_heads == 0:  # every head pruned: the branch adds out_proj's bias alone
            if cache is not None:
                cache.length += L
            out = self.out_proj(x.new_zeros(B, L, 0))
            return (out, x.new_zeros(B, L, memory.size(1) if memory is not None else L)) if need_weights else out
        if self.cross:
            (q,) = self._heads(self.q_proj(x), 1)
            k, v = memory_kv if memory_kv is not None else self.project_memory(memory)
        else:
            q, k, v = self._heads(self.in_proj(x), 3)
            past = cache.length if cache is not None else 0
            if rope is not None:
                q, k = rope(q, offset=past), rope(k, offset=past)
            if cache is not None:
                k, v = cache.update(k, v)
                if is_causal and past > 0:
                    is_causal = False
                    if L > 1:  # new queries sit after the cached ones: bottom-right causal mask
                        causal = causal_mask(L, k.size(2), x.device)
                        attn_mask = causal if attn_mask is None else attn_mask & causal
        dropout_p = self.dropout if self.training else 0.0
        if need_weights or self.record:  # the formula written out: its weights are the ones that were used
            out, weights = reference_attention(
                q, k, v, attn_mask, dropout_p, is_causal, return_weights=True
            )
            if self.record:
                self.recorded = weights.detach()
        else:
            out = scaled_dot_product_attention(q, k, v, attn_mask, dropout_p, is_causal)
        out = self.out_proj(out.transpose(1, 2).reshape(B, L, self.n_heads * self.head_dim))
        return (out, weights.mean(dim=1)) if need_weights else out


def _empty_linear(n_in: int, n_out: int, like: nn.Linear) -> nn.Linear:
    with warnings.catch_warnings():  # a layer pruned to nothing: "Initializing zero-element tensors is a no-op"
        warnings.simplefilter("ignore")
        return nn.Linear(n_in, n_out, bias=like.bias is not None, device=like.weight.device, dtype=like.weight.dtype)


def linear_rows(linear: nn.Linear, rows: Tensor) -> nn.Linear:
    """A new Linear with the output rows ``rows`` of ``linear`` (weights copied)."""
    new = _empty_linear(linear.in_features, len(rows), linear)
    with torch.no_grad():
        new.weight.copy_(linear.weight[rows])
        if linear.bias is not None:
            new.bias.copy_(linear.bias[rows])
    return new


def linear_columns(linear: nn.Linear, columns: Tensor) -> nn.Linear:
    """A new Linear reading only the inputs ``columns`` of ``linear`` (weights and bias copied)."""
    new = _empty_linear(len(columns), linear.out_features, linear)
    with torch.no_grad():
        new.weight.copy_(linear.weight[:, columns])
        if linear.bias is not None:
            new.bias.copy_(linear.bias)
    return new


def _split_cross_in_proj(state_dict, prefix, *args) -> None:
    """Checkpoints of earlier versions hold a cross-attention's fused ``in_proj``: split it into q / kv."""
    for kind in ("weight", "bias"):
        fused = state_dict.pop(f"{prefix}in_proj.{kind}", None)
        if fused is not None:
            inner = fused.size(0) // 3
            state_dict[f"{prefix}q_proj.{kind}"] = fused[:inner]
            state_dict[f"{prefix}kv_proj.{kind}"] = fused[inner:]
