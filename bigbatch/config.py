"""Typed, validated configuration: dataclasses, YAML in and out, ``--set key=value`` overrides.

Every field has a type, a default and a docstring. Construction checks every value
(choices of ``Literal`` fields, numeric ranges), so a bad config fails at start-up with
one line naming the key, never hours into a run.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
import reprlib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional, Union

import yaml

from bigbatch.errors import UserError

Task = Literal["lm", "classify", "translate", "vision", "audio"]


@dataclass
class ModelConfig:
    vocab_size: int = 0
    """Token vocabulary size; 0 = take it from the tokenizer."""
    d_model: Optional[int] = None
    """Width of the residual stream; None = chosen from the data size and the budget (train/defaults.py)."""
    n_heads: Optional[int] = None
    """Attention heads per layer; d_model must be divisible by it; None = d_model / 64."""
    n_layers: Optional[int] = None
    """Transformer blocks (decoder-only LM, encoder-only classifier); None = chosen with d_model."""
    n_encoder_layers: Optional[int] = None
    """Encoder blocks of a seq2seq model; None = n_layers."""
    n_decoder_layers: Optional[int] = None
    """Decoder blocks of a seq2seq model; None = n_layers."""
    d_ff: Optional[int] = None
    """Hidden width of the feed-forward layer; None = 4 * d_model."""
    dropout: Optional[float] = None
    """Dropout on embeddings, attention weights and residual branches; None = 0.1 for classify / translate,
    0 for lm (one pass over much data) or 0.1 for an lm that repeats its data many times."""
    norm: Literal["layernorm", "rmsnorm"] = "layernorm"
    """Normalisation layer."""
    norm_first: bool = True
    """Pre-norm (True, GPT-2 style) or post-norm (False, the original Transformer)."""
    pos: Literal["sinusoidal", "learned", "rope"] = "learned"
    """Positional encoding: fixed sinusoids, a learned table, or rotary (RoPE)."""
    max_len: Optional[int] = None
    """Longest sequence the positional encoding covers (longer inputs are cut); None = lm: data.seq_len,
    classify / translate: the 99th percentile of the training lengths (at most 512)."""
    activation: Literal["gelu", "gelu_tanh", "relu", "silu"] = "gelu"
    """Feed-forward non-linearity."""
    bias: bool = True
    """Biases in linear layers."""
    tie_embeddings: bool = True
    """Share the token embedding with the output projection."""
    num_classes: int = 0
    """Classifier outputs; 0 = take it from the data."""
    pool: Literal["mean", "cls", "last"] = "mean"
    """Classifier pooling: mean over non-pad tokens, the first token (vision/audio: a class token), or the last
    real token (model.arch lstm/gru: the final state of each direction). Vision/audio: mean or cls."""
    pad_id: Optional[int] = None
    """Padding token id (source masks of seq2seq models); None = no padding."""
    arch: Literal["transformer", "lstm", "gru"] = "transformer"
    """classify / translate: the Transformer, or a recurrent baseline of the same width (bigbatch.nn.rnn: a
    bidirectional LSTM/GRU classifier; an LSTM/GRU encoder-decoder with attention)."""
    image_size: int = 0
    """vision: images are resized (shorter side) and centre-cropped to image_size x image_size pixels when the
    data is prepared; 0 = the builtin's own size (fashion-mnist 28, digits 8), 32 for an image folder."""
    channels: int = 0
    """vision: 1 (grey) or 3 (RGB); 0 = the builtin's (1), 3 for an image folder."""
    patch_size: int = 0
    """vision: side of the square patches a ViT cuts the image into (it must divide image_size); 0 = the
    divisor of image_size nearest image_size / 7, at least 2 (28 -> 4, 32 -> 4, 8 -> 2).
    audio: mel bins per patch (it must divide n_mels); 0 = 16."""
    patch_embed: Literal["linear", "conv"] = "linear"
    """vision: linear = the ViT's patch embedding (a linear map of each flattened patch); conv = a
    convolutional stem (Xiao et al. 2021, "Early convolutions help transformers see better"): log2(patch_size)
    stages of a 3x3 stride-2 and a 3x3 stride-1 convolution, each with group norm (per example: accumulation
    stays exact) and ReLU, then a 1x1 to d_model, giving the same patch grid; patch_size must be a power of 2."""
    sample_rate: int = 0
    """audio: samples per second every clip is resampled to when the data is prepared; 0 = 16000."""
    clip_seconds: float = 0.0
    """audio: length of every clip (longer ones keep their loudest window, shorter ones are centred in
    silence); 0 = 1.0."""
    n_mels: int = 64
    """audio: mel filters of the log-mel front end (25 ms windows every 10 ms)."""
    patch_frames: int = 10
    """audio: spectrogram frames (10 ms each) per patch."""
    norm_eps: Optional[float] = None
    """Epsilon of every norm layer; None = torch's default (LayerNorm 1e-5, RMSNorm the dtype's machine epsilon).
    BERT uses 1e-12 (set by ``bigbatch import-hf``)."""
    embed_norm: bool = False
    """A norm layer on the embedding sum, before dropout (BERT's embedding LayerNorm)."""
    type_vocab_size: int = 0
    """Rows of a token-type (segment) embedding table, BERT's; its type-0 row is added at every position (inputs
    are single segments). 0 = no table."""
    pooler: bool = False
    """classify: a dense layer and tanh between the pooled vector and the head (BERT's pooler, with pool=cls)."""
    sinusoid_layout: Literal["interleaved", "split"] = "interleaved"
    """pos=sinusoidal: sines and cosines interleaved (Vaswani et al.), or all sines then all cosines (split:
    Marian, fairseq)."""
    decoder_start_id: Optional[int] = None
    """translate: the token id decoder input starts from; None = the tokenizer's bos (Marian: its pad id)."""
    output_bias: bool = False
    """lm / translate: a bias on the output projection (Marian's final_logits_bias)."""
    layer_heads: Optional[list[int]] = None
    """Heads of each attention layer, in module order (encoder self-attention, then decoder self- and
    cross-attention of each block in turn), head size d_model / n_heads; None = n_heads everywhere. Written by
    ``bigbatch compress prune``; a layer may keep 0."""
    layer_d_ff: Optional[list[int]] = None
    """Hidden width of each feed-forward layer, in module order; None = d_ff everywhere (compress prune)."""
    quantized: Optional[Literal["dynamic-int8", "weight-int8"]] = None
    """int8 linear layers (``bigbatch compress quantize``): dynamic-int8 (int8 products on the CPU) or
    weight-int8 (int8 storage, float products); None = float."""
    int8_layers: Optional[list[str]] = None
    """With model.quantized: the names of the linear layers that are int8 (the rest stay float)."""

    def __post_init__(self):
        _positive(self, "d_model", "n_heads", "n_layers", "max_len")
        _non_negative(self, "vocab_size", "num_classes", "image_size", "patch_size", "sample_rate", "clip_seconds",
                      "type_vocab_size")
        _positive(self, "n_mels", "patch_frames", "norm_eps")
        if self.channels not in (0, 1, 3):
            raise UserError(f"model.channels={_show(self.channels)} is invalid: expected 1 (grey), 3 (RGB) or 0 (auto)")
        if self.patch_size and self.image_size and self.image_size % self.patch_size:
            raise UserError(f"model.patch_size={self.patch_size} does not divide model.image_size={self.image_size}")
        if self.patch_embed == "conv" and self.patch_size and (self.patch_size < 2 or self.patch_size & (self.patch_size - 1)):
            raise UserError(f"model.patch_embed=conv needs a power-of-2 model.patch_size >= 2, got {self.patch_size}")
        if 0 < self.sample_rate < 1000:
            raise UserError(f"model.sample_rate={self.sample_rate} is invalid: expected samples per second "
                            "(e.g. 16000), at least 1000")
        if self.arch != "transformer" and self.d_model and self.d_model % 2:
            raise UserError(f"model.d_model={self.d_model}: model.arch={self.arch} is bidirectional and needs an even "
                            "width (d_model / 2 a direction)")
        _fraction(self, "dropout")
        for name in ("layer_heads", "layer_d_ff"):
            sizes = getattr(self, name)
            if sizes is not None and any(n < (name == "layer_d_ff") for n in sizes):
                raise UserError(f"model.{name}={_show(sizes)} is invalid: expected "
                                f"{'widths >= 1' if name == 'layer_d_ff' else 'head counts >= 0'}")
        if (self.quantized is None) != (self.int8_layers is None):
            raise UserError("model.quantized and model.int8_layers come together (written by bigbatch compress "
                            "quantize): set both or neither")
        if self.d_model is None or self.n_heads is None:
            return  # resolved later (train/defaults.py), then checked again
        if self.d_model % self.n_heads:
            raise UserError(
                f"model.d_model={self.d_model} must be divisible by model.n_heads={self.n_heads}"
            )
        if self.pos == "rope" and (self.d_model // self.n_heads) % 2:
            raise UserError("model.pos=rope needs an even head size (d_model / n_heads)")


@dataclass
class DataConfig:
    source: str = "builtin:python-stdlib"
    """Training data: a path, glob, or builtin:NAME corpus."""
    valid_source: Optional[str] = None
    """Validation data; None = the source's own deterministic valid split."""
    test_source: Optional[str] = None
    """Test data; None = the source's own deterministic test split."""
    tokenizer: str = "auto"
    """byte (UTF-8 bytes), bpe or unigram (trained on the data), or a tokenizer.json / HF tokenizer directory;
    auto = bpe for classify / translate and for prose, byte for a language model of source code."""
    vocab_size: int = 0
    """Entries of a trained (bpe / unigram) tokenizer; 0 = sized to the data (2k-32k by the source's size)."""
    tokenizer_sample_mb: float = 20.0
    """Megabytes of training text a tokenizer is trained on."""
    text_per_line: bool = False
    """Plain text files: one document per line instead of one per file."""
    shard_tokens: int = 16_000_000
    """Tokens per shard (roughly: a shard closes once it passes this)."""
    document_mask: bool = False
    """Language models: attention stops at document boundaries inside a packed row."""
    shard_dir: Optional[str] = None
    """Where prepared token shards live; None = the user cache."""
    num_workers: int = 2
    """Worker processes that tokenise during preparation."""
    skip_bad_rows: bool = False
    """Skip and count malformed rows instead of stopping."""
    text_field: str = "text"
    """JSONL key / column holding the text."""
    label_field: str = "label"
    """JSONL key / column holding the class label."""
    src_field: str = "src"
    """JSONL key / column holding the source sentence (translation)."""
    tgt_field: str = "tgt"
    """JSONL key / column holding the target sentence (translation)."""
    seq_len: int = 256
    """Tokens per training row of a language model (the context length)."""
    augment: Literal["auto", "none", "crop", "crop_flip", "shift"] = "auto"
    """Training batches only (evaluation never augments). vision: random crop of the image padded by
    image_size / 8 pixels (crop), and a random horizontal flip too (crop_flip); auto = crop_flip for
    fashion-mnist and image folders, crop for digits (a mirrored digit is another shape). audio: shift = a
    random time shift of up to 100 ms and a gain of 0.5..1.5; auto = shift."""

    def __post_init__(self):
        _positive(self, "seq_len", "shard_tokens", "tokenizer_sample_mb")
        _non_negative(self, "vocab_size")
        _non_negative(self, "num_workers")


@dataclass
class TrainConfig:
    max_steps: Optional[int] = None
    """Optimiser steps to run; None = what train.epochs takes (the limits that are set: whichever comes first)."""
    epochs: Optional[float] = None
    """Passes over the training split; None = chosen from the data size when no other limit is set (see
    train/defaults.py), e.g. many for a small data set, one for a large one."""
    max_tokens: Optional[int] = None
    """Stop after this many training tokens (whichever of the limits comes first)."""
    max_time_s: Optional[float] = None
    """Stop after this many seconds of training; the learning-rate schedule decays over the end of it."""
    global_batch_size: Optional[int] = None
    """Examples (LM: rows of seq_len tokens) per optimiser step."""
    global_batch_tokens: Optional[int] = None
    """Tokens per optimiser step (LM: a multiple of data.seq_len); alternative to global_batch_size."""
    micro_batch_size: Union[int, Literal["auto"], None] = None
    """Examples per forward/backward; None = the whole global batch; auto = the largest that fits in memory
    (CUDA: tried, halving on out-of-memory; CPU: estimated against memory_budget_gb). The rest is accumulation."""
    memory_budget_gb: Optional[float] = None
    """CPU, micro_batch_size auto: memory for activations; None = half the free RAM."""
    micro_batch_tokens: Optional[int] = None
    """classify / translate: token budget of a micro-batch, padding included (length-bucketed batches)."""
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    """Compute precision: fp32, bf16 autocast (CPU and CUDA), or fp16 autocast with gradient scaling (CUDA)."""
    batch_warmup_steps: int = 0
    """Ramp the global batch linearly from one micro-batch to the full batch over this many steps (the
    critical batch is small early in training); 0 = the full batch from the start."""
    batch_schedule: Literal["fixed", "ramp", "adaptive"] = "fixed"
    """How the global batch moves during training: fixed (the global batch throughout; batch_warmup_steps may ramp
    it by steps); ramp (linear from batch_start to the global batch over batch_ramp_tokens training tokens,
    Megatron's rampup-batch-size); adaptive (every batch_adapt_every steps, batch_noise_factor x the measured
    noise scale B_simple, clamped to [batch_min, batch_max], grown by whole micro-batches). Under ramp / adaptive
    the lr follows the batch by optim.scale_rule from reference_batch (default: batch_start); docs/large_batch.md."""
    batch_start: Optional[int] = None
    """ramp / adaptive: the first global batch, in the global batch's unit (tokens where global_batch_tokens is set,
    else rows / examples); None = batch_min, else one micro-batch on every rank."""
    batch_ramp_tokens: Optional[int] = None
    """ramp: training tokens over which the batch grows from batch_start to the global batch (required)."""
    batch_adapt_every: int = 10
    """adaptive: optimiser steps between batch decisions."""
    batch_min: Optional[int] = None
    """adaptive: the smallest global batch (the global batch's unit); None = batch_start or one micro-batch a rank."""
    batch_max: Optional[int] = None
    """adaptive: the largest global batch; None = the global batch (global_batch_size / global_batch_tokens)."""
    batch_noise_factor: float = 0.5
    """adaptive: the global batch is this times the smoothed noise scale B_simple (in targets)."""
    batch_shrink: bool = False
    """adaptive: let the batch shrink when the measured noise scale falls (default: it only grows)."""
    max_bad_steps: int = 5
    """Stop after this many optimiser steps in a row whose loss or gradient is not finite (each is skipped)."""
    grad_clip: float = 1.0
    """Clip the global gradient norm to this; 0 = no clipping."""
    activation_checkpointing: bool = False
    """Recompute each block's activations in backward to save memory."""
    compile: bool = False
    """Compile the model with torch.compile."""
    seed: int = 0
    """Seed of initialisation, data order and dropout."""
    eval_every: Optional[int] = None
    """Evaluate on the validation split every this many steps (0 = only at the end); None = about 10
    evaluations over the run (by steps, or by train.max_time_s when the run is bounded by time)."""
    eval_every_s: Optional[float] = None
    """Also evaluate every this many seconds of training (None = by steps only)."""
    eval_batches: Optional[int] = None
    """Micro-batches in a periodic evaluation; None = lm: 20, classify / translate: the whole split up to
    train.eval_examples (the final evaluation reads the whole split)."""
    eval_examples: int = 5000
    """classify / translate: periodic evaluations score a fixed seeded sample of this many validation
    examples (translation BLEU: at most 500 sentences) when eval_batches is None."""
    best_metric: Literal["auto", "loss", "accuracy", "macro_f1", "bleu"] = "auto"
    """Validation metric that chooses checkpoints/best; auto = accuracy (classify), bleu (translate), loss (lm)."""
    patience: Optional[int] = None
    """Stop after this many evaluations in a row without a better best_metric (None = never stop early)."""
    label_smoothing: Optional[float] = None
    """Cross-entropy label smoothing in training (evaluation losses are plain); None = 0.1 for classify /
    translate, 0 for lm."""
    save_every: Optional[int] = None
    """Write a checkpoint every this many steps (0 = only at the end); None = at every evaluation."""
    keep_last: int = 2
    """Checkpoints kept on disk."""
    log_every: int = 10
    """Write a metrics row every this many steps."""
    device: str = "auto"
    """cpu, cuda, cuda:N, or auto (cuda when available); under torchrun each rank takes cuda:LOCAL_RANK."""
    parallel: Literal["auto", "none", "ddp", "fsdp"] = "auto"
    """Several processes (torchrun / --nproc): ddp replicates the model and all-reduces gradients once per
    step; fsdp (FSDP2) shards parameters, gradients and optimiser state per block; auto = ddp when there
    is more than one process, none otherwise."""
    fsdp_reshard: bool = True
    """fsdp: free each block's gathered parameters after its forward (least memory; gathered again for
    backward, for every micro-batch). False keeps them until backward: one all-gather per micro-batch
    instead of two, for the memory of the unsharded blocks."""
    dist_timeout_s: float = 600.0
    """A collective that waits longer than this (a rank died or hangs) fails instead of hanging."""
    peak_flops: Optional[float] = None
    """The device's peak FLOP/s for MFU; None = a table of known accelerators (else MFU is unknown)."""
    baseline: bool = True
    """At the end, fit the strong simple baseline on the same splits and report it beside the model
    (bigbatch baseline; TF-IDF + logistic regression needs scikit-learn)."""
    sample_prompt: Optional[str] = None
    """Language models: prompt of the sample printed at the end ("" = none; None = the first words of the
    validation split)."""
    sample_tokens: int = 200
    """Language models: length of the sample printed at the end."""
    init_from: Optional[str] = None
    """A run or checkpoint directory whose weights start this run (fine-tuning; a pruned model's recovery), or a
    Hugging Face checkpoint directory (or ``package:NAME/DIR``, a directory inside an installed Python package),
    imported first into RUN_DIR/pretrained. The model is that run's except keys this config sets to non-default
    values; an unset data.tokenizer is its tokenizer; a classifier gets a new head where the classes differ.
    Only a new run: a resumed run continues from its own checkpoint."""
    freeze_embeddings: bool = False
    """Keep the token / position / type embeddings (and embedding norm) fixed: fine-tuning a pretrained model
    on little data."""

    def __post_init__(self):
        _positive(self, "max_steps", "log_every", "keep_last", "eval_batches", "max_bad_steps", "epochs", "max_time_s",
                  "eval_every_s", "eval_examples", "patience")
        _positive(self, "global_batch_size", "global_batch_tokens", "micro_batch_size", "micro_batch_tokens", "max_tokens",
                  "memory_budget_gb", "peak_flops", "dist_timeout_s")
        _fraction(self, "label_smoothing")
        _non_negative(self, "eval_every", "save_every", "grad_clip", "sample_tokens", "batch_warmup_steps")
        if self.global_batch_size and self.global_batch_tokens:
            raise UserError("set one of train.global_batch_size and train.global_batch_tokens, not both")
        _positive(self, "batch_start", "batch_ramp_tokens", "batch_adapt_every", "batch_min", "batch_max",
                  "batch_noise_factor")
        if self.batch_min and self.batch_max and self.batch_min > self.batch_max:
            raise UserError(f"train.batch_min={self.batch_min} is larger than train.batch_max={self.batch_max}")
        given = [k for k in ("batch_start", "batch_ramp_tokens", "batch_min", "batch_max") if getattr(self, k)]
        if self.batch_schedule == "fixed" and given:
            raise UserError(f"train.{given[0]} applies to train.batch_schedule=ramp or adaptive, not fixed")
        if self.batch_schedule != "fixed" and self.batch_warmup_steps:
            raise UserError(f"train.batch_warmup_steps={self.batch_warmup_steps} is a fixed schedule's ramp; with "
                            f"train.batch_schedule={self.batch_schedule} leave it 0")
        if self.batch_schedule == "ramp" and not self.batch_ramp_tokens:
            raise UserError("train.batch_schedule=ramp needs train.batch_ramp_tokens (tokens over which the batch grows)")
        if self.batch_schedule == "ramp" and (self.batch_min or self.batch_max):
            raise UserError("train.batch_min / batch_max apply to batch_schedule=adaptive; a ramp goes from "
                            "train.batch_start to the global batch")
        if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", self.device):  # else torch.device() fails mid-start
            raise UserError(f"train.device={_show(self.device)} is invalid: expected auto, cpu, cuda or cuda:N")


@dataclass
class OptimConfig:
    name: Literal["adamw", "lamb", "sgd"] = "adamw"
    """Optimiser: AdamW, LAMB (layer-wise trust ratio, You et al. 2019) or SGD with momentum."""
    lr: Optional[float] = None
    """Peak learning rate; None = chosen with the model size (train/defaults.py)."""
    base_lr: Optional[float] = None
    """The learning rate as given, before batch-size scaling (filled in by the trainer)."""
    weight_decay: float = 0.1
    """Decoupled weight decay on matrices (not on biases, norms)."""
    betas: tuple[float, float] = (0.9, 0.95)
    """Adam betas."""
    eps: float = 1e-8
    """Adam epsilon."""
    momentum: float = 0.9
    """SGD momentum."""
    warmup_steps: Optional[int] = None
    """Linear warm-up from 0 to the peak learning rate, in steps; None = over the first warmup_fraction of
    the run (of its steps, tokens or seconds, whichever limit is nearest)."""
    warmup_fraction: float = 0.03
    """Warm-up as a fraction of the run when warmup_steps is None."""
    schedule: Literal["auto", "constant", "linear", "cosine", "inverse_sqrt", "wsd"] = "auto"
    """Learning-rate shape after warm-up, over the run's progress (steps, tokens or time, whichever limit is
    nearest); auto = wsd (warm-up, stable, decay over the last decay_fraction)."""
    min_lr_ratio: float = 0.1
    """Final learning rate of cosine / linear / wsd decay, as a fraction of the peak."""
    decay_fraction: float = 0.2
    """wsd: the fraction of training spent in the final decay."""
    scale_rule: Literal["auto", "none", "linear", "sqrt"] = "auto"
    """How lr follows the global batch B when reference_batch is set: linear (lr·B/B_ref, Goyal et al. 2017),
    sqrt (lr·√(B/B_ref), Malladi et al. 2022), none; auto = linear for sgd, sqrt for adamw and lamb."""
    reference_batch: Optional[int] = None
    """Global batch the lr and warm-up were tuned at: tokens if train.global_batch_tokens is set, else examples."""
    base_warmup_steps: Optional[int] = None
    """The warm-up as given, before batch-size scaling (filled in by the trainer)."""
    layer_lr_decay: float = 1.0
    """Layer-wise learning-rate decay (Clark et al. 2020, ELECTRA): with L blocks, block i (1 = lowest) learns at
    lr·decay^(L+1-i), the embeddings at lr·decay^(L+1), the head and final norm at lr. 1 = one lr everywhere;
    0.7-0.9 is usual when fine-tuning a pretrained encoder."""

    def __post_init__(self):
        _positive(self, "lr", "eps")
        _fraction(self, "warmup_fraction")
        _non_negative(self, "weight_decay", "warmup_steps", "momentum")
        if not 0.0 < self.layer_lr_decay <= 1.0:
            raise UserError(f"optim.layer_lr_decay={_show(self.layer_lr_decay)} is invalid: expected a number in (0, 1]")
        _positive(self, "reference_batch")
        _fraction(self, "min_lr_ratio", "decay_fraction")
        if not all(0.0 <= b < 1.0 for b in self.betas):
            raise UserError(f"optim.betas must lie in [0, 1), got {list(self.betas)}")


@dataclass
class DistillConfig:
    teacher: Optional[str] = None
    """A trained run (or checkpoint) of the same task and tokenizer whose soft targets join the objective
    (knowledge distillation, Hinton et al. 2015); None = no teacher."""
    temperature: float = 2.0
    """Softmax temperature T of both teacher and student in the distillation term (scaled by T²)."""
    alpha: float = 0.5
    """Weight of the distillation term: loss = alpha · T² · KL(teacher_T ‖ student_T) + (1 - alpha) · CE."""
    init: Literal["auto", "none"] = "auto"
    """auto: a new student starts from the teacher's weights where the shapes allow, its layer i from the
    teacher's layer 2i (every other layer, DistilBERT's recipe); none: the usual random initialisation."""

    def __post_init__(self):
        _positive(self, "temperature")
        _fraction(self, "alpha")


@dataclass
class Config:
    task: Task = "lm"
    """lm (next-token prediction), classify, translate, vision (ViT image classification), or audio
    (spectrogram-patch Transformer classification of clips)."""
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    model_given: Optional[list[str]] = field(default=None, compare=False)
    """The model keys the config file and --set gave (written by load_config): a run that starts from another's
    weights (train.init_from) takes every other model key from that run. None = not known (a config built in
    Python): keys at their default value are taken from that run."""

    def __post_init__(self):
        # with a reference batch the warm-up is rescaled first; the scheduler checks the result
        if (self.optim.reference_batch is None and self.optim.warmup_steps is not None and self.train.max_steps
                and self.optim.warmup_steps >= self.train.max_steps):
            raise UserError(f"optim.warmup_steps={self.optim.warmup_steps} must be smaller than "
                            f"train.max_steps={self.train.max_steps}")
        allowed = {"classify": ("auto", "loss", "accuracy", "macro_f1"), "vision": ("auto", "loss", "accuracy", "macro_f1"),
                   "audio": ("auto", "loss", "accuracy", "macro_f1"),
                   "translate": ("auto", "loss", "bleu")}
        if self.train.best_metric not in allowed.get(self.task, ("auto", "loss")):
            raise UserError(f"train.best_metric={self.train.best_metric} does not apply to task={self.task}; expected "
                            f"one of {', '.join(allowed.get(self.task, ('auto', 'loss')))}")
        if self.model.arch != "transformer" and self.task not in ("classify", "translate"):
            raise UserError(f"model.arch={self.model.arch} is a baseline for task classify or translate, not task={self.task}")
        if self.model.pool == "last" and self.task in ("vision", "audio"):
            raise UserError(f"model.pool=last: task={self.task} pools the patches by mean or a class token (cls)")
        if self.model.pool == "cls" and self.model.arch != "transformer":
            raise UserError(f"model.pool=cls: model.arch={self.model.arch} pools by mean or by its final states (last)")
        if self.task == "lm" and self.model.max_len and self.data.seq_len > self.model.max_len:  # before any data is prepared
            raise UserError(f"data.seq_len={self.data.seq_len} is longer than model.max_len={self.model.max_len}")

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["optim"]["betas"] = list(self.optim.betas)
        return d

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


# --------------------------------------------------------------------------- checks


def _check_each(obj, names, ok, expected):
    for name in names:
        value = getattr(obj, name)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and not ok(value):
            raise UserError(f"{_SECTION[type(obj)]}.{name}={_show(value)} is invalid: expected {expected}")
        if isinstance(value, float) and not math.isfinite(value):  # inf passes "> 0"; nan fails every check above
            raise UserError(f"{_SECTION[type(obj)]}.{name}={_show(value)} is invalid: expected a finite number")


def _positive(obj, *names):
    _check_each(obj, names, lambda v: v > 0, "a number > 0")


def _non_negative(obj, *names):
    _check_each(obj, names, lambda v: v >= 0, "a number >= 0")


def _fraction(obj, *names):
    _check_each(obj, names, lambda v: 0.0 <= v <= 1.0, "a number in [0, 1]")


_SECTION = {ModelConfig: "model", DataConfig: "data", TrainConfig: "train", OptimConfig: "optim",
            DistillConfig: "distill"}

_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxstring, _REPR.maxother = 2, 80, 80
_REPR.maxlist = _REPR.maxtuple = _REPR.maxdict = _REPR.maxset = 4


def _show(value: Any) -> str:
    """repr of a value for an error message: one short line, also for a YAML alias expansion (a billion
    laughs) or a value that contains itself, whose full repr would be huge or endless."""
    try:
        return _REPR.repr(value)
    except ValueError:  # an int of more than 4300 digits has no str
        return f"<an integer of {value.bit_length()} bits>"


# --------------------------------------------------------------------------- parsing


def _coerce(value: Any, hint: Any, key: str) -> Any:
    """Check ``value`` against the type ``hint`` of ``key``; convert where lossless (1 -> 1.0)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Union or origin is types.UnionType:
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        expected = []
        for option in inner:
            try:
                return _coerce(value, option, key)
            except UserError as e:
                expected.append(str(e).split("expected ", 1)[-1])
        raise UserError(f"{key}={_show(value)} is invalid: expected {' or '.join(expected)}")
    if origin is Literal:
        if value not in args:
            raise UserError(f"{key}={_show(value)} is invalid: expected one of {', '.join(map(str, args))}")
        return value
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise UserError(f"{key}={_show(value)} is invalid: expected a list")
        return [_coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is tuple:
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise UserError(f"{key}={_show(value)} is invalid: expected a list of {len(args)} numbers")
        return tuple(_coerce(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise UserError(f"{key}={_show(value)} is invalid: expected true or false")
    if hint is int:
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, int) and not isinstance(value, bool) and -(2**63) <= value < 2**63:
            return value
        raise UserError(f"{key}={_show(value)} is invalid: expected an integer (64-bit)")
    if hint is float:
        if isinstance(value, str):  # YAML 1.1 reads 1e-3 (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise UserError(f"{key}={_show(value)} is invalid: expected a number")
    if hint is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise UserError(f"{key}={_show(value)} is invalid: expected a string")
    raise TypeError(f"unsupported config type {hint} for {key}")


def _nearest(name: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(name, choices, n=1, cutoff=0.5)
    return f" (did you mean '{close[0]}'?)" if close else f" (known keys: {', '.join(choices)})"


def _build(cls, values: dict, prefix: str, where: dict[str, str]):
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in values.items():
        full = f"{prefix}{key}"
        if key not in names:
            raise UserError(f"{where.get(full, '')}unknown config key {_show(full)}" + _nearest(full, [f"{prefix}{n}" for n in names]))
        hint = hints[key]
        if dataclasses.is_dataclass(hint):
            if not isinstance(value, dict):
                raise UserError(f"{where.get(full, '')}{full} must be a mapping of keys, got {_show(value)}")
            kwargs[key] = _build(hint, value, f"{full}.", where)
        else:
            try:
                kwargs[key] = _coerce(value, hint, full)
            except UserError as e:
                raise UserError(f"{where.get(full, '')}{e}") from None
    try:
        return cls(**kwargs)
    except UserError as e:
        key = str(e).split("=", 1)[0].split(" ")[0]
        raise UserError(f"{where.get(key, '')}{e}") from None


def from_dict(values: dict, where: dict[str, str] | None = None) -> Config:
    """Build a validated Config from nested dicts; ``where`` maps keys to "file:line: " prefixes."""
    return _build(Config, values or {}, "", where or {})


def _key_lines(text: str, path: str) -> dict[str, str]:
    """Map every dotted key of a YAML document to "path:line: " for error messages."""
    where: dict[str, str] = {}
    seen: set[int] = set()  # an alias is its anchor's node: each walked once (no endless loop, no billion laughs)

    def walk(node, prefix):
        if isinstance(node, yaml.MappingNode) and id(node) not in seen:
            seen.add(id(node))
            keys = set()  # PyYAML keeps the last of duplicate keys silently
            for k, v in node.value:
                if isinstance(k.value, str):
                    if k.value in keys:
                        raise UserError(f"{path}:{k.start_mark.line + 1}: key {_show(k.value)} is given twice")
                    keys.add(k.value)
                key = f"{prefix}{k.value}"
                where[key] = f"{path}:{k.start_mark.line + 1}: "
                walk(v, key + ".")

    walk(yaml.compose(text), "")
    return where


def _yaml_problem(e: Exception) -> str:
    """The one-line gist of a YAML (or int / recursion) error, without the excerpt of the document."""
    if isinstance(e, RecursionError):
        return "nested too deeply"
    problem = getattr(e, "problem", None) or getattr(e, "reason", None) or str(e)
    return " ".join(str(problem).split())[:200]


def parse_set(items: list[str]) -> dict:
    """``["train.max_steps=10", ...]`` -> nested dict; values are parsed as YAML scalars (a value that is not
    YAML, such as the glob ``*.jsonl``, is kept as its text; the key's type then decides)."""
    out: dict = {}
    for item in items:
        if "=" not in item:
            raise UserError(f"--set {_show(item)}: expected key=value, e.g. --set train.max_steps=100")
        key, raw = item.split("=", 1)
        node = out
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise UserError(f"--set {_show(item)}: {_show(part)} is not a section")
        try:
            node[parts[-1]] = yaml.safe_load(raw) if raw.strip() else ""
        except (yaml.YAMLError, ValueError, RecursionError):  # ValueError: an int of > 4300 digits
            node[parts[-1]] = raw.strip()  # not YAML (a glob *.jsonl, an unclosed [): the text as given
    return out


def merge(base: dict, override: dict) -> dict:
    out = dict(base)
    for k, v in override.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def load_config(path: str | Path | None = None, overrides: list[str] = (), base: Config | None = None) -> Config:
    """Read a YAML config (or start from ``base``, default Config()) and apply ``--set`` overrides."""
    values = base.to_dict() if base is not None else {}
    where: dict[str, str] = {}
    if path is not None:
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as e:
            raise UserError(f"cannot read config {path}: {e.strerror}") from None
        except UnicodeDecodeError as e:
            raise UserError(f"{path}: not UTF-8 text (byte {e.start})") from None
        try:
            loaded = yaml.safe_load(text) or {}
            where = _key_lines(text, str(path))
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            line = f":{mark.line + 1}" if mark else ""
            raise UserError(f"{path}{line}: not valid YAML ({_yaml_problem(e)})") from None
        except (ValueError, RecursionError) as e:  # an int of > 4300 digits; nesting deeper than Python's stack
            raise UserError(f"{path}: not a usable config ({_yaml_problem(e)})") from None
        if not isinstance(loaded, dict):
            raise UserError(f"{path}: expected a mapping of config keys at the top level")
        values = merge(values, loaded)
    sets = parse_set(list(overrides))
    for item in overrides:  # a value given on the command line is not the file's line
        where[item.split("=", 1)[0].strip()] = "--set: "
    for key, base in (("lr", "base_lr"), ("warmup_steps", "base_warmup_steps")):
        given = sets.get("optim") or {}
        if key in given and base not in given and isinstance(values.get("optim"), dict):
            values["optim"][base] = None  # a new lr / warm-up is the one given, not a saved run's base
    if path is not None and "model_given" in loaded:  # a run's resolved config.yaml: what its user gave
        given = set(loaded["model_given"] or [])
    elif path is not None and isinstance(loaded.get("model"), dict):
        given = set(loaded["model"])
    else:
        given = set(values.get("model_given") or [])
    values["model_given"] = sorted(given | set(sets.get("model") or {}))
    try:
        values = merge(values, sets)
        return from_dict(values, where)
    except RecursionError:  # a YAML value that contains itself, given both in the file and in --set
        raise UserError("the config nests too deeply (a YAML alias that contains itself?)") from None
