"""Token shards on disk: written atomically, read by memory map, checked against the manifest.

    SHARD_DIR/manifest.json        task, tokenizer, dtype, labels, per split: shards with counts and sha256
    SHARD_DIR/tokenizer.json       when the tokenizer was trained or given as a file
    SHARD_DIR/{split}/{stream}-{chunk:05d}.bin       token ids, all examples back to back
    SHARD_DIR/{split}/{stream}-{chunk:05d}.idx.npy   one row per example (INDEX_DTYPE)

An LM document's tokens end with eos, so a split's shards concatenate into one token stream. A
translation example stores its source then its target tokens. Lengths live in the index, so
batching by length never re-reads or re-tokenises text.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np

from bigbatch.errors import UserError

INDEX_DTYPE = np.dtype([("offset", "<i8"), ("length", "<i4"), ("tgt_length", "<i4"), ("label", "<i4"),
                        ("n_bytes", "<i8")])
FORMAT = 1


def token_dtype(vocab_size: int) -> str:
    """uint16 where every id fits, else uint32."""
    if vocab_size <= 2**16:
        return "uint16"
    if vocab_size <= 2**32:
        return "uint32"
    raise UserError(f"vocabulary of {vocab_size} ids does not fit uint32 shards")


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_shard(directory: Path, name: str, parts: list[dict], dtype: str) -> dict:
    """Write one shard from parts {"tokens", "length", "tgt_length", optional "label", "n_bytes"} (each
    a group of examples, tokens back to back); returns its metadata. Files get their final names
    only when complete."""
    directory.mkdir(parents=True, exist_ok=True)
    tokens = np.concatenate([p["tokens"] for p in parts]).astype(dtype, copy=False)
    length = np.concatenate([p["length"] for p in parts])
    tgt_length = np.concatenate([p["tgt_length"] for p in parts])
    index = np.zeros(len(length), dtype=INDEX_DTYPE)
    index["length"], index["tgt_length"] = length, tgt_length
    index["offset"] = np.concatenate([[0], np.cumsum(length.astype(np.int64) + tgt_length)[:-1]])
    index["label"] = np.concatenate([p.get("label", np.full(len(p["length"]), -1)) for p in parts])
    index["n_bytes"] = np.concatenate([p["n_bytes"] for p in parts])
    bin_path, idx_path = directory / f"{name}.bin", directory / f"{name}.idx.npy"
    write_atomic(bin_path, tokens.tobytes())
    tmp_idx = directory / f".{name}.idx.tmp-{os.getpid()}.npy"
    np.save(tmp_idx, index)
    os.replace(tmp_idx, idx_path)
    return {"bin": f"{directory.name}/{bin_path.name}", "idx": f"{directory.name}/{idx_path.name}",
            "n_examples": len(index), "n_tokens": len(tokens), "n_bytes": int(index["n_bytes"].sum()),
            "sha256": sha256_file(bin_path), "idx_sha256": sha256_file(idx_path)}


def read_manifest(shard_dir: Path) -> dict:
    path = Path(shard_dir) / "manifest.json"
    if not path.exists():
        raise UserError(f"{shard_dir}: no manifest.json; not a prepared shard directory (run bigbatch prepare)")
    manifest = json.loads(path.read_text())
    if manifest.get("format") != FORMAT:
        raise UserError(f"{path}: shard format {manifest.get('format')} is not {FORMAT}; prepare the data again")
    return manifest


class Shard:
    """One shard: its index memory-mapped, its tokens read on demand (``read``)."""

    def __init__(self, shard_dir: Path, meta: dict, dtype: str, verify: bool = True):
        self.bin_path, self.idx_path = shard_dir / meta["bin"], shard_dir / meta["idx"]
        itemsize = np.dtype(dtype).itemsize
        for path in (self.bin_path, self.idx_path):
            if not path.exists():
                raise UserError(f"{path}: shard file is missing; prepare the data again")
        if self.bin_path.stat().st_size != meta["n_tokens"] * itemsize:
            raise UserError(f"{self.bin_path}: truncated or wrong size ({self.bin_path.stat().st_size} bytes, "
                            f"expected {meta['n_tokens'] * itemsize}); prepare the data again")
        if verify:
            for path, key in ((self.bin_path, "sha256"), (self.idx_path, "idx_sha256")):
                if sha256_file(path) != meta[key]:
                    raise UserError(f"{path}: checksum mismatch, the shard is corrupt; prepare the data again")
        self.n_examples, self.n_tokens = meta["n_examples"], meta["n_tokens"]
        self.dtype = np.dtype(dtype)
        self.index = np.load(self.idx_path, mmap_mode="r")
        self._fd = os.open(self.bin_path, os.O_RDONLY)

    def read(self, start: int, stop: int) -> np.ndarray:
        """Tokens [start, stop) of the shard. A positioned read, not a memory map: pages of a dataset
        larger than memory never pile up in this process's resident set."""
        size = self.dtype.itemsize
        data = os.pread(self._fd, (stop - start) * size, start * size)
        return np.frombuffer(data, dtype=self.dtype)

    def __del__(self):
        fd = getattr(self, "_fd", None)
        if fd is not None:
            os.close(fd)


class ShardSet:
    """All shards of one split of a prepared directory."""

    def __init__(self, shard_dir: str | Path, split: str, verify: bool = True):
        self.dir = Path(shard_dir)
        self.manifest = read_manifest(self.dir)
        if split not in self.manifest["splits"] or not self.manifest["splits"][split]["n_examples"]:
            raise UserError(f"{self.dir}: the {split} split is empty; give data.{split}_source or more data")
        info = self.manifest["splits"][split]
        self.split, self.dtype = split, self.manifest["dtype"]
        self.shards = [Shard(self.dir, meta, self.dtype, verify) for meta in info["shards"] if meta["n_examples"]]
        self.n_examples, self.n_tokens, self.n_bytes = info["n_examples"], info["n_tokens"], info["n_bytes"]
        self.fingerprint = self.manifest["fingerprint"] + ":" + split

    @property
    def bytes_per_token(self) -> float:
        return self.n_bytes / max(self.n_tokens, 1)
