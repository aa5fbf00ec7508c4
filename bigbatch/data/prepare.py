"""`bigbatch prepare`: raw sources -> token shards, in parallel worker processes, resumably.

The sources are read once, in a fixed order, and cut into chunks of about ``shard_tokens``
tokens; chunk k of a source becomes shard k of each split. After each chunk the progress file
records how many records are done, so an interrupted prepare starts again after the last
finished chunk. The output directory is keyed by a fingerprint of the sources (names, sizes,
times), the tokenizer and the settings, so unchanged data is never tokenised twice.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import multiprocessing
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
from tqdm import tqdm

from bigbatch.data.builtin import builtin_fingerprint, builtin_records, split_of
from bigbatch.data.shards import FORMAT, read_manifest, token_dtype, write_atomic, write_shard
from bigbatch.data.sources import BadRows, Fields, expand, fingerprint_files, read_file
from bigbatch.data.tokenizer import ByteTokenizer, load_tokenizer_file, train_tokenizer
from bigbatch.errors import UserError

GROUP = 512  # records per work item sent to a worker


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
        tok_file = tok_file / "tokenizer.json" if tok_file.is_dir() else tok_file
        parts["tokenizer"] = hashlib.sha1(tok_file.read_bytes()).hexdigest() if tok_file.exists() else spec.tokenizer
    parts["fields"].pop("skip_bad_rows")
    return hashlib.sha1(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def _records(source: str, split: str | None, spec: PrepareSpec, bad: BadRows) -> Iterator[tuple[str, dict]]:
    """(split, record) of one source; ``split`` fixed for an explicit valid/test source."""
    if source.startswith("builtin:"):
        for key, record in builtin_records(source[len("builtin:"):], spec.task):
            yield split or split_of(key), record
        return
    for path in expand(source):
        dict_splits = _dataset_dict_splits(path)
        for sub, fixed in dict_splits or [(path, split)]:
            for record in read_file(sub, spec.fields, bad):
                yield fixed or split or split_of(record.get("text") or record.get("src", "")), record


_HF_SPLITS = {"train": "train", "validation": "valid", "valid": "valid", "dev": "valid", "test": "test"}


def _dataset_dict_splits(path: Path) -> list[tuple[Path, str]] | None:
    """A DatasetDict saved with save_to_disk: its train / validation / test sub-datasets, each a fixed split."""
    listing = path / "dataset_dict.json" if path.is_dir() else None
    if listing is None or not listing.exists():
        return None
    names = json.loads(listing.read_text()).get("splits", [])
    unknown = [n for n in names if n not in _HF_SPLITS]
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


def _build_tokenizer(spec: PrepareSpec, out: Path):
    if spec.tokenizer == "byte":
        return ByteTokenizer(), None
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
    tok.save(out)
    return tok, path


# the tokenizer of a worker process, loaded once by _init_worker
_WORKER: dict = {}


def _init_worker(tokenizer_path: str | None) -> None:
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    _WORKER["tok"] = ByteTokenizer() if tokenizer_path is None else load_tokenizer_file(tokenizer_path)


def _tokenize_group(args) -> list[tuple]:
    """[(split, record)] -> [(split, ids, tgt_ids, label, n_bytes, text_chars)] in the same order."""
    task, group = args
    tok = _WORKER["tok"]
    if task == "translate":
        src = tok.encode_batch([r["src"] for _, r in group])
        tgt = tok.encode_batch([r["tgt"] for _, r in group])
        return [(s, a, b, None, len(r["src"].encode()), len(r["src"]) + len(r["tgt"]))
                for (s, r), a, b in zip(group, src, tgt)]
    ids = tok.encode_batch([r["text"] for _, r in group])
    out = []
    for (s, r), a in zip(group, ids):
        if task == "lm":
            a = np.append(a, np.uint32(tok.eos_id))
        out.append((s, a, None, r.get("label"), len(r["text"].encode()), len(r["text"])))
    return out


class _Progress:
    """progress.json: records done per stream, finished shards per split, labels so far."""

    def __init__(self, out: Path, fp: str):
        self.path = out / "progress.json"
        state = json.loads(self.path.read_text()) if self.path.exists() else {}
        if state.get("fingerprint") != fp:
            state = {"fingerprint": fp, "streams": {}, "shards": {"train": [], "valid": [], "test": []},
                     "labels": [], "label_splits": {"train": [], "valid": [], "test": []}, "skipped": 0}
        self.state = state

    def save(self) -> None:
        write_atomic(self.path, json.dumps(self.state).encode())


def prepare(spec: PrepareSpec, out: str | Path | None = None, progress: bool = True) -> Path:
    """Prepare ``spec`` into ``out`` (default: the cache, keyed by fingerprint); returns the directory.

    A directory that already holds a complete manifest of the same fingerprint is reused as is.
    """
    fp = fingerprint(spec)
    out = Path(out) if out else cache_root() / "shards" / fp[:16]
    manifest_path = out / "manifest.json"
    if manifest_path.exists():
        if read_manifest(out).get("fingerprint") == fp:
            return out
        print(f"{out}: the data or settings changed since it was prepared; preparing again", file=sys.stderr)
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    tok, tok_path = _build_tokenizer(spec, out)
    state = _Progress(out, fp)
    dtype = token_dtype(tok.vocab_size)
    bad = BadRows()
    ctx = multiprocessing.get_context("fork")
    pool = ctx.Pool(spec.workers, _init_worker, (str(tok_path) if tok_path else None,)) if spec.workers > 1 else None
    if pool is None:
        _init_worker(str(tok_path) if tok_path else None)
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
    groups = ((spec.task, list(g)) for g in iter(lambda: list(itertools.islice(records, GROUP)), []))
    results = pool.imap(_tokenize_group, groups) if pool is not None else map(_tokenize_group, groups)
    labels = {label: i for i, label in enumerate(state.state["labels"])}
    chunk: dict[str, list] = {"train": [], "valid": [], "test": []}
    chunk_tokens, done, start = 0, skip, time.time()
    bar = tqdm(desc=f"prepare {name}", unit="B", unit_scale=True, disable=not progress, mininterval=1.0)
    tokens_total = 0
    for group in results:
        for s, ids, tgt, label, n_bytes, n_chars in group:
            ex = {"ids": ids, "n_bytes": n_bytes}
            if tgt is not None:
                ex["tgt_ids"] = tgt
            if spec.task == "classify":
                key = str(label)
                if key not in labels:
                    labels[key] = len(labels)
                    state.state["labels"].append(key)
                ex["label"] = labels[key]
                if ex["label"] not in state.state["label_splits"][s]:
                    state.state["label_splits"][s].append(ex["label"])
            n = len(ids) + (len(tgt) if tgt is not None else 0)
            chunk[s].append(ex)
            chunk_tokens += n
            tokens_total += n
            bar.update(n_chars)
        done += len(group)
        if chunk_tokens >= spec.shard_tokens:
            _write_chunk(out, name, stream, chunk, dtype, state, done, bad)
            chunk, chunk_tokens = {"train": [], "valid": [], "test": []}, 0
        bar.set_postfix(tokens_s=f"{tokens_total / max(time.time() - start, 1e-9):,.0f}", refresh=False)
    _write_chunk(out, name, stream, chunk, dtype, state, done, bad)
    stream["done"] = True
    state.save()
    bar.close()


def _write_chunk(out, name, stream, chunk, dtype, state, done, bad) -> None:
    for split, examples in chunk.items():
        if examples:
            meta = write_shard(out / split, f"{name}-{stream['chunks']:05d}", examples, dtype)
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
        raise UserError(f"data.source={spec.source!r}: no usable examples (empty, or every row was skipped)")
    if spec.task == "classify":
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
    write_atomic(out / "manifest.json", json.dumps(manifest, indent=1).encode())
    (out / "progress.json").unlink(missing_ok=True)
    if bad.count:
        print(f"skipped {bad.count} bad rows, e.g. {bad.examples[0]}", file=sys.stderr)
    return out
