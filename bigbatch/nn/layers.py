"""Building blocks shared by every model: feed-forward, the Transformer Block, positions."""

from __future__ import annotations

import math
from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bigbatch.nn.attention import KVCache, MultiHeadAttention, linear_columns, linear_rows

ACTIVATIONS = {
    "gelu": F.gelu,
    "gelu_tanh": partial(F.gelu, approximate="tanh"),
    "relu": F.relu,
    "silu": F.silu,
}
NORMS = {"layernorm": nn.LayerNorm, "rmsnorm": nn.RMSNorm}
_INT16_STATES = 1 << 16


def dropout(x: Tensor, p: float, training: bool = True) -> Tensor:
    """Inverted dropout: zero each element with probability ``p``, scale the rest by 1 / (1 - p).

    On CUDA this is ``F.dropout``. On CPU torch's Bernoulli sampler draws one random number per element
    and took 27% of a 128-wide translator's training step (as long as all its matrix multiplies); here
    one 64-bit draw gives four 16-bit uniforms, ~4x faster, with p rounded to a multiple of 1/65536
    (0.1 -> 0.100006) and the scale computed from that rounded p, so the expectation is kept exactly.
    """
    if not training or p == 0.0:
        return x
    cut = round(p * _INT16_STATES)  # drop the `cut` smallest of the 65536 int16 values
    if x.device.type != "cpu" or not 0 < cut < _INT16_STATES:  # other devices; p within 1/131072 of 0 or 1
        return F.dropout(x, p, training)
    words = -(-x.numel() // 4)
    bits = torch.randint(-(1 << 63), (1 << 63) - 1, (words,), dtype=torch.int64, device=x.device)
    keep = bits.view(torch.int16)[: x.numel()].view(x.shape) >= cut - (1 << 15)
    return x * (keep * (_INT16_STATES / (_INT16_STATES - cut))).to(x.dtype)


class Dropout(nn.Module):
    """``nn.Dropout`` with the fast CPU sampler of :func:`dropout`."""

    def __init__(self, p: float = 0.0):
        super().__init__()
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"dropout probability must be in [0, 1], got {p}")
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        return dropout(x, self.p, self.training)

    def extra_repr(self) -> str:
        return f"p={self.p}"


class FeedForward(nn.Module):
    """Position-wise MLP: fc2(act(fc1(x))), d_model -> d_ff -> d_model."""

    def __init__(self, d_model: int, d_ff: int, activation: str = "gelu", dropout: float = 0.0, bias: bool = True):
        super().__init__()
        self.fc1 = nn.Linear(d_model, d_ff, bias=bias)
        self.fc2 = nn.Linear(d_ff, d_model, bias=bias)
        self.act = ACTIVATIONS[activation]
        self.dropout = Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.dropout(self.act(self.fc1(x))))

    def keep_neurons(self, neurons) -> None:
        """Keep only the hidden units ``neurons`` (indices), physically (structured pruning)."""
        neurons = torch.as_tensor(list(neurons), dtype=torch.long)
        self.fc1, self.fc2 = linear_rows(self.fc1, neurons), linear_columns(self.fc2, neurons)


class Block(nn.Module):
    """One Transformer layer: self-attention, optional cross-attention, feed-forward.

    Each sub-layer is a residual branch ``x + dropout(f(x))``; ``norm_first`` puts the norm
    on the branch input (pre-norm) or after the sum (post-norm, Vaswani et al. 2017).
    """

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        d_ff: int,
        dropout: float = 0.0,
        norm_layer: type[nn.Module] = nn.LayerNorm,
        norm_first: bool = True,
        cross_attention: bool = False,
        activation: str = "gelu",
        bias: bool = True,
    ):
        super().__init__()
        self.norm_first = norm_first
        self.attn = MultiHeadAttention(d_model, n_heads, dropout, bias)
        self.norm_attn = norm_layer(d_model)
        if cross_attention:
            self.cross_attn = MultiHeadAttention(d_model, n_heads, dropout, bias, cross=True)
            self.norm_cross = norm_layer(d_model)
        self.mlp = FeedForward(d_model, d_ff, activation, dropout, bias)
        self.norm_mlp = norm_layer(d_model)
        self.dropout = Dropout(dropout)

    def _residual(self, x: Tensor, norm: nn.Module, f) -> Tensor:
        if self.norm_first:
            return x + self.dropout(f(norm(x)))
        return norm(x + self.dropout(f(x)))

    def forward(
        self,
        x: Tensor,
        attn_mask: Tensor | None = None,
        is_causal: bool = False,
        rope: "RotaryEmbedding | None" = None,
        cache: KVCache | None = None,
        memory: Tensor | None = None,
        memory_mask: Tensor | None = None,
        memory_kv: tuple[Tensor, Tensor] | None = None,
    ) -> Tensor:
        """x (B, L, D) -> (B, L, D). Masks broadcast to (B, H, L, S), True = attend."""
        x = self._residual(x, self.norm_attn, lambda h: self.attn(h, attn_mask=attn_mask, is_causal=is_causal, rope=rope, cache=cache))
        if memory is not None or memory_kv is not None:
            x = self._residual(x, self.norm_cross, lambda h: self.cross_attn(h, memory, memory_mask, memory_kv=memory_kv))
        return self._residual(x, self.norm_mlp, self.mlp)


