"""From a Config to loaders: prepare (or reuse) the shards, open the splits, build the batch stream.

    data = build_data(cfg, plan)         # plan: micro-batch size or token budget
    batch = data.train.next_batch()      # dict of tensors + "n_targets"
    for batch in data.eval_loader("valid").eval_batches(): ...
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from bigbatch.config import Config
from bigbatch.data.batching import ExampleLoader
from bigbatch.data.loader import PackedLMLoader
from bigbatch.data.prepare import PrepareSpec, is_prepared, prepare, prepared_dir
from bigbatch.data.shards import ShardSet, read_manifest
from bigbatch.data.sources import Fields
from bigbatch.data.tokenizer import ByteTokenizer, load_tokenizer_file
from bigbatch.distributed.process import wait_for_file
from bigbatch.errors import UserError


def source_bytes(source: str) -> int:
    """About how many bytes of text ``source`` holds (file sizes; compressed files counted x4)."""
    from bigbatch.data.builtin import builtin_bytes
    from bigbatch.data.sources import expand, fingerprint_files

    if source.startswith("builtin:"):
        return builtin_bytes(source[len("builtin:"):])
    total = 0
    for name, size, _ in fingerprint_files(expand(source)):
        total += size * (4 if name.endswith((".gz", ".zst", ".xz", ".bz2")) else 1)
    return total


def vocab_for(n_bytes: int, task: str = "lm") -> int:
    """Vocabulary size for a corpus of ``n_bytes``: 4k at 1 MB, x2 per 10x, in [2k, 32k], a multiple of 64.

    Translation takes half (2k at 2 MB): every target token pays d_model x vocab in the output layer, the
    largest matrix of a small translator, and low-resource translation scores better with fewer merges
    (Sennrich & Zhang 2019). Measured on builtin:gettext:de, 600 s: 2k entries 33.5 test BLEU, 5k 23.1
    (docs/quality.md)."""
    at_mb, size = (2000, 2e6) if task == "translate" else (4000, 1e6)
    v = at_mb * 2 ** math.log10(max(n_bytes, 1) / size)
    return -(-int(min(max(v, 2000), 32000)) // 64) * 64


def resolve_before_data(cfg: Config) -> tuple[Config, list[str]]:
    """data.tokenizer and data.vocab_size (they are part of the shards' fingerprint)."""
    notes = []
    d = cfg.data
    if cfg.task == "vision":
        return _resolve_images(cfg)
    if cfg.task == "audio":
        return _resolve_audio(cfg)
    if d.augment not in ("auto", "none"):
        raise UserError(f"data.augment={d.augment} applies to task=vision or audio, not task={cfg.task}")
    if d.tokenizer in ("pixels", "pcm16"):
        raise UserError(f"data.tokenizer={d.tokenizer} is for task={'vision' if d.tokenizer == 'pixels' else 'audio'}, "
                        f"not task={cfg.task}")
    if d.tokenizer == "auto":  # bytes only when asked: BPE won on code too (1.56 vs 1.90 bits/byte, docs/quality.md)
        cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, tokenizer="bpe"))
        notes.append(f"data.tokenizer=bpe (task {cfg.task}: subwords trained on the training split)")
    if cfg.data.vocab_size == 0:
        if cfg.data.tokenizer in ("bpe", "unigram"):
            n = source_bytes(cfg.data.source)
            cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, vocab_size=vocab_for(n, cfg.task)))
            notes.append(f"data.vocab_size={cfg.data.vocab_size} (source ~{n / 1e6:,.1f} MB)")
        else:
            # unused by byte / file tokenizers; a fixed value keeps the fingerprint stable
            cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, vocab_size=8000))
    return cfg, notes


