"""Task-aware defaults: every config key left unset (None / "auto" / 0) is resolved from the task, the data
and the budget, printed at start-up and saved in config.yaml, so a config that names only the task, the
data and ``train.max_time_s`` trains a sensible model.

    resolve_before_data(cfg)              tokenizer and its vocabulary (data/pipeline.py: they decide the shards)
    resolve_from_data(cfg, manifest, ...) model size, max_len, batch, run length, regularisation, lr, cadences

The numbers below are rules of thumb of the field, checked on this project's CPUs (docs/quality.md):
    vocabulary   4k entries at 1 MB of text, doubling per 10x (2k .. 32k), like fairseq's and
                 sentencepiece's usual 8k-32k for 10 MB - 1 GB corpora
    model size   the largest row of MODEL_TABLE whose non-embedding parameters the run can feed with
                 TOKENS_PER_PARAM tokens (Hoffmann et al. 2022 give ~20 for language models) within its
                 budget: epochs x training tokens, train.max_tokens, or train.max_time_s x an estimate of
                 this device's tokens/s from its measured matmul speed
    lr           2e-3 at d_model 256, scaled by (256 / d_model)^0.5 (AdamW, a 3% warm-up, then decay): at
                 1.4e-3 the 128-wide classifier and translator were still far from converged at the end of a
                 600 s budget, and the language model trained better at 3e-3 than at 2e-3 (docs/quality.md)
    regularise   label smoothing 0.1 for classify / translate (Vaswani et al. 2017); dropout 0.1 only when
                 the run sees each training example DROPOUT_PASSES times or more (a shorter run underfits:
                 dropout costs it more than it saves); weight decay on matrices only, never on biases and
                 norms (optim.param_groups)
"""

from __future__ import annotations

import dataclasses
import math
import sys
from pathlib import Path

import numpy as np

from bigbatch.config import Config
from bigbatch.errors import UserError
from bigbatch.tasks import get_task

# (d_model, n_layers); n_heads = d_model / 64
MODEL_TABLE = [(128, 2), (256, 2), (256, 4), (384, 6), (512, 8), (768, 12)]
TOKENS_PER_PARAM = 20
# training tokens/s ~ this x matmul peak / (6 x weights): 0.44 measured for the 128 x 2 classifier on
# builtin:debian-descriptions (28k tokens/s at a 150 GFLOP/s matmul peak, 2 cores), but an AVX-512 machine
# of the same kind measures a peak of ~300 GFLOP/s at n=1024 where the 128 x 2+2 translator trained at
# 26k tokens/s (594k weights a token: ~0.3); 0.25 keeps the estimate of the tokens a budget sees from
# running ahead of the real run (it chooses the model size and whether dropout pays)
CPU_EFFICIENCY = 0.25
# dropout only for runs that see each example this many times or more: a budget-bound run underfits, and
# dropout slows its learning (gettext:de, 600 s, 17 passes: no dropout 33.5 test BLEU, dropout 0.1 21.6)
DROPOUT_PASSES = 20
# vision (ViT from scratch): the largest row that sees each training image VISION_PASSES times in the
# budget (small-image ViTs train for tens of epochs; random crops and flips make the repeats useful)
VISION_TABLE = [(64, 4), (128, 4), (192, 6), (256, 6), (384, 8)]
VISION_PASSES = 6
VISION_PARAMS_PER_EXAMPLE = 200  # ... and has at most this many weights per training example (1,232 digits: 64 x 4)
VISION_EPOCHS = 20  # an image run bounded by nothing else
VISION_BATCH = 256  # images per step (at most an eighth of the training split)


def _replace(cfg: Config, section: str, **values) -> Config:
    return dataclasses.replace(cfg, **{section: dataclasses.replace(getattr(cfg, section), **values)})


# --------------------------------------------------------------------------- once the data is known