def sinusoids(max_len: int, d_model: int) -> Tensor:
    """The fixed table of Vaswani et al.: PE[p, 2i] = sin(p / 10000^(2i/d)), PE[p, 2i+1] = cos(...)."""
    position = torch.arange(max_len, dtype=torch.float64)[:, None]
    freq = torch.exp(torch.arange(0, d_model, 2, dtype=torch.float64) * (-math.log(10000.0) / d_model))
    table = torch.zeros(max_len, d_model, dtype=torch.float64)
    table[:, 0::2] = torch.sin(position * freq)
    table[:, 1::2] = torch.cos(position * freq)[:, : d_model // 2]
    return table.float()


class RotaryEmbedding(nn.Module):
    """Rotary position embedding (Su et al. 2021), the rotate-half form of GPT-NeoX and Llama."""

    def __init__(self, head_dim: int, max_len: int, base: float = 10000.0):
        super().__init__()
        inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim))
        angles = torch.arange(max_len, dtype=torch.float64)[:, None] * inv_freq  # (T, head_dim/2)
        angles = torch.cat([angles, angles], dim=-1)
        self.register_buffer("cos", angles.cos().float(), persistent=False)
        self.register_buffer("sin", angles.sin().float(), persistent=False)

    def forward(self, x: Tensor, offset: int = 0) -> Tensor:
        """x (B, H, L, head_dim) at positions offset..offset+L-1 -> rotated, same shape."""
        L = x.size(-2)
        if offset + L > self.cos.size(0):
            raise ValueError(f"position {offset + L} is beyond max_len={self.cos.size(0)}")
        cos = self.cos[offset : offset + L].to(x.dtype)
        sin = self.sin[offset : offset + L].to(x.dtype)
        half = x.size(-1) // 2
        rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
        return x * cos + rotated * sin


class Embedding(nn.Module):
    """Token embedding plus absolute positions (sinusoidal or learned; none for rope).

    With sinusoids the token embedding is scaled by √d_model, as in the original Transformer,
    so the two have comparable size. ``n_types`` adds a token-type table (BERT's segment embedding) whose
    type-0 row is added at every position (bigbatch feeds single segments); ``norm`` normalises the sum
    before dropout (BERT's embedding LayerNorm). ``sinusoid_layout`` "split" puts all sines before all
    cosines (Marian / fairseq) instead of interleaving them.
    """

    def __init__(self, vocab_size: int, d_model: int, max_len: int, pos: str, dropout: float = 0.0,
                 n_types: int = 0, norm: nn.Module | None = None, sinusoid_layout: str = "interleaved"):
        super().__init__()
        self.tok = nn.Embedding(vocab_size, d_model)
        self.pos_kind = pos
        self.scale = math.sqrt(d_model) if pos == "sinusoidal" else 1.0
        self.max_len = max_len
        if pos == "learned":
            self.pos = nn.Embedding(max_len, d_model)
        elif pos == "sinusoidal":
            table = sinusoids(max_len, d_model)
            if sinusoid_layout == "split":
                table = torch.cat([table[:, 0::2], table[:, 1::2]], dim=1)
            self.register_buffer("pos_table", table, persistent=False)
        self.n_types = n_types
        if n_types:
            self.types = nn.Embedding(n_types, d_model)
        self.norm = norm
        self.dropout = Dropout(dropout)

    def forward(self, ids: Tensor, offset: int = 0) -> Tensor:
        """ids (B, L) at positions offset.. -> (B, L, D)."""
        L = ids.size(1)
        if offset + L > self.max_len:
            raise ValueError(f"sequence of {offset + L} tokens is longer than model.max_len={self.max_len}")
        x = self.tok(ids)
        if self.scale != 1.0:
            x = x * self.scale
        if self.pos_kind == "learned":
            x = x + self.pos.weight[offset : offset + L]
        elif self.pos_kind == "sinusoidal":
            x = x + self.pos_table[offset : offset + L]
        if self.n_types:
            x = x + self.types.weight[0]
        if self.norm is not None:
            x = self.norm(x)
        return self.dropout(x)