def _resolve_images(cfg: Config) -> tuple[Config, list[str]]:
    """task=vision: pixels as tokens, and the image size / channels / augmentation the shards are made with."""
    from bigbatch.data.images import BUILTIN_IMAGES

    d, m, notes = cfg.data, cfg.model, []
    if d.tokenizer not in ("auto", "pixels"):
        raise UserError(f"data.tokenizer={d.tokenizer}: task=vision reads pixels (leave data.tokenizer unset or pixels)")
    if d.augment == "shift":
        raise UserError("data.augment=shift is for audio; task=vision takes crop_flip, crop or none")
    name = d.source[len("builtin:"):] if d.source.startswith("builtin:") else None
    if name is not None and name not in BUILTIN_IMAGES:
        raise UserError(f"data.source={d.source} is not an image data set; task=vision reads builtin:fashion-mnist, "
                        "builtin:digits or a folder of images (one sub-folder per class)")
    size, channels, augment = BUILTIN_IMAGES[name] if name else (32, 3, "crop_flip")
    model = {}
    if not m.image_size:
        model["image_size"] = size
        notes.append(f"model.image_size={size}" + ("" if name else " (images resized on the shorter side, centre-cropped)"))
    if not m.channels:
        model["channels"] = channels
        notes.append(f"model.channels={channels}")
    data = {"tokenizer": "pixels", "vocab_size": 256}
    if d.augment == "auto":
        data["augment"] = augment
        notes.append(f"data.augment={augment}" + ("" if augment == "crop_flip" else " (no flips: a mirrored digit is "
                                                                                   "another shape)"))
    cfg = dataclasses.replace(cfg, data=dataclasses.replace(d, **data), model=dataclasses.replace(m, **model))
    return cfg, notes


def _resolve_audio(cfg: Config) -> tuple[Config, list[str]]:
    """task=audio: 16-bit samples as tokens, the sample rate and clip length the shards are made with."""
    d, m, notes = cfg.data, cfg.model, []
    if d.tokenizer not in ("auto", "pcm16"):
        raise UserError(f"data.tokenizer={d.tokenizer}: task=audio reads 16-bit samples (leave data.tokenizer unset)")
    if d.source.startswith("builtin:") and d.source != "builtin:spoken-digits":
        raise UserError(f"data.source={d.source} is not an audio data set; task=audio reads builtin:spoken-digits or "
                        "a folder of .wav files (one sub-folder per class)")
    if d.augment not in ("auto", "none", "shift"):
        raise UserError(f"data.augment={d.augment} does not apply to audio: expected shift or none")
    model = {}
    if not m.sample_rate:
        model["sample_rate"] = 16000
        notes.append("model.sample_rate=16000")
    if not m.clip_seconds:
        model["clip_seconds"] = 1.0
        notes.append("model.clip_seconds=1 (longer clips keep their loudest second)")
    if not m.patch_size:
        model["patch_size"] = 16 if m.n_mels % 16 == 0 else m.n_mels
        notes.append(f"model.patch_size={model['patch_size']} mel bins x {m.patch_frames} frames")
    data = {"tokenizer": "pcm16", "vocab_size": 65536}
    if d.augment == "auto":
        data["augment"] = "shift"
        notes.append("data.augment=shift")
    cfg = dataclasses.replace(cfg, data=dataclasses.replace(d, **data), model=dataclasses.replace(m, **model))
    return cfg, notes


def prepare_spec(cfg: Config) -> PrepareSpec:
    """What to prepare for ``cfg`` (an unset tokenizer / vocabulary resolved first: resolve_before_data)."""
    cfg = resolve_before_data(cfg)[0]
    d = cfg.data
    fields = Fields(task=cfg.task, text=d.text_field, label=d.label_field, src=d.src_field, tgt=d.tgt_field,
                    text_per_line=d.text_per_line, skip_bad_rows=d.skip_bad_rows)
    return PrepareSpec(source=d.source, task=cfg.task, valid_source=d.valid_source, test_source=d.test_source,
                       tokenizer=d.tokenizer, vocab_size=d.vocab_size, fields=fields, shard_tokens=d.shard_tokens,
                       workers=max(d.num_workers, 1), tokenizer_sample_mb=d.tokenizer_sample_mb,
                       image_size=cfg.model.image_size, channels=cfg.model.channels,
                       sample_rate=cfg.model.sample_rate, clip_samples=int(cfg.model.clip_seconds * cfg.model.sample_rate))


