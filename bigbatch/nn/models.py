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
from bigbatch.nn.layers import Dropout, Embedding, FeedForward, sinusoids
from bigbatch.nn.transformer import DecodeCache, Decoder, Encoder, norm_class


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


def token_embedding(cfg: ModelConfig) -> Embedding:
    """The token + position embedding of a text model (with BERT's type table and norm where configured)."""
    return Embedding(cfg.vocab_size, cfg.d_model, cfg.max_len, cfg.pos, cfg.dropout, n_types=cfg.type_vocab_size,
                     norm=norm_class(cfg)(cfg.d_model) if cfg.embed_norm else None,
                     sinusoid_layout=cfg.sinusoid_layout)


class CausalLM(nn.Module):
    """Decoder-only language model (GPT-style). input_ids (B, T) -> logits (B, T, V)."""

    def __init__(self, config: ModelConfig | None = None, **overrides):
        super().__init__()
        cfg = self.config = _resolve(config, overrides, ("vocab_size",))
        self.embed = token_embedding(cfg)
        self.decoder = Decoder(cfg, cfg.n_layers)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=cfg.output_bias)
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
        p = self.embed.tok.weight
        return self.decoder.new_cache(batch, min(max_len, self.config.max_len), p.dtype, p.device)


class Seq2Seq(nn.Module):
    """Encoder-decoder translator with shared source/target embeddings.

    src_ids (B, S), tgt_ids (B, T) -> logits (B, T, V). Source padding is masked with
    ``src_mask`` (B, S), or from ``config.pad_id``; targets are right-padded.
    """

    def __init__(self, config: ModelConfig | None = None, **overrides):
        super().__init__()
        cfg = self.config = _resolve(config, overrides, ("vocab_size",))
        self.embed = token_embedding(cfg)
        self.encoder = Encoder(cfg, cfg.n_encoder_layers or cfg.n_layers)
        self.decoder = Decoder(cfg, cfg.n_decoder_layers or cfg.n_layers, cross_attention=True)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=cfg.output_bias)
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
        p = self.embed.tok.weight
        return self.decoder.new_cache(memory.size(0), min(max_len, self.config.max_len), p.dtype, p.device,
                                      memory=memory, memory_mask=src_mask)


