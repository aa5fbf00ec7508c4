"""Task models built from one Block library: CausalLM, Seq2Seq, TextClassifier, ViT.

Each takes a ModelConfig and/or keyword overrides of its fields:
``CausalLM(vocab_size=258, d_model=128, n_heads=4, n_layers=2)``. ``forward`` returns
logits; losses live in bigbatch.objectives.
"""

from __future__ import annotations

import dataclasses
import math

import torch
from torch import Tensor, nn

from bigbatch.config import ModelConfig
from bigbatch.nn.attention import MultiHeadAttention
from bigbatch.nn.layers import Dropout, Embedding, sinusoids
from bigbatch.nn.transformer import DecodeCache, Decoder, Encoder


def _resolve(config: ModelConfig | None, overrides: dict, needs: tuple[str, ...]) -> ModelConfig:
    cfg = ModelConfig(**overrides) if config is None else dataclasses.replace(config, **overrides)
    # keys a config leaves to the trainer's resolution (train/defaults.py) take fixed values when a model
    # is built directly: d_model 256, 4 layers, d_model / 64 heads, 256 positions, no dropout
    fixed = {"d_model": 256, "n_layers": 4, "max_len": 256, "dropout": 0.0}
    cfg = dataclasses.replace(cfg, **{k: v for k, v in fixed.items() if getattr(cfg, k) is None})
    if cfg.n_heads is None:
        cfg = dataclasses.replace(cfg, n_heads=max(1, cfg.d_model // 64) if cfg.d_model % 64 == 0 else 1)
    for name in needs:
        if getattr(cfg, name) <= 0:
            raise ValueError(f"model.{name} must be set (> 0) to build this model")
    return cfg


def init_weights(model: nn.Module, n_layers: int) -> None:
    """GPT-2 initialisation: N(0, 0.02) matrices and embeddings, zero biases, and residual
    output projections scaled by 1/√(2·n_layers) so the residual stream keeps its size."""
    for name, p in model.named_parameters():
        if p.dim() >= 2:
            std = 0.02
            if name.endswith(("out_proj.weight", "fc2.weight")):
                std /= math.sqrt(2 * n_layers)
            nn.init.normal_(p, mean=0.0, std=std)
        elif name.endswith("bias"):
            nn.init.zeros_(p)


class CausalLM(nn.Module):
    """Decoder-only language model (GPT-style). input_ids (B, T) -> logits (B, T, V)."""

    def __init__(self, config: ModelConfig | None = None, **overrides):
        super().__init__()
        cfg = self.config = _resolve(config, overrides, ("vocab_size",))
        self.embed = Embedding(cfg.vocab_size, cfg.d_model, cfg.max_len, cfg.pos, cfg.dropout)
        self.decoder = Decoder(cfg, cfg.n_layers)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        init_weights(self, cfg.n_layers)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.embed.tok.weight

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None,
                cache: DecodeCache | None = None) -> Tensor:
        """input_ids (B, L); attention_mask (B, past + L), 1 = real token; cache for decoding."""
        offset = cache.length if cache is not None else 0
        h = self.decoder(self.embed(input_ids, offset), key_mask=attention_mask, cache=cache)
        return self.lm_head(h)

    def new_cache(self, batch: int, max_len: int) -> DecodeCache:
        p = self.lm_head.weight
        return self.decoder.new_cache(batch, min(max_len, self.config.max_len), p.dtype, p.device)


class Seq2Seq(nn.Module):
    """Encoder-decoder translator with shared source/target embeddings.

    src_ids (B, S), tgt_ids (B, T) -> logits (B, T, V). Source padding is masked with
    ``src_mask`` (B, S), or from ``config.pad_id``; targets are right-padded.
    """

    def __init__(self, config: ModelConfig | None = None, **overrides):
        super().__init__()
        cfg = self.config = _resolve(config, overrides, ("vocab_size",))
        self.embed = Embedding(cfg.vocab_size, cfg.d_model, cfg.max_len, cfg.pos, cfg.dropout)
        self.encoder = Encoder(cfg, cfg.n_encoder_layers or cfg.n_layers)
        self.decoder = Decoder(cfg, cfg.n_decoder_layers or cfg.n_layers, cross_attention=True)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        init_weights(self, max(len(self.encoder.blocks), len(self.decoder.blocks)))
        if cfg.tie_embeddings:
            self.lm_head.weight = self.embed.tok.weight

    def source_mask(self, src_ids: Tensor, src_mask: Tensor | None) -> Tensor | None:
        if src_mask is None and self.config.pad_id is not None:
            src_mask = src_ids != self.config.pad_id
        return src_mask

    def encode(self, src_ids: Tensor, src_mask: Tensor | None = None) -> Tensor:
        """src_ids (B, S) -> memory (B, S, D)."""
        return self.encoder(self.embed(src_ids), key_mask=self.source_mask(src_ids, src_mask))

    def decode(self, tgt_ids: Tensor, memory: Tensor | None = None, src_mask: Tensor | None = None,
               cache: DecodeCache | None = None) -> Tensor:
        """tgt_ids (B, T) -> logits (B, T, V), attending to memory (or the cache's copy of it)."""
        offset = cache.length if cache is not None else 0
        h = self.decoder(self.embed(tgt_ids, offset), memory=None if cache is not None else memory,
                         memory_mask=src_mask, cache=cache)
        return self.lm_head(h)

    def forward(self, src_ids: Tensor, tgt_ids: Tensor, src_mask: Tensor | None = None) -> Tensor:
        src_mask = self.source_mask(src_ids, src_mask)
        return self.decode(tgt_ids, self.encode(src_ids, src_mask), src_mask)

    def new_cache(self, memory: Tensor, src_mask: Tensor | None, max_len: int) -> DecodeCache:
        p = self.lm_head.weight
        return self.decoder.new_cache(memory.size(0), min(max_len, self.config.max_len), p.dtype, p.device,
                                      memory=memory, memory_mask=src_mask)


class TextClassifier(nn.Module):
    """Encoder-only classifier (BERT-style). input_ids (B, T), attention_mask (B, T) -> logits (B, C)."""

    def __init__(self, config: ModelConfig | None = None, **overrides):
        super().__init__()
        cfg = self.config = _resolve(config, overrides, ("vocab_size", "num_classes"))
        self.embed = Embedding(cfg.vocab_size, cfg.d_model, cfg.max_len, cfg.pos, cfg.dropout)
        self.encoder = Encoder(cfg, cfg.n_layers)
        self.head = nn.Linear(cfg.d_model, cfg.num_classes)
        init_weights(self, cfg.n_layers)

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        if attention_mask is None and self.config.pad_id is not None:
            attention_mask = input_ids != self.config.pad_id
        h = self.encoder(self.embed(input_ids), key_mask=attention_mask)  # (B, T, D)
        if self.config.pool == "cls":
            pooled = h[:, 0]
        elif attention_mask is None:
            pooled = h.mean(dim=1)
        else:
            m = attention_mask.to(h.dtype).unsqueeze(-1)  # (B, T, 1)
            pooled = (h * m).sum(dim=1) / m.sum(dim=1).clamp(min=1.0)
        return self.head(pooled)


def default_patch(image_size: int) -> int:
    """The divisor of ``image_size`` nearest image_size / 7 (a grid of about 7 x 7 patches), at least 2 pixels
    where the image allows: 28 -> 4, 32 -> 4, 8 -> 2, 224 -> 32. On 8x8 digits 2-pixel patches learned
    faster and better than single pixels (0.83 vs 0.78 test accuracy at 300 steps, 4x faster steps)."""
    divisors = [p for p in range(2, image_size + 1) if image_size % p == 0] or [1]
    return min(divisors, key=lambda p: (abs(p - image_size / 7), p))


class ViT(nn.Module):
    """Vision Transformer (Dosovitskiy et al. 2021): the image cut into patch_size x patch_size patches, each
    flattened and projected to d_model (a linear patch embedding, the same as a stride-patch convolution),
    positions added, the existing Encoder, then mean pooling over the patches (or a class token, pool=cls)
    and a linear head.

    pixels (B, H, W, C) uint8 (0..255, as the loader gives them) or float in [0, 1] -> logits (B, num_classes).
    Pixels are mapped to [-1, 1] inside the model, so a checkpoint needs no separate preprocessing.
    """

    def __init__(self, config: ModelConfig | None = None, **overrides):
        super().__init__()
        cfg = _resolve(config, overrides, ("num_classes", "image_size"))
        p = cfg.patch_size or default_patch(cfg.image_size)
        if cfg.image_size % p:
            raise ValueError(f"model.patch_size={p} does not divide model.image_size={cfg.image_size}")
        channels = cfg.channels or 1
        self.grid, self.patch_size, self.channels = cfg.image_size // p, p, channels
        self.n_tokens = self.grid**2 + (cfg.pool == "cls")
        if cfg.max_len < self.n_tokens:  # the encoder's rotary table (pos=rope) covers every patch
            cfg = dataclasses.replace(cfg, max_len=self.n_tokens)
        self.config = dataclasses.replace(cfg, patch_size=p, channels=channels)
        self.patch = nn.Linear(p * p * channels, cfg.d_model)
        self.cls = nn.Parameter(torch.zeros(1, 1, cfg.d_model)) if cfg.pool == "cls" else None
        if cfg.pos == "learned":
            self.pos = nn.Parameter(torch.zeros(1, self.n_tokens, cfg.d_model))
        elif cfg.pos == "sinusoidal":
            self.register_buffer("pos", sinusoids(self.n_tokens, cfg.d_model)[None], persistent=False)
        else:  # rope: positions inside attention
            self.pos = None
        self.dropout = Dropout(cfg.dropout)
        self.encoder = Encoder(cfg, cfg.n_layers)
        self.head = nn.Linear(cfg.d_model, cfg.num_classes)
        init_weights(self, cfg.n_layers)
        if self.cls is not None:
            nn.init.normal_(self.cls, std=0.02)

    def patches(self, pixels: Tensor) -> Tensor:
        """(B, H, W, C) -> (B, grid², patch² · C), patches in row-major order, each row-major, channels last."""
        b, h, w, c = pixels.shape
        p, g = self.patch_size, self.grid
        if (h, w, c) != (g * p, g * p, self.channels):
            raise ValueError(f"images of {h}x{w}x{c}, the model reads {g * p}x{g * p}x{self.channels}")
        x = pixels.to(self.patch.weight.dtype)
        x = x / 127.5 - 1.0 if pixels.dtype == torch.uint8 else x * 2.0 - 1.0
        return x.reshape(b, g, p, g, p, c).permute(0, 1, 3, 2, 4, 5).reshape(b, g * g, p * p * c)

    def forward(self, pixels: Tensor) -> Tensor:
        x = self.patch(self.patches(pixels))
        if self.cls is not None:
            x = torch.cat([self.cls.expand(x.size(0), -1, -1).to(x.dtype), x], dim=1)
        if self.pos is not None:
            x = x + self.pos.to(x.dtype)
        h = self.encoder(self.dropout(x))
        return self.head(h[:, 0] if self.cls is not None else h.mean(dim=1))


def count_parameters(model: nn.Module, non_embedding: bool = False) -> int:
    """Trainable parameters, shared tensors counted once; ``non_embedding`` leaves out the
    token and learned position tables (the usual convention of scaling-law papers)."""
    seen, total = set(), 0
    for name, p in model.named_parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        if non_embedding and (".tok." in f".{name}" or ".pos." in f".{name}"):
            continue
        total += p.numel()
    return total


def flops_per_token(model: nn.Module, seq_len: int) -> float:
    """Training FLOPs per token (forward + backward), Kaplan et al. / PaLM appendix B:
    6 per weight of every matrix multiply (the tied output projection included) plus
    12 · d_model · seq_len per attention layer for QKᵀ and AV."""
    flops = 0.0
    for module in model.modules():
        if isinstance(module, nn.Linear):
            flops += 6.0 * module.in_features * module.out_features
        elif isinstance(module, MultiHeadAttention):
            flops += 12.0 * module.d_model * seq_len
    return flops


def build_model(task: str, config: ModelConfig) -> nn.Module:
    """The model of a task: lm -> CausalLM, translate -> Seq2Seq, classify -> TextClassifier, vision -> ViT."""
    models = {"lm": CausalLM, "translate": Seq2Seq, "classify": TextClassifier, "vision": ViT}
    return models[task](config)

