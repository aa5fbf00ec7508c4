"""`bigbatch prepare`: raw sources -> token shards, in parallel worker processes, resumably.

The sources are read once, in a fixed order, and cut into chunks of about ``shard_tokens``
tokens; chunk k of a source becomes shard k of each split. After each chunk the progress file
records how many records are done, so an interrupted prepare starts again after the last
finished chunk. The output directory is keyed by a fingerprint of the sources (names, sizes,
times), the tokenizer and the settings, so unchanged data is never tokenised twice.

Memory stays flat whatever the size of the data: records stream from the sources (a large text file
in blocks, data/sources.py), go to the workers in groups of bounded size, and leave as shards. Each
shard's SHA-256 is taken from the bytes as they are written and kept in the manifest; opening shards
later checks sizes and index headers only, ``verify_prepared`` (``bigbatch prepare --verify``)
re-hashes them all.
"""

from __future__ import annotations

import collections
import fcntl
import hashlib
import itertools
import json
import multiprocessing
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Iterator

import numpy as np
from tqdm import tqdm

from bigbatch.data import audio, images, sources
from bigbatch.data.builtin import builtin_fingerprint, builtin_records, split_of
from bigbatch.data.shards import (FORMAT, check_sizes, read_manifest, token_dtype, verify_shards, write_atomic,
                                  write_shard)
from bigbatch.data.sources import SPLIT_KEY, BadRows, Fields, expand, fingerprint_files, read_file
from bigbatch.data.tokenizer import ByteTokenizer, load_tokenizer_file, train_tokenizer
from bigbatch.errors import UserError

GROUP = 512  # records per work item sent to a worker
GROUP_CHARS = 4 << 20  # ... and at most about this much text, so a group of large text blocks stays a few MB
_GOLDEN = (5**0.5 - 1) / 2  # i * this mod 1 (i = 0, 1, ...) spreads any run of blocks evenly over [0, 1)


@dataclass
class PrepareSpec:
    source: str
    task: str = "lm"
    valid_source: str | None = None
    test_source: str | None = None
    tokenizer: str = "byte"
    vocab_size: int = 8000
    fields: Fields = field(default_factory=Fields)
    shard_tokens: int = 16_000_000
    workers: int = 2
    tokenizer_sample_mb: float = 20.0
    image_size: int = 0  # vision: every image is stored as image_size x image_size x channels pixels
    channels: int = 0
    sample_rate: int = 0  # audio: every clip is stored as clip_samples 16-bit samples at sample_rate
    clip_samples: int = 0


LABELLED = ("classify", "vision", "audio")  # tasks whose records carry a class label
MEDIA = ("vision", "audio")  # tasks whose records are decoded (images, clips) rather than tokenised


def cache_root() -> Path:
    return Path(os.environ.get("BIGBATCH_CACHE", Path.home() / ".cache" / "bigbatch"))


def _source_id(source: str) -> list:
    if source.startswith("builtin:"):
        return builtin_fingerprint(source[len("builtin:"):])
    return [source, fingerprint_files(expand(source))]