class TextClassifier(nn.Module):
    """Encoder-only classifier (BERT-style). input_ids (B, T), attention_mask (B, T) -> logits (B, C)."""

    def __init__(self, config: ModelConfig | None = None, **overrides):
        super().__init__()
        cfg = self.config = _resolve(config, overrides, ("vocab_size",))
        self.embed = token_embedding(cfg)
        self.encoder = Encoder(cfg, cfg.n_layers)
        self.pooler = nn.Linear(cfg.d_model, cfg.d_model) if cfg.pooler else None
        # num_classes 0: an encoder without a head (an imported BertModel), to be fine-tuned (train.init_from)
        self.head = nn.Linear(cfg.d_model, cfg.num_classes) if cfg.num_classes else None
        init_weights(self, cfg.n_layers)

    def features(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        """input_ids (B, T) -> the encoder's last hidden states (B, T, D)."""
        if attention_mask is None and self.config.pad_id is not None:
            attention_mask = input_ids != self.config.pad_id
        return self.encoder(self.embed(input_ids), key_mask=attention_mask)

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        if self.head is None:
            raise ValueError("this model has no classifier head (model.num_classes=0); fine-tune it on labelled "
                             "data first (train.init_from)")
        return self.head(self.pooled(input_ids, attention_mask))

    def pooled(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        """(B, T) -> the vector the head reads (B, D): pooled hidden states (through the pooler if any)."""
        if attention_mask is None and self.config.pad_id is not None:
            attention_mask = input_ids != self.config.pad_id
        h = self.features(input_ids, attention_mask)  # (B, T, D)
        if self.config.pool == "cls":
            pooled = h[:, 0]
        elif self.config.pool == "last":
            pooled = h[torch.arange(h.size(0), device=h.device), last_positions(attention_mask, h.size(1), h.device)]
        elif attention_mask is None:
            pooled = h.mean(dim=1)
        else:
            m = attention_mask.to(h.dtype).unsqueeze(-1)  # (B, T, 1)
            pooled = (h * m).sum(dim=1) / m.sum(dim=1).clamp(min=1.0)
        return torch.tanh(self.pooler(pooled)) if self.pooler is not None else pooled


def default_patch(image_size: int, power_of_2: bool = False) -> int:
    """The divisor of ``image_size`` nearest image_size / 7 (a grid of about 7 x 7 patches), at least 2 pixels
    where the image allows: 28 -> 4, 32 -> 4, 8 -> 2, 224 -> 32 (``power_of_2``, for the conv stem: only powers
    of 2, 96 -> 16). On 8x8 digits 2-pixel patches learned faster and better than single pixels (0.83 vs 0.78
    test accuracy at 300 steps, 4x faster steps)."""
    divisors = [p for p in range(2, image_size + 1) if image_size % p == 0 and not (power_of_2 and p & (p - 1))]
    return min(divisors or [1], key=lambda p: (abs(p - image_size / 7), p))


def last_positions(mask: Tensor | None, length: int, device) -> Tensor:
    """Index of each row's last real position (B,): mask (B, T), True / nonzero at real tokens, or None
    (every row full). A row without a real token gives 0."""
    if mask is None:
        return torch.full((1,), length - 1, device=device, dtype=torch.long)
    real = mask.bool()
    return torch.where(real.any(dim=1), (length - 1) - real.flip(1).int().argmax(dim=1), 0)


class PatchTransformer(nn.Module):
    """The encoder of patches both ViT and the audio classifier share: a linear patch embedding, a class token
    (pool=cls) or mean pooling, positions (learned table, fixed sinusoids, or rope inside attention), the
    existing Encoder and a linear head. Subclasses cut their input into ``n_patches`` vectors of ``patch_dim``."""

    def _build(self, cfg: ModelConfig, n_patches: int, patch_dim: int) -> None:
        if cfg.pool == "last":
            raise ValueError("model.pool=last: image and audio models pool the patches by mean or a class token (cls)")
        self.n_tokens = n_patches + (cfg.pool == "cls")
        if cfg.max_len < self.n_tokens:  # the encoder's rotary table (pos=rope) covers every patch
            cfg = dataclasses.replace(cfg, max_len=self.n_tokens)
        self.patch = nn.Linear(patch_dim, cfg.d_model)
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

    def classify_patches(self, patches: Tensor) -> Tensor:
        """(B, n_patches, patch_dim) -> logits (B, num_classes)."""
        x = self.patch(patches)
        if self.cls is not None:
            x = torch.cat([self.cls.expand(x.size(0), -1, -1).to(x.dtype), x], dim=1)
        if self.pos is not None:
            x = x + self.pos.to(x.dtype)
        h = self.encoder(self.dropout(x))
        return self.head(h[:, 0] if self.cls is not None else h.mean(dim=1))


def conv_stem(channels: int, patch: int, d_model: int) -> nn.Sequential:
    """log2(patch) stages, each a 3x3 stride-2 convolution then a 3x3 stride-1 one (widths doubling up to
    d_model / 2), every convolution with group norm and ReLU, then a 1x1 convolution to d_model:
    (B, C, H, W) -> (B, d_model, H / patch, W / patch)."""
    steps = patch.bit_length() - 1
    if patch < 2 or 1 << steps != patch:
        raise ValueError(f"model.patch_embed=conv needs a power-of-2 model.patch_size >= 2, got {patch}")
    layers, width = [], channels
    for k in range(steps):
        out = max(d_model // 2 ** (steps - k), 8)
        for stride in (2, 1):
            # group norm, not batch norm: statistics per example keep gradient accumulation and data
            # parallelism exact (the sum over micro-batches / ranks equals the whole batch's gradient)
            layers += [nn.Conv2d(width, out, 3, stride=stride, padding=1, bias=False),
                       nn.GroupNorm(math.gcd(8, out), out), nn.ReLU()]
            width = out
    layers.append(nn.Conv2d(width, d_model, 1))
    return nn.Sequential(*layers)


class ViT(PatchTransformer):
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
        p = cfg.patch_size or default_patch(cfg.image_size, cfg.patch_embed == "conv")
        if cfg.image_size % p:
            raise ValueError(f"model.patch_size={p} does not divide model.image_size={cfg.image_size}")
        channels = cfg.channels or 1
        self.grid, self.patch_size, self.channels = cfg.image_size // p, p, channels
        self.config = dataclasses.replace(cfg, patch_size=p, channels=channels)
        self._build(cfg, self.grid**2, p * p * channels)
        self.stem = conv_stem(channels, p, cfg.d_model) if cfg.patch_embed == "conv" else None
        if self.stem is not None:
            self.patch = nn.Identity()  # the stem's last 1x1 convolution is the embedding

    def patches(self, pixels: Tensor) -> Tensor:
        """(B, H, W, C) -> (B, grid², patch² · C), patches in row-major order, each row-major, channels last."""
        b, h, w, c = pixels.shape
        p, g = self.patch_size, self.grid
        if (h, w, c) != (g * p, g * p, self.channels):
            raise ValueError(f"images of {h}x{w}x{c}, the model reads {g * p}x{g * p}x{self.channels}")
        x = pixels.to(self.encoder.norm_dtype)
        x = x / 127.5 - 1.0 if pixels.dtype == torch.uint8 else x * 2.0 - 1.0
        return x.reshape(b, g, p, g, p, c).permute(0, 1, 3, 2, 4, 5).reshape(b, g * g, p * p * c)

    def forward(self, pixels: Tensor) -> Tensor:
        if self.stem is None:
            return self.classify_patches(self.patches(pixels))
        x = self.patches(pixels)  # checks the shape and scales to [-1, 1]; the stem reads the image itself
        b, g = x.size(0), self.grid
        image = x.reshape(b, g, g, self.patch_size, self.patch_size, self.channels).permute(0, 5, 1, 3, 2, 4)
        image = image.reshape(b, self.channels, g * self.patch_size, g * self.patch_size)
        return self.classify_patches(self.stem(image).flatten(2).transpose(1, 2))


def count_parameters(model: nn.Module, non_embedding: bool = False) -> int:
    """Trainable parameters, shared tensors counted once; ``non_embedding`` leaves out the
    token and learned position tables (the usual convention of scaling-law papers)."""
    seen, total = set(), 0
    for name, p in model.named_parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        parts = name.split(".")
        if non_embedding and ({"tok", "pos"} & set(parts[:-1]) or parts[0] in ("embed", "pos")):
            continue  # token / position tables (CausalLM embed.tok, embed.pos; a ViT's pos; an RNN's embed)
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
        elif isinstance(module, nn.RNNBase):  # every weight of every direction multiplies every token once
            flops += 6.0 * sum(p.numel() for name, p in module.named_parameters() if name.startswith("weight"))
        elif isinstance(module, MultiHeadAttention):
            flops += 12.0 * module.n_heads * module.head_dim * seq_len
    return flops


def build_model(task: str, config: ModelConfig) -> nn.Module:
    """The model of a task: lm -> CausalLM, translate -> Seq2Seq, classify -> TextClassifier, vision -> ViT,
    audio -> AudioClassifier."""
    from bigbatch.nn.audio import AudioClassifier

    if config.arch != "transformer":
        from bigbatch.nn.rnn import RNNClassifier, RNNSeq2Seq

        rnns = {"classify": RNNClassifier, "translate": RNNSeq2Seq}
        if task not in rnns:
            raise ValueError(f"model.arch={config.arch} is built for task classify or translate, not {task}")
        return rnns[task](config)
    models = {"lm": CausalLM, "translate": Seq2Seq, "classify": TextClassifier, "vision": ViT, "audio": AudioClassifier}
    model = models[task](config)
    reshape(model, config)
    if config.quantized:
        from bigbatch.compress.quantize import int8_skeleton

        int8_skeleton(model, config.quantized, config.int8_layers)
    return model


def attention_layers(model: nn.Module) -> list[tuple[str, MultiHeadAttention]]:
    """(name, module) of every attention layer, in module order (model.layer_heads' order)."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, MultiHeadAttention)]


def feed_forward_layers(model: nn.Module) -> list[tuple[str, FeedForward]]:
    """(name, module) of every feed-forward layer, in module order (model.layer_d_ff's order)."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, FeedForward)]


def reshape(model: nn.Module, config: ModelConfig) -> None:
    """Give the layers the head counts and widths of model.layer_heads / layer_d_ff (a pruned model), in place."""
    for key, layers, keep in (("layer_heads", attention_layers(model), MultiHeadAttention.keep_heads),
                              ("layer_d_ff", feed_forward_layers(model), FeedForward.keep_neurons)):
        sizes = getattr(config, key)
        if sizes is None:
            continue
        if len(sizes) != len(layers):
            raise ValueError(f"model.{key} has {len(sizes)} entries, the model has {len(layers)} such layers")
        for (name, module), n in zip(layers, sizes):
            full = module.n_heads if key == "layer_heads" else module.fc1.out_features
            if n > full:
                raise ValueError(f"model.{key}: {name} gets {n}, more than its {full}")
            if n != full:
                keep(module, range(n))