@dataclasses.dataclass
class DataStats:
    """What the resolution needs from a prepared directory: sizes and the lengths of training examples."""

    n_examples: int
    n_tokens: int
    length_p99: int  # classify: the text; translate: max(source, target + 2); lm: 0
    n_labels: int
    vocab_size: int = 8000  # of the tokenizer the shards were made with
    n_valid: int = 0
    n_test: int = 0

    @classmethod
    def from_shards(cls, shard_dir: Path, manifest: dict, task: str) -> "DataStats":
        train = manifest["splits"]["train"]
        p99 = 0
        if task != "lm" and not get_task(task).media:  # images and clips are all the same size
            lengths = []
            step = max(1, train["n_examples"] // 20000)  # a strided sample of ~20k: O(1) memory on any size
            for meta in train["shards"]:
                if not meta["n_examples"]:
                    continue
                index = np.load(Path(shard_dir) / meta["idx"], mmap_mode="r")
                sample = index[::step]
                n = sample["length"] if task == "classify" else np.maximum(sample["length"], sample["tgt_length"] + 2)
                lengths.append(np.asarray(n))
            p99 = int(np.percentile(np.concatenate(lengths), 99)) if lengths else 0
        splits = manifest["splits"]
        return cls(train["n_examples"], train["n_tokens"], p99, len(manifest.get("labels") or []),
                   manifest["tokenizer"]["vocab_size"], splits["valid"]["n_examples"], splits["test"]["n_examples"])


def _round_up(n: int, k: int) -> int:
    return -(-n // k) * k


def _heads_for(d_model: int) -> int:
    """d_model / 64 heads where 64 divides d_model, else the most heads (at least 32 wide) that divide it."""
    if d_model % 64 == 0:
        return d_model // 64
    return next(h for h in range(max(1, d_model // 32), 0, -1) if d_model % h == 0)


def _block_params(d: int, layers: int, task: str) -> int:
    per_block = 12 * d * d
    return per_block * layers * (2 if task == "translate" else 1)  # encoder + decoder


def estimate_tokens_per_s(peak_flops: float, d: int, layers: int, task: str, vocab: int) -> float:
    """Training tokens/s of a model on a device of ``peak_flops``: 6 FLOPs per weight per token."""
    if task == "translate":  # a source token meets the encoder, a target token the decoder (cross-attention
        # too: 16 d^2 a layer) and the output projection; the tokens counted are both, half each
        weights = (12 * d * d * layers + 16 * d * d * layers + d * vocab) / 2
    else:
        weights = _block_params(d, layers, task) + (0 if get_task(task).labelled else d * vocab)  # output layer
    return CPU_EFFICIENCY * peak_flops / (6.0 * max(weights, 1))


def choose_model(task: str, budget_tokens: float | None, time_s: float | None, peak_flops: float | None,
                 vocab: int) -> tuple[int, int, float]:
    """(d_model, n_layers, tokens the run can see) from MODEL_TABLE: the largest row it can feed."""
    best = None
    for d, layers in MODEL_TABLE:
        tokens = budget_tokens if budget_tokens is not None else math.inf
        if time_s is not None and peak_flops:
            tokens = min(tokens, time_s * estimate_tokens_per_s(peak_flops, d, layers, task, vocab))
        if best is None or tokens >= TOKENS_PER_PARAM * _block_params(d, layers, task):
            best = (d, layers, tokens)
    return best


def choose_vision_model(stats: DataStats, budget_tokens: float | None, time_s: float | None,
                        peak_flops: float | None) -> tuple[int, int, float]:
    """(d_model, n_layers, passes over the images) of the largest VISION_TABLE row that sees every training
    example VISION_PASSES times within the budget and has at most VISION_PARAMS_PER_EXAMPLE weights per
    training example (the smallest row when none does)."""
    best = None
    for d, layers in VISION_TABLE:
        tokens = budget_tokens if budget_tokens is not None else math.inf
        if time_s is not None and peak_flops:
            tokens = min(tokens, time_s * estimate_tokens_per_s(peak_flops, d, layers, "vision", 0))
        passes = tokens / max(stats.n_tokens, 1)
        small_enough = _block_params(d, layers, "vision") <= VISION_PARAMS_PER_EXAMPLE * stats.n_examples
        if best is None or (passes >= VISION_PASSES and small_enough):
            best = (d, layers, passes)
    return best


def default_epochs(train_tokens: int) -> int:
    """Passes over the data when nothing else bounds the run: ~30M tokens in all, 1 to 50 epochs."""
    return int(min(max(math.ceil(3e7 / max(train_tokens, 1)), 1), 50))


def resolve_from_data(cfg: Config, stats: DataStats, world_size: int = 1,
                      peak_flops: float | None = None) -> tuple[Config, list[str]]:
    """Fill every unset key that depends on the data and the budget; returns the config and one note per key.
    ``peak_flops``: one device's measured matmul speed (the run has ``world_size`` of them)."""
    notes: list[str] = []
    _check_data(cfg, stats)
    t, m = cfg.train, cfg.model
    if get_task(cfg.task).media:
        cfg, stats, image_notes = _resolve_patches(cfg, stats)
        notes += image_notes
    elif cfg.task != "lm" and m.max_len is None:
        max_len = int(min(max(_round_up(stats.length_p99, 8), 16), 512))
        cfg = _replace(cfg, "model", max_len=max_len)
        notes.append(f"model.max_len={max_len} (99th percentile of training lengths {stats.length_p99})")
    elif m.max_len is None:
        cfg = _replace(cfg, "model", max_len=cfg.data.seq_len)
    cfg, batch_notes = _resolve_batch(cfg, stats, world_size)
    notes += batch_notes
    bounded = any(x is not None for x in (t.max_steps, t.max_tokens, t.max_time_s, t.epochs))
    if t.epochs is None and not bounded:
        if get_task(cfg.task).media:
            cfg = _replace(cfg, "train", epochs=float(VISION_EPOCHS))
            notes.append(f"train.epochs={VISION_EPOCHS} ({stats.n_examples:,} training examples)")
        else:
            cfg = _replace(cfg, "train", epochs=float(default_epochs(stats.n_tokens)))
            notes.append(f"train.epochs={cfg.train.epochs:g} ({stats.n_tokens:,} training tokens)")
    _warn_batch_larger_than_data(cfg, stats)
    cfg, model_notes = _resolve_model(cfg, stats, peak_flops * world_size if peak_flops else None)
    notes += model_notes
    cfg, run_notes = _resolve_run(cfg, stats)
    return cfg, notes + run_notes


def _resolve_patches(cfg: Config, stats: DataStats) -> tuple[Config, DataStats, list[str]]:
    """vision / audio: the patch size, and max_len = the encoder's tokens (patches + class token); the training
    "tokens" are then examples x that (what tokens/s, budgets and the model-size rule count)."""
    from bigbatch.nn.models import default_patch

    m, notes = cfg.model, []
    if cfg.task == "vision" and not m.image_size:
        raise UserError("model.image_size is unset: resolve the data keys first (resolve_before_data)")
    if cfg.task == "audio":
        from bigbatch.nn.audio import audio_geometry

        try:
            _, gf, gt = audio_geometry(m)
        except ValueError as e:
            raise UserError(str(e)) from None
        n_tokens = gf * gt + (m.pool == "cls")
        if m.max_len is not None and m.max_len != n_tokens:
            raise UserError(f"model.max_len={m.max_len}: the audio model reads {n_tokens} patches; leave it unset")
        cfg = _replace(cfg, "model", max_len=n_tokens)
        notes.append(f"{gf} x {gt} = {gf * gt} spectrogram patches a clip")
        return cfg, dataclasses.replace(stats, n_tokens=stats.n_examples * n_tokens), notes
    patch = m.patch_size or default_patch(m.image_size, m.patch_embed == "conv")
    if m.patch_embed == "conv" and (patch < 2 or patch & (patch - 1)):
        raise UserError(f"model.patch_embed=conv needs a power-of-2 patch size; {m.image_size}-pixel images have "
                        f"none >= 2 (got {patch}): set model.image_size to a multiple of 2, 4 or 8")
    if m.image_size % patch:
        raise UserError(f"model.patch_size={patch} does not divide model.image_size={m.image_size}")
    n_tokens = (m.image_size // patch) ** 2 + (m.pool == "cls")
    if not m.patch_size:
        notes.append(f"model.patch_size={patch} ({m.image_size // patch}x{m.image_size // patch} patches)")
    if m.max_len is not None and m.max_len != n_tokens:
        raise UserError(f"model.max_len={m.max_len}: a ViT of {m.image_size}-pixel images in {patch}-pixel patches "
                        f"reads {n_tokens} tokens; leave model.max_len unset")
    cfg = _replace(cfg, "model", patch_size=patch, max_len=n_tokens)
    return cfg, dataclasses.replace(stats, n_tokens=stats.n_examples * n_tokens), notes


def _check_data(cfg: Config, stats: DataStats) -> None:
    if get_task(cfg.task).labelled and stats.n_labels < 2:
        raise UserError(f"data.source={cfg.data.source!r}: the label column '{cfg.data.label_field}' has "
                        f"{stats.n_labels} distinct value(s); classification needs at least 2")
    small = 50 if cfg.task != "lm" else 2
    if 0 < stats.n_valid < small:
        print(f"warning: the validation split holds {stats.n_valid} example(s): checkpoints/best and early stopping "
              "are chosen on them; give data.valid_source or more data", file=sys.stderr)
    if stats.n_test == 0:
        print("warning: the test split is empty (bigbatch eval --split test will refuse); give data.test_source "
              "or more data", file=sys.stderr)


def _warn_batch_larger_than_data(cfg: Config, stats: DataStats) -> None:
    """A global batch larger than the whole training split repeats examples inside every step: say so."""
    t = cfg.train
    if cfg.task == "lm":
        batch = t.global_batch_tokens or (t.global_batch_size or 16) * cfg.data.seq_len
        key = "train.global_batch_tokens" if t.global_batch_tokens else "train.global_batch_size"
    else:
        batch, key = t.global_batch_tokens or 0, "train.global_batch_tokens"
    if batch > stats.n_tokens:
        print(f"warning: {key} gives {batch:,} tokens per step but the training split holds {stats.n_tokens:,}; "
              "every step repeats examples (lower it, or leave it unset to size it to the data)", file=sys.stderr)


def _resolve_batch(cfg: Config, stats: DataStats, world_size: int) -> tuple[Config, list[str]]:
    """classify / translate: token budgets sized to the data (fairseq's --max-tokens style)."""
    t = cfg.train
    if get_task(cfg.task).media and not (t.global_batch_size or t.micro_batch_size):
        if t.micro_batch_tokens or t.global_batch_tokens:
            raise UserError(f"task={cfg.task} batches count examples: set train.global_batch_size / "
                            "micro_batch_size, not *_batch_tokens")
        total = min(VISION_BATCH, max(2 ** int(math.log2(max(stats.n_examples // 8, 1))), 8))
        total = _round_up(total, world_size)
        return _replace(cfg, "train", global_batch_size=total), [f"train.global_batch_size={total} examples"]
    if cfg.task == "lm" or get_task(cfg.task).media or t.micro_batch_tokens or t.micro_batch_size or t.global_batch_size:
        return cfg, []
    longest = _round_up(cfg.model.max_len + 1, 8)
    total = t.global_batch_tokens
    notes = []
    if total is None:
        # ~1000 steps per pass over the data, 2k .. 32k tokens; at least one longest example per rank
        total = int(2 ** round(math.log2(max(stats.n_tokens / 1000, 1))))
        total = min(max(total, 2048), 32768, max(stats.n_tokens // 8, 1))  # a tiny data set: >= 8 steps an epoch
    micro = max(min(total // world_size, 8192), longest)
    total = max(_round_up(total, micro * world_size), micro * world_size)
    if t.global_batch_tokens is None:
        notes.append(f"train.global_batch_tokens={total:,} ({stats.n_tokens:,} training tokens)")
    notes.append(f"train.micro_batch_tokens={micro:,}")
    return _replace(cfg, "train", global_batch_tokens=total, micro_batch_tokens=micro), notes


def _steps_per_epoch(cfg: Config, stats: DataStats) -> float:
    t = cfg.train
    if cfg.task == "lm":
        rows = t.global_batch_tokens // cfg.data.seq_len if t.global_batch_tokens else (t.global_batch_size or 16)
        return stats.n_tokens / (rows * cfg.data.seq_len)
    if t.global_batch_tokens:
        return stats.n_tokens * 1.15 / t.global_batch_tokens  # ~15% padding after length bucketing
    return stats.n_examples / (t.global_batch_size or t.micro_batch_size or 32)


def _budget_tokens(cfg: Config, stats: DataStats) -> float | None:
    """Training tokens the run's epochs / max_tokens / max_steps allow (the nearest), None when none is set."""
    t = cfg.train
    budgets = [x for x in ((t.epochs or 0) * stats.n_tokens, t.max_tokens,
                           (t.max_steps or 0) * stats.n_tokens / max(_steps_per_epoch(cfg, stats), 1e-9)) if x]
    return min(budgets) if budgets else None


def _resolve_model(cfg: Config, stats: DataStats, peak_flops: float | None) -> tuple[Config, list[str]]:
    m, t = cfg.model, cfg.train
    notes = []
    budget = _budget_tokens(cfg, stats)
    if (m.d_model is None or m.n_layers is None) and get_task(cfg.task).media:
        d, layers, passes = choose_vision_model(stats, budget, t.max_time_s, peak_flops)
        d, layers = m.d_model or d, m.n_layers or layers
        cfg = _replace(cfg, "model", d_model=d, n_layers=layers)
        notes.append(f"model.d_model={d}, model.n_layers={layers}" + (
            f" (about {passes:.3g} passes over the training examples in the budget; the largest of "
            f"{', '.join(f'{a}x{b}' for a, b in VISION_TABLE)} with >= {VISION_PASSES} and <= "
            f"{VISION_PARAMS_PER_EXAMPLE} weights an example)" if math.isfinite(passes) else ""))
    elif m.d_model is None or m.n_layers is None:
        d, layers, seen = choose_model(cfg.task, budget, t.max_time_s, peak_flops, stats.vocab_size)
        if m.d_model is not None:
            d = m.d_model
        if m.n_layers is not None:
            layers = m.n_layers
        cfg = _replace(cfg, "model", d_model=d, n_layers=layers)
        notes.append(f"model.d_model={d}, model.n_layers={layers} (about {seen / 1e6:,.1f}M training tokens "
                     "in the budget)" if math.isfinite(seen) and seen else f"model.d_model={d}, model.n_layers={layers}")
    if cfg.model.n_heads is None:
        cfg = _replace(cfg, "model", n_heads=_heads_for(cfg.model.d_model))
        notes.append(f"model.n_heads={cfg.model.n_heads}")
    if cfg.model.dropout is None:
        passes = expected_passes(cfg, stats, budget, peak_flops)
        cfg = _replace(cfg, "model", dropout=0.1 if passes >= DROPOUT_PASSES else 0.0)
        if not math.isfinite(passes):
            why = "no budget or device speed bounds the passes over the data"
        else:
            why = f"about {passes:.2g} passes" if passes < 10 else f"about {passes:,.0f} passes"
            why += f" over the training data; dropout from {DROPOUT_PASSES}"
        notes.append(f"model.dropout={cfg.model.dropout:g} ({why})")
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model))  # checks d_model % n_heads etc.
    if cfg.task == "lm" and cfg.data.seq_len > cfg.model.max_len:
        raise UserError(f"data.seq_len={cfg.data.seq_len} is longer than model.max_len={cfg.model.max_len}")
    return cfg, notes


def expected_passes(cfg: Config, stats: DataStats, budget: float | None, peak_flops: float | None) -> float:
    """How many times the run will see each training example: its token budget (or its time budget x the
    estimated tokens/s of the resolved model on this device) over the training tokens; inf when unbounded."""
    m, t = cfg.model, cfg.train
    tokens = budget if budget is not None else math.inf
    if t.max_time_s and peak_flops:
        layers = max(m.n_encoder_layers or m.n_layers, m.n_decoder_layers or m.n_layers)
        rate = estimate_tokens_per_s(peak_flops, m.d_model, layers, cfg.task, stats.vocab_size)
        tokens = min(tokens, t.max_time_s * rate)
    return tokens / max(stats.n_tokens, 1)


def _resolve_run(cfg: Config, stats: DataStats) -> tuple[Config, list[str]]:
    """Run length, cadences, label smoothing, learning rate and schedule."""
    t, o = cfg.train, cfg.optim
    notes, train, optim = [], {}, {}
    if t.epochs is not None:  # with max_steps too: whichever ends first
        epoch_steps = max(1, math.ceil(t.epochs * _steps_per_epoch(cfg, stats)))
        if t.max_steps is None or epoch_steps < t.max_steps:
            train["max_steps"] = epoch_steps
            notes.append(f"train.max_steps={epoch_steps:,} ({t.epochs:g} epochs)")
    max_steps = train.get("max_steps", t.max_steps)
    if max_steps is None and t.max_tokens:  # bounded by tokens: the steps that many tokens take
        max_steps = math.ceil(t.max_tokens / max(stats.n_tokens / _steps_per_epoch(cfg, stats), 1))
    if t.eval_every is None:  # ~10 evaluations a run; a smoke run of < 50 steps only at its end
        train["eval_every"] = max_steps // 10 if max_steps and max_steps >= 50 else 0
        if t.max_time_s and t.eval_every_s is None:
            train["eval_every_s"] = t.max_time_s / 10
        notes.append("train.eval_every=" + (f"{train['eval_every']} steps" if train["eval_every"] else "0")
                     + (f", train.eval_every_s={train['eval_every_s']:g}" if "eval_every_s" in train else ""))
    if t.save_every is None:
        train["save_every"] = 0  # checkpoints at every evaluation (and the end)
    if t.label_smoothing is None:
        train["label_smoothing"] = 0.1 if cfg.task != "lm" else 0.0
        notes.append(f"train.label_smoothing={train['label_smoothing']:g}")
    if t.eval_batches is None and cfg.task == "lm":  # classify / translate / vision: a sample of train.eval_examples
        train["eval_batches"] = 20
    if o.lr is None and get_task(cfg.task).media:  # fashion-mnist, 128 x 4: train loss 1.57 at step 80 with 1e-3, 2.1 with 2.8e-3
        optim["lr"] = float(f"{1e-3 * math.sqrt(128 / cfg.model.d_model):.2g}")
        notes.append(f"optim.lr={optim['lr']:g} (patch Transformer, d_model {cfg.model.d_model})")
    elif o.lr is None:
        optim["lr"] = float(f"{2e-3 * math.sqrt(256 / cfg.model.d_model):.2g}")
        notes.append(f"optim.lr={optim['lr']:g} (d_model {cfg.model.d_model})")
    if o.schedule == "auto":
        optim["schedule"] = "wsd"
        notes.append(f"optim.schedule=wsd (decay over the last {o.decay_fraction:.0%} of the run)")
    if o.warmup_steps is None:
        steps = f" ({max(1, round(o.warmup_fraction * t.max_steps))} of {t.max_steps} steps)" if t.max_steps else ""
        notes.append(f"optim.warmup: the first {o.warmup_fraction:.0%} of the run{steps}")
    return dataclasses.replace(cfg, train=dataclasses.replace(t, **train),
                               optim=dataclasses.replace(o, **optim)), notes


# a resolved key derived from another: taken from the saved run only while its source is unset too
DERIVED_FROM = {("optim", "base_lr"): "lr", ("optim", "base_warmup_steps"): "warmup_steps",
                ("train", "max_steps"): "epochs", ("train", "eval_every_s"): "max_time_s",
                ("train", "eval_every"): "max_time_s"}


def fill_unset_from(saved: Config, cfg: Config) -> Config:
    """The keys ``cfg`` leaves to resolution, taken from ``saved`` (a run's resolved config.yaml), so that
    resuming a run with the config that started it gives the same model and run length. A value the user
    sets (a new lr, epochs, time budget) is never replaced, nor are the values derived from it."""
    sections = {}
    for name in ("model", "data", "train", "optim", "distill"):
        mine, theirs = getattr(cfg, name), getattr(saved, name)
        unset = {}
        for f in dataclasses.fields(mine):
            source = DERIVED_FROM.get((name, f.name))
            if source is not None and getattr(mine, source) is not None and getattr(mine, source) != getattr(theirs, source):
                continue
            if _is_unset(name, f.name, getattr(mine, f.name)):
                unset[f.name] = getattr(theirs, f.name)
        sections[name] = dataclasses.replace(mine, **unset)
    return dataclasses.replace(cfg, **sections)


def inherit_from_init(init: Config, init_dir, cfg: Config) -> Config:
    """A run that starts from the weights of ``init`` (train.init_from): its model is init's, except the keys this
    config gives (Config.model_given: dropout, a shorter max_len, pool, ...); the number of classes
    comes from this run's data; an unset (auto) data.tokenizer is init's, so the ids mean what they meant."""
    from pathlib import Path

    from bigbatch.config import DataConfig, ModelConfig

    default, mine = ModelConfig(), cfg.model
    if cfg.model_given is not None:
        changed = {k: getattr(mine, k) for k in cfg.model_given if hasattr(mine, k)}
    else:
        changed = {f.name: getattr(mine, f.name) for f in dataclasses.fields(mine)
                   if getattr(mine, f.name) != getattr(default, f.name)}
    model = dataclasses.replace(init.model, **{**changed, "num_classes": mine.num_classes, "quantized": None,
                                              "int8_layers": None})
    data = cfg.data
    if cfg.task == "lm" and data.seq_len == DataConfig().seq_len and model.max_len and data.seq_len > model.max_len:
        data = dataclasses.replace(data, seq_len=init.data.seq_len)  # the default is longer than its positions
    if data.tokenizer == "auto":
        init_dir = Path(init_dir)
        places = [init_dir, init_dir.parent.parent] if init_dir.parent.name == "checkpoints" else [init_dir]
        own = next((d / "tokenizer.json" for d in places if (d / "tokenizer.json").exists()), None)
        if init.data.tokenizer in ("byte", "pixels", "pcm16"):
            tokenizer = init.data.tokenizer
        elif own is not None:
            tokenizer = str(own.resolve())
        else:
            raise UserError(f"train.init_from={cfg.train.init_from}: no tokenizer.json beside its weights (it was "
                            f"trained with data.tokenizer={init.data.tokenizer}); set data.tokenizer to that run's")
        data = dataclasses.replace(data, tokenizer=tokenizer)
    return dataclasses.replace(cfg, model=model, data=data)


def _is_unset(section: str, key: str, value) -> bool:
    if value is None or value == "auto":
        return True
    return section == "data" and key == "vocab_size" and value == 0
