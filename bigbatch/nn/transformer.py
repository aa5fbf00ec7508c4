"""Transformer stacks: Encoder (bidirectional) and Decoder (causal, optional cross-attention)."""

from __future__ import annotations

from functools import partial

from torch import Tensor, nn

from bigbatch.config import ModelConfig
from bigbatch.nn.attention import KVCache, causal_mask
from bigbatch.nn.layers import NORMS, Block, RotaryEmbedding


def norm_class(cfg: ModelConfig):
    """The norm layer of model.norm, with model.norm_eps where it is set."""
    return NORMS[cfg.norm] if cfg.norm_eps is None else partial(NORMS[cfg.norm], eps=cfg.norm_eps)


class DecodeCache:
    """Everything a decoder reuses between generation steps.

    layers: one KVCache per block (self-attention keys/values so far);
    memory_kv: per block, the cross-attention keys/values of the encoder output (seq2seq);
    memory_mask: (B, 1, 1, S) source padding mask, True = attend.
    """

    def __init__(self, layers: list[KVCache], memory_kv=None, memory_mask: Tensor | None = None):
        self.layers, self.memory_kv, self.memory_mask = layers, memory_kv, memory_mask

    @property
    def length(self) -> int:
        return self.layers[0].length

    def reorder(self, index: Tensor) -> None:
        """Keep batch rows ``index`` (B',): beam search moves hypotheses between beams."""
        for layer in self.layers:
            layer.reorder(index)
        if self.memory_kv is not None:
            self.memory_kv = [(k.index_select(0, index), v.index_select(0, index)) for k, v in self.memory_kv]
        if self.memory_mask is not None:
            self.memory_mask = self.memory_mask.index_select(0, index)


class Stack(nn.Module):
    """n Blocks and a final norm (pre-norm only). Causal stacks attend left-to-right."""

    causal = False

    def __init__(self, cfg: ModelConfig, n_layers: int, cross_attention: bool = False):
        super().__init__()
        norm_layer = norm_class(cfg)
        d_ff = cfg.d_ff or 4 * cfg.d_model
        self.blocks = nn.ModuleList(
            Block(cfg.d_model, cfg.n_heads, d_ff, cfg.dropout, norm_layer, cfg.norm_first,
                  cross_attention, cfg.activation, cfg.bias)
            for _ in range(n_layers)
        )
        self.norm = norm_layer(cfg.d_model) if cfg.norm_first else nn.Identity()
        self.rope = RotaryEmbedding(cfg.d_model // cfg.n_heads, cfg.max_len) if cfg.pos == "rope" else None
        self.n_heads, self.head_dim = cfg.n_heads, cfg.d_model // cfg.n_heads

    def forward(
        self,
        x: Tensor,
        key_mask: Tensor | None = None,
        memory: Tensor | None = None,
        memory_mask: Tensor | None = None,
        cache: DecodeCache | None = None,
    ) -> Tensor:
        """x (B, L, D) -> (B, L, D).

        key_mask (B, S) True/1 = real token, covering cached positions too (S = past + L), or a full
        (B, 1, L, S) boolean mask (e.g. causal within documents);
        memory (B, S_src, D) and memory_mask (B, S_src) for cross-attention.
        """
        L = x.size(1)
        past = cache.length if cache is not None else 0
        attn_mask, is_causal = None, self.causal
        if key_mask is not None and key_mask.dim() == 4:  # a full (B, 1, L, S) mask, causality included
            attn_mask, is_causal = key_mask.bool(), False
        elif key_mask is not None:
            attn_mask = key_mask.bool()[:, None, None, :]  # (B, 1, 1, S)
            if self.causal:  # one combined boolean mask keeps torch's fused kernel usable
                attn_mask = attn_mask & causal_mask(L, past + L, x.device)
                is_causal = False
        if memory_mask is not None:
            memory_mask = memory_mask.bool()[:, None, None, :]
        if cache is not None and cache.memory_mask is not None:
            memory_mask = cache.memory_mask
        for i, block in enumerate(self.blocks):
            x = block(
                x, attn_mask, is_causal, self.rope,
                cache=cache.layers[i] if cache is not None else None,
                memory=memory, memory_mask=memory_mask,
                memory_kv=cache.memory_kv[i] if cache is not None and cache.memory_kv is not None else None,
            )
        return self.norm(x)

    @property
    def norm_dtype(self):
        """The dtype the stack computes in (its norms' parameters: float also when its linear layers are int8)."""
        return next(p for p in self.parameters() if p.is_floating_point()).dtype

    def new_cache(self, batch: int, max_len: int, dtype, device, memory: Tensor | None = None,
                  memory_mask: Tensor | None = None) -> DecodeCache:
        """An empty cache for ``batch`` sequences of up to ``max_len`` tokens (+ encoder output)."""
        layers = [KVCache(batch, b.attn.n_heads, max_len, self.head_dim, dtype, device) for b in self.blocks]
        memory_kv = None
        if memory is not None:
            memory_kv = [block.cross_attn.project_memory(memory) for block in self.blocks]
        if memory_mask is not None:
            memory_mask = memory_mask.bool()[:, None, None, :]
        return DecodeCache(layers, memory_kv, memory_mask)


class Encoder(Stack):
    """Bidirectional stack: every position attends to every non-pad position."""

    causal = False


class Decoder(Stack):
    """Causal stack; with ``cross_attention`` each block also attends to an encoder's output."""

    causal = True