def fingerprint(spec: PrepareSpec) -> str:
    """Hash of everything the shards depend on."""
    parts = {"format": FORMAT, "task": spec.task, "fields": asdict(spec.fields), "shard_tokens": spec.shard_tokens,
             "sources": [_source_id(s) if s else None for s in (spec.source, spec.valid_source, spec.test_source)]}
    if spec.tokenizer in ("bpe", "unigram"):
        parts["tokenizer"] = [spec.tokenizer, spec.vocab_size, spec.tokenizer_sample_mb]
    elif spec.tokenizer == "byte":
        parts["tokenizer"] = "byte"
    else:
        tok_file = Path(spec.tokenizer).expanduser()
        try:
            tok_file = tok_file / "tokenizer.json" if tok_file.is_dir() else tok_file
            parts["tokenizer"] = hashlib.sha1(tok_file.read_bytes()).hexdigest() if tok_file.exists() else spec.tokenizer
        except OSError:  # unreadable, or a name too long: loading it says so in one line
            parts["tokenizer"] = spec.tokenizer
        if spec.task != "lm":
            parts["input_template"] = True  # model inputs carry the tokenizer's template ([CLS] ... [SEP])
    parts["fields"].pop("skip_bad_rows")
    if spec.task == "vision":
        parts["image"] = [spec.image_size, spec.channels]
    if spec.task == "audio":
        parts["audio"] = [spec.sample_rate, spec.clip_samples]
    if spec.task == "lm" and not spec.fields.text_per_line and not all(
            s is None or s.startswith("builtin:") for s in (spec.source, spec.valid_source, spec.test_source)):
        parts["text_block_bytes"] = sources.TEXT_BLOCK_BYTES  # where a large text file is cut into documents
    return hashlib.sha1(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def _records(source: str, split: str | None, spec: PrepareSpec, bad: BadRows) -> Iterator[tuple[str, dict]]:
    """(split, record) of one source; ``split`` fixed for an explicit valid/test source."""
    if source.startswith("builtin:"):
        for key, record in builtin_records(source[len("builtin:"):], spec.task):
            fixed = record.pop(images.FIXED_SPLIT, None)
            yield split or fixed or split_of(key), record
        return
    if spec.task in MEDIA:
        folder = images.image_folder if spec.task == "vision" else audio.wav_folder
        for key, record in folder(source, spec.fields.skip_bad_rows, bad):
            fixed = record.pop(images.FIXED_SPLIT, None)
            yield split or fixed or split_of(key), record
        return
    for path in expand(source):
        dict_splits = _dataset_dict_splits(path)
        for sub, fixed in dict_splits or [(path, split)]:
            for record in read_file(sub, spec.fields, bad):
                block = record.pop(SPLIT_KEY, None)  # a block of a large text file: split by position
                yield fixed or split or (block_split(*block) if block else
                                         split_of(record.get("text") or record.get("src", ""))), record


def block_split(name: str, index: int, valid: float = 0.05, test: float = 0.05) -> str:
    """Split of block ``index`` of the large text file ``name`` (its file name: stable across machines).

    A hash of the name offsets the golden-ratio sequence index * 0.618... mod 1, which fills [0, 1)
    evenly: any n blocks of a file give valid * n and test * n blocks to valid and test within 3, and
    every split has a block from 34 blocks on. (Independent hashes per block would leave the valid or
    the test split of a 100-block file empty about once in 85 files.) Same fractions as ``split_of``.
    """
    offset = int.from_bytes(hashlib.sha1(name.encode("utf-8")).digest()[:8], "big") / 2**64
    u = (offset + index * _GOLDEN) % 1.0
    return "valid" if u < valid else "test" if u < valid + test else "train"


def _groups(records: Iterator[tuple[str, dict]]) -> Iterator[list[tuple[str, dict]]]:
    """Work items for the tokenising workers: GROUP records, fewer when they pass GROUP_CHARS of text."""
    group, chars = [], 0
    for split, record in records:
        group.append((split, record))
        chars += sum(len(record.get(k, "")) for k in ("text", "src", "tgt"))
        if len(group) >= GROUP or chars >= GROUP_CHARS:
            yield group
            group, chars = [], 0
    if group:
        yield group


_HF_SPLITS = {"train": "train", "validation": "valid", "valid": "valid", "dev": "valid", "test": "test"}


def _dataset_dict_splits(path: Path) -> list[tuple[Path, str]] | None:
    """A DatasetDict saved with save_to_disk: its train / validation / test sub-datasets, each a fixed split."""
    listing = path / "dataset_dict.json" if path.is_dir() else None
    if listing is None or not listing.exists():
        return None
    try:
        names = json.loads(listing.read_text()).get("splits", [])
        unknown = [n for n in names if not isinstance(n, str) or n not in _HF_SPLITS]
    except (ValueError, TypeError, AttributeError):
        raise UserError(f"{listing}: not a datasets save_to_disk listing (expected {{\"splits\": [...]}})") from None
    if unknown:
        raise UserError(f"{path}: split {unknown[0]!r} is not one of {', '.join(_HF_SPLITS)}")
    return [(path / n, _HF_SPLITS[n]) for n in names]


def _streams(spec: PrepareSpec) -> list[tuple[str, str, str | None]]:
    """(name, source, fixed split) in processing order."""
    explicit = spec.valid_source or spec.test_source
    streams = [("main", spec.source, "train" if explicit else None)]
    if spec.valid_source:
        streams.append(("valid", spec.valid_source, "valid"))
    if spec.test_source:
        streams.append(("test", spec.test_source, "test"))
    return streams


def split_records(spec: PrepareSpec, split: str) -> Iterator[dict]:
    """The raw records of one split ("train", "valid" or "test"), streamed in reading order: dicts with
    "text" + "label" (classify), "src" + "tgt" (translate) or "text" (lm), split exactly as the shards are."""
    if split not in ("train", "valid", "test"):
        raise UserError(f"split {split!r}: expected train, valid or test")
    bad = BadRows()
    for _, source, fixed in _streams(spec):
        if fixed not in (None, split) and _only_split(source, fixed) == fixed:
            continue  # a whole source of another split: not read at all
        for s, record in _records(source, fixed, spec, bad):
            if s == split:
                yield record


def _only_split(source: str, fixed: str) -> str | None:
    """``fixed`` when every record of ``source`` read with it lands in that split (no DatasetDict inside)."""
    if source.startswith("builtin:") or not any(_dataset_dict_splits(p) for p in expand(source)):
        return fixed
    return None


def _build_tokenizer(spec: PrepareSpec, out: Path):
    if spec.tokenizer == "byte":
        return ByteTokenizer(), None
    media = {"vision": "pixels", "audio": "pcm16"}
    if spec.task in media or spec.tokenizer in media.values():
        if media.get(spec.task) != spec.tokenizer:
            raise UserError(f"data.tokenizer={spec.tokenizer} with task={spec.task}: images are read as pixels "
                            "(task=vision), audio as pcm16 samples (task=audio), text with a text tokenizer")
        return (images.PixelTokenizer() if spec.task == "vision" else audio.PCMTokenizer()), None
    if spec.tokenizer not in ("bpe", "unigram"):
        tok = load_tokenizer_file(spec.tokenizer)
        tok.save(out)
        return tok, out / "tokenizer.json"
    path = out / "tokenizer.json"
    if path.exists():  # trained by an interrupted run of the same fingerprint
        return load_tokenizer_file(path), path
    budget = spec.tokenizer_sample_mb * 1e6
    print(f"training a {spec.tokenizer} tokenizer ({spec.vocab_size} entries) on up to {spec.tokenizer_sample_mb:g} MB "
          f"of the training data", file=sys.stderr)

    def sample() -> Iterator[str]:
        seen = 0.0
        for split, rec in _records(spec.source, "train" if spec.valid_source else None, spec, BadRows()):
            if split == "train":
                for key in ("text", "src", "tgt"):
                    if key in rec:
                        seen += len(rec[key])
                        yield rec[key]
                if seen >= budget:
                    return

    tok = train_tokenizer(spec.tokenizer, sample(), spec.vocab_size)
    tmp = out / ".tokenizer.tmp"  # saved aside, then renamed: a kill mid-write leaves no half file for the check above
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    tok.save(tmp)
    os.replace(tmp / "tokenizer.json", path)
    tmp.rmdir()
    return tok, path


# the tokenizer and token dtype of a worker process, set once by _init_worker
_WORKER: dict = {}


def _init_worker(tokenizer_path: str | None, dtype: str, media: tuple[str, int, int] | None = None) -> None:
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    if media is not None:  # ("vision", image_size, channels) or ("audio", sample_rate, clip_samples)
        _WORKER["tok"] = images.PixelTokenizer() if media[0] == "vision" else audio.PCMTokenizer()
        _WORKER["media"] = media
    else:
        _WORKER["tok"] = ByteTokenizer() if tokenizer_path is None else load_tokenizer_file(tokenizer_path)
    _WORKER["dtype"] = np.dtype(dtype)


def _encode_flat(texts: list[str], eos: int | None = None, special: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Texts -> (all their ids back to back in the shard dtype, length of each); ``eos`` appended to each;
    ``special``: with the tokenizer's template (model inputs: classify texts, translate sources)."""
    tok, dtype = _WORKER["tok"], _WORKER["dtype"]
    if isinstance(tok, ByteTokenizer):  # bytes are ids: no per-token Python objects
        arrays = [np.frombuffer(t.encode("utf-8"), dtype=np.uint8) for t in texts]
        if eos is not None:
            arrays = [x for a in arrays for x in (a, np.array([eos], dtype=dtype))]  # not int64: 8 bytes per token
            lengths = np.array([len(a) + 1 for a in arrays[::2]], dtype=np.int32)
        else:
            lengths = np.array([len(a) for a in arrays], dtype=np.int32)
        return np.concatenate(arrays).astype(dtype, copy=False) if arrays else np.zeros(0, dtype), lengths
    lists = tok.encode_lists(texts, special=special)
    extra = [] if eos is None else [eos]
    lengths = np.fromiter((len(x) + len(extra) for x in lists), dtype=np.int32, count=len(lists))
    flat = np.fromiter(itertools.chain.from_iterable(x + extra if extra else x for x in lists), dtype=dtype,
                       count=int(lengths.sum()))
    return flat, lengths


def _tokenize_group(args) -> tuple[dict, int, int]:
    """A group of (split, record) -> (per split one part: flat tokens + per-example columns, chars read, records).

    One flat array per split and group keeps what crosses the process boundary small and cheap.
    """
    task, group = args
    tok = _WORKER["tok"]
    parts, chars, failed = {}, 0, []
    for split in ("train", "valid", "test"):
        records = [r for s, r in group if s == split]
        if task in MEDIA:
            records, failed = _decode_media(records, failed)
        if not records:
            continue
        if task in MEDIA:  # pixels, or samples + 32768 as uint16
            tokens = np.concatenate([r["data"].reshape(-1) for r in records])
            src_len = np.full(len(records), records[0]["data"].size, dtype=np.int32)
            tgt_len = np.zeros(len(records), dtype=np.int32)
            parts[split] = {"tokens": tokens, "length": src_len, "tgt_length": tgt_len,
                            "labels": [r.get("label") for r in records], "n_bytes": src_len.astype(np.int64)}
            continue
        if task == "translate":
            src, src_len = _encode_flat([r["src"] for r in records], special=True)
            tgt, tgt_len = _encode_flat([r["tgt"] for r in records])
            starts, tstarts = np.concatenate([[0], np.cumsum(src_len)]), np.concatenate([[0], np.cumsum(tgt_len)])
            tokens = np.concatenate([x for i in range(len(records)) for x in
                                     (src[starts[i]:starts[i + 1]], tgt[tstarts[i]:tstarts[i + 1]])])
            texts = [r["src"] for r in records]
            chars += sum(len(r["tgt"]) for r in records)
        else:
            texts = [r["text"] for r in records]
            tokens, src_len = _encode_flat(texts, tok.eos_id if task == "lm" else None, special=task != "lm")
            tgt_len = np.zeros(len(records), dtype=np.int32)
        chars += sum(len(t) for t in texts)
        parts[split] = {"tokens": tokens, "length": src_len, "tgt_length": tgt_len,
                        "labels": [r.get("label") for r in records],
                        "n_bytes": np.fromiter((len(t.encode()) for t in texts), dtype=np.int64, count=len(texts))}
    if failed:
        parts["failed"] = failed
    return parts, chars, len(group)


def _decode_media(records: list[dict], failed: list) -> tuple[list[dict], list]:
    """Records with their images (resized pixels) or clips (resampled, cut to length, as uint16) decoded;
    those that cannot be go to ``failed`` as (file, why): the main process counts or reports them
    (data.skip_bad_rows)."""
    kind, a, b = _WORKER["media"]
    out = []
    for r in records:
        try:
            if kind == "vision":
                data = images.to_pixels(r, a, b)
            else:
                data = (audio.to_clip(r, a, b).astype(np.int32) + 32768).astype(np.uint16)
            out.append({"data": data, "label": r.get("label")})
        except ValueError as e:
            failed.append((r.get("path", kind), str(e)))
    return out, failed


class _Progress:
    """progress.json: records done per stream, finished shards per split, labels so far."""

    def __init__(self, out: Path, fp: str):
        self.path = out / "progress.json"
        try:
            state = json.loads(self.path.read_text()) if self.path.exists() else {}
        except ValueError:  # cut short or damaged: start over
            state = {}
        state = state if isinstance(state, dict) else {}
        if state.get("fingerprint") != fp:
            state = {"fingerprint": fp, "streams": {}, "shards": {"train": [], "valid": [], "test": []},
                     "labels": [], "label_splits": {"train": [], "valid": [], "test": []}, "skipped": 0}
        self.state = state

    def save(self) -> None:
        write_atomic(self.path, json.dumps(self.state).encode())


def prepared_dir(spec: PrepareSpec, out: str | Path | None = None) -> tuple[Path, str]:
    """Where ``spec``'s shards are (or will be) -> (directory, fingerprint)."""
    fp = fingerprint(spec)
    return (Path(out) if out else cache_root() / "shards" / fp[:16]), fp


def is_prepared(out: Path, fp: str) -> bool:
    try:
        return (out / "manifest.json").exists() and read_manifest(out).get("fingerprint") == fp
    except (OSError, ValueError, AttributeError) as e:  # not JSON, not an object, a name too long: never rmtree it
        why = getattr(e, "strerror", None) or "not a manifest of prepared data"
        raise UserError(f"{str(out)[:200]}/manifest.json: {why}; remove it or prepare into another directory") from None


def verify_prepared(spec: PrepareSpec, out: str | Path | None = None) -> tuple[Path, int]:
    """Re-hash every shard of ``spec``'s prepared data against its manifest (``bigbatch prepare --verify``)
    -> (directory, files checked). UserError naming the first file that differs, or when ``spec`` is not
    prepared there. Training and evaluation check sizes only; this reads every byte."""
    out, fp = prepared_dir(spec, out)
    if not is_prepared(out, fp):
        raise UserError(f"{out}: holds no prepared data of this source and these settings (run bigbatch prepare)")
    return out, verify_shards(out)


def prepare(spec: PrepareSpec, out: str | Path | None = None, progress: bool = True, replace: bool = True) -> Path:
    """Prepare ``spec`` into ``out`` (default: the cache, keyed by fingerprint); returns the directory.

    A directory that already holds a complete manifest of the same fingerprint is reused as is; one of
    other settings is prepared again when ``replace`` (`bigbatch prepare`), else refused with what differs
    (training with data.shard_dir never deletes shards a user prepared). Processes that prepare the same
    directory at once (two machines' local rank 0 on a shared cache) take turns on a lock file: the first
    prepares, the others find its manifest.
    """
    given = out is not None
    out, fp = prepared_dir(spec, out)
    damaged = None
    if is_prepared(out, fp):
        damaged = _damage(out) if replace else None  # `bigbatch prepare` over damaged shards repairs them
        if damaged is None:
            return out
        print(f"{damaged}; preparing {out} again", file=sys.stderr)
    if given and not replace and (out / "manifest.json").exists():
        _refuse_other_settings(spec, out)
    try:
        if out.exists() and not out.is_dir():
            raise UserError(f"{str(out)[:200]}: a file is there; expected a directory for prepared data")
        out.parent.mkdir(parents=True, exist_ok=True)
        lock = open(out.parent / f".{out.name}.lock", "w")
    except OSError as e:  # a file in the way, no permission, a name too long
        raise UserError(f"{str(out)[:200]}: cannot write prepared data there ({e.strerror})") from None
    with lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another process preparing the same directory: wait for it, reuse its work
        if is_prepared(out, fp) and (damaged is None or _damage(out) is None):
            return out
        return _prepare_locked(spec, out, fp, progress)


def _damage(out: Path) -> str | None:
    """O(shards): the first shard file of ``out`` that is missing or of the wrong size, or None."""
    manifest = read_manifest(out)
    try:
        for split in manifest["splits"].values():
            for meta in split["shards"]:
                check_sizes(out, meta, manifest["dtype"])
    except UserError as e:
        return str(e).split(";")[0]
    return None


def _refuse_other_settings(spec: PrepareSpec, out: Path) -> None:
    have = read_manifest(out)
    tok = have.get("tokenizer") or {}
    wanted = spec.tokenizer if spec.tokenizer not in ("bpe", "unigram") else f"{spec.tokenizer} {spec.vocab_size}"
    held = f"{tok.get('kind')} {tok.get('vocab_size')}" if tok.get("kind") in ("bpe", "unigram") else tok.get("kind")
    diffs = [f"task {have.get('task')} -> {spec.task}"] if have.get("task") != spec.task else []
    if held != wanted:
        diffs.append(f"tokenizer {held} -> {wanted}")
    sources_now = [spec.source, spec.valid_source, spec.test_source]
    if [str(x) if x else None for x in have.get("sources") or []] != [str(x) if x else None for x in sources_now]:
        diffs.append(f"sources {have.get('sources')} -> {sources_now}")
    raise UserError(f"data.shard_dir={out}: holds data prepared with other settings ({'; '.join(diffs) or 'fields or format'}); "
                    "set the same data keys (e.g. data.tokenizer / data.vocab_size), give another data.shard_dir, "
                    "or run `bigbatch prepare` to replace it")


def _prepare_locked(spec: PrepareSpec, out: Path, fp: str, progress: bool) -> Path:
    # more tokenising processes than cores cannot go faster; a huge data.num_workers would fork without end
    spec = replace(spec, workers=max(1, min(spec.workers, os.cpu_count() or 1)))
    if (out / "manifest.json").exists():
        if read_manifest(out).get("fingerprint") != fp:
            print(f"{out}: the data or settings changed since it was prepared; preparing again", file=sys.stderr)
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    tok, tok_path = _build_tokenizer(spec, out)
    state = _Progress(out, fp)
    dtype = token_dtype(tok.vocab_size)
    bad = BadRows()
    ctx = multiprocessing.get_context("fork")
    media = {"vision": ("vision", spec.image_size, spec.channels), "audio": ("audio", spec.sample_rate, spec.clip_samples)}
    init_args = (str(tok_path) if tok_path else None, dtype, media.get(spec.task))
    pool = ctx.Pool(spec.workers, _init_worker, init_args) if spec.workers > 1 else None
    if pool is None:
        _init_worker(*init_args)
    try:
        for name, source, split in _streams(spec):
            _prepare_stream(spec, out, name, source, split, state, dtype, bad, pool, progress)
    finally:
        if pool is not None:
            pool.terminate()
    return _finish(spec, out, fp, tok, dtype, state, bad)


def _prepare_stream(spec, out, name, source, split, state, dtype, bad, pool, progress) -> None:
    stream = state.state["streams"].setdefault(name, {"records": 0, "chunks": 0, "done": False})
    if stream["done"]:
        return
    records = _records(source, split, spec, bad)
    skip = stream["records"]
    records = itertools.islice(records, skip, None)  # already in finished shards: read, not tokenised
    groups = ((spec.task, g) for g in _groups(records))
    results = _imap_bounded(pool, groups, 2 * spec.workers) if pool is not None else map(_tokenize_group, groups)
    labels = {label: i for i, label in enumerate(state.state["labels"])}
    chunk: dict[str, list] = {"train": [], "valid": [], "test": []}
    chunk_tokens, done, start, tokens_total = 0, skip, time.time(), 0
    vision = spec.task in MEDIA  # counted in images / clips: their files' sizes say little about the work
    total = None if source.startswith("builtin:") or vision else sum(f.stat().st_size for f in expand(source)
                                                                      if f.is_file())
    bar = tqdm(desc=f"prepare {name}", total=total, unit=f" {'images' if spec.task == 'vision' else 'clips'}"
               if vision else "B", unit_scale=not vision,
               disable=not progress, mininterval=1.0)
    try:
        for parts, chars, n_records in results:
            for where, why in parts.pop("failed", []):
                bad.add(where, why, spec.fields.skip_bad_rows)
            for s, part in parts.items():
                if spec.task in LABELLED:
                    part["label"] = np.array([_label_id(str(x), labels, state.state, s) for x in part["labels"]],
                                             dtype=np.int32)
                chunk[s].append(part)
                chunk_tokens += len(part["tokens"])
                tokens_total += len(part["tokens"])
            bar.update(n_records if vision else chars)
            done += n_records
            if chunk_tokens >= spec.shard_tokens:
                _write_chunk(out, name, stream, chunk, dtype, state, done, bad)
                chunk, chunk_tokens = {"train": [], "valid": [], "test": []}, 0
            bar.set_postfix(tokens_s=f"{tokens_total / max(time.time() - start, 1e-9):,.0f}", refresh=False)
        _write_chunk(out, name, stream, chunk, dtype, state, done, bad)
        stream["done"] = True
        state.save()
    finally:
        bar.close()  # an error's one line starts on a line of its own


def _imap_bounded(pool, groups: Iterator, ahead: int) -> Iterator[tuple[dict, int, int]]:
    """``pool.imap(_tokenize_group, groups)`` with at most ``ahead`` groups in flight. Pool.imap keeps
    every finished result until it is consumed, so workers faster than the shard writer (byte
    tokenizer) would pile up tokens in proportion to the data size."""
    pending: collections.deque = collections.deque()
    for group in groups:
        pending.append(pool.apply_async(_tokenize_group, (group,)))
        if len(pending) >= ahead:
            yield pending.popleft().get()
    while pending:
        yield pending.popleft().get()


def _label_id(label: str, labels: dict, state: dict, split: str) -> int:
    """Label -> id, ids given in order of first appearance; remembers which splits hold which ids."""
    if label not in labels:
        labels[label] = len(labels)
        state["labels"].append(label)
    i = labels[label]
    if i not in state["label_splits"][split]:
        state["label_splits"][split].append(i)
    return i


def _write_chunk(out, name, stream, chunk, dtype, state, done, bad) -> None:
    for split, parts in chunk.items():
        if parts:
            meta = write_shard(out / split, f"{name}-{stream['chunks']:05d}", parts, dtype)
            state.state["shards"][split].append(meta)
    stream["chunks"] += 1
    stream["records"] = done
    state.state["skipped"] = bad.count
    state.save()


def _finish(spec, out, fp, tok, dtype, state, bad) -> Path:
    st = state.state
    splits = {}
    for split, shards in st["shards"].items():
        splits[split] = {"shards": shards, "n_examples": sum(s["n_examples"] for s in shards),
                         "n_tokens": sum(s["n_tokens"] for s in shards), "n_bytes": sum(s["n_bytes"] for s in shards)}
    if not splits["train"]["n_examples"]:
        shutil.rmtree(out, ignore_errors=True)
        held = f"; {splits['valid']['n_examples']} went to valid, {splits['test']['n_examples']} to test by their hash" \
            if splits["valid"]["n_examples"] + splits["test"]["n_examples"] else ""
        raise UserError(f"data.source={spec.source[:200]!r}: no usable examples in the train split (empty, or every "
                        f"row was skipped: {bad.count} skipped{held})")
    if spec.task in LABELLED:
        train_labels = set(st["label_splits"]["train"])
        for split in ("valid", "test"):
            extra = sorted(st["labels"][i] for i in set(st["label_splits"][split]) - train_labels)
            if extra:
                shutil.rmtree(out, ignore_errors=True)
                raise UserError(f"labels {extra[:5]} occur in the {split} split but never in train; "
                                "the label sets of the splits differ")
    manifest = {"format": FORMAT, "fingerprint": fp, "task": spec.task, "dtype": dtype,
                "tokenizer": tok.describe(), "special_ids": {"pad": tok.pad_id, "bos": tok.bos_id, "eos": tok.eos_id},
                "labels": st["labels"], "splits": splits, "skipped_rows": bad.count, "skipped_examples": bad.examples,
                "sources": [spec.source, spec.valid_source, spec.test_source]}
    if spec.task == "vision":
        manifest["image"] = {"size": spec.image_size, "channels": spec.channels}
    if spec.task == "audio":
        manifest["audio"] = {"sample_rate": spec.sample_rate, "clip_samples": spec.clip_samples}
    write_atomic(out / "manifest.json", json.dumps(manifest, indent=1).encode())
    (out / "progress.json").unlink(missing_ok=True)
    if bad.count:
        print(f"skipped {bad.count} bad rows, e.g. {bad.examples[0]}", file=sys.stderr)
    return out