def shard_dir_for(cfg: Config, progress: bool = True, preparer: bool = True) -> Path:
    """The prepared shards of the config's data: reused when unchanged, prepared otherwise.

    With several processes on a node only one (``preparer``) prepares; the others wait for its
    manifest on disk (no collective whose timeout a long preparation could outlast).
    """
    spec = prepare_spec(cfg)
    if preparer:
        return prepare(spec, cfg.data.shard_dir, progress=progress, replace=False)
    out, fp = prepared_dir(spec, cfg.data.shard_dir)
    while not is_prepared(out, fp):
        wait_for_file(out / "manifest.json", f"local rank 0 to prepare {out}")
        time.sleep(0.5)  # a manifest of an earlier fingerprint may be replaced
    return out


def tokenizer_of(directory: Path, kind: str | None = None):
    """The tokenizer saved beside shards or in a run directory: tokenizer.json, or bytes where ``kind`` is
    byte (or not known). A trained tokenizer that is missing is an error, never bytes in its place."""
    if kind == "pixels":
        from bigbatch.data.images import PixelTokenizer

        return PixelTokenizer()
    if kind == "pcm16":
        from bigbatch.data.audio import PCMTokenizer

        return PCMTokenizer()
    path = Path(directory) / "tokenizer.json"
    if not path.exists():
        if kind not in (None, "byte"):
            raise UserError(f"{path}: missing, and these shards were tokenised with a {kind} tokenizer; "
                            "prepare the data again (delete the directory)")
        return ByteTokenizer()
    tok = load_tokenizer_file(path)
    tok.kind = kind or tok.kind
    return tok


@dataclass
class TaskData:
    cfg: Config
    shard_dir: Path
    manifest: dict
    tokenizer: object
    train: object
    micro: int
    rank: int = 0
    world_size: int = 1

    @property
    def labels(self) -> list[str]:
        return self.manifest["labels"]

    def loader(self, split: str, shuffle: bool = False, seed: int = 0):
        cfg, shards = self.cfg, ShardSet(self.shard_dir, split)
        if cfg.task == "lm":
            return PackedLMLoader(shards, cfg.data.seq_len, self.micro, seed, self.rank, self.world_size, shuffle,
                                  cfg.data.document_mask, self.tokenizer.eos_id)
        tokens, size = (self.micro, None) if cfg.train.micro_batch_tokens else (None, self.micro)
        augment = cfg.data.augment if shuffle and cfg.task in ("vision", "audio") else "none"  # training batches only
        special = None
        if cfg.model.decoder_start_id is not None:  # the decoder starts from this id instead of the tokenizer's bos
            special = {**shards.manifest["special_ids"], "bos": cfg.model.decoder_start_id}
        return ExampleLoader(shards, cfg.task, cfg.model.max_len, tokens, size, seed, self.rank, self.world_size, shuffle,
                             special_ids=special, augment=augment)

    def assets(self) -> dict[str, bytes]:
        """What a checkpoint carries so it stands alone: tokenizer.json (when not bytes), labels.json."""
        out, tok = {}, self.shard_dir / "tokenizer.json"
        if tok.exists():
            out["tokenizer.json"] = tok.read_bytes()
        if self.labels:
            out["labels.json"] = (json.dumps(self.labels) + "\n").encode()
        return out

    def save_to_run(self, run_dir: Path) -> None:
        """Copy what generate / translate / classify need later: tokenizer.json, labels.json."""
        tok = self.shard_dir / "tokenizer.json"
        if tok.exists():
            shutil.copyfile(tok, Path(run_dir) / "tokenizer.json")
        if self.labels:
            (Path(run_dir) / "labels.json").write_text(json.dumps(self.labels) + "\n")


def build_data(cfg: Config, micro: int, rank: int = 0, world_size: int = 1, progress: bool = True,
               preparer: bool = True) -> TaskData:
    """Prepare or reuse shards and open the training stream (``micro`` rows, examples or tokens per micro-batch).

    ``rank`` of ``world_size`` reads its own part of every epoch; ``preparer`` False waits for another
    process to prepare.
    """
    shard_dir = shard_dir_for(cfg, progress, preparer)
    manifest = read_manifest(shard_dir)
    tokenizer = tokenizer_of(shard_dir, manifest["tokenizer"]["kind"])
    data = TaskData(cfg, shard_dir, manifest, tokenizer, None, micro, rank, world_size)
    data.train = data.loader("train", shuffle=True, seed=cfg.train.seed)
    if cfg.task not in ("lm", "vision", "audio"):  # images and clips are all the same size
        data.train.check_bucketing()
    return data
