"""Token shards on disk: written atomically, read by memory map, checked against the manifest.

    SHARD_DIR/manifest.json        task, tokenizer, dtype, labels, per split: shards with counts, byte
                                   sizes and sha256
    SHARD_DIR/tokenizer.json       when the tokenizer was trained or given as a file
    SHARD_DIR/{split}/{stream}-{chunk:05d}.bin       token ids, all examples back to back
    SHARD_DIR/{split}/{stream}-{chunk:05d}.idx.npy   one row per example (INDEX_DTYPE)

An LM document's tokens end with eos, so a split's shards concatenate into one token stream. A
translation example stores its source then its target tokens. Lengths live in the index, so
batching by length never re-reads or re-tokenises text.

Opening a shard costs O(1), not O(its size): the files must exist, have the sizes the manifest
records (older manifests without sizes: the token file's size from its token count) and an index
whose header and last row agree with the manifest. So a truncated or swapped shard stops training
at once, naming the file, while a shard whose bytes changed in place with its size intact is found
only by ``verify_shards`` (``bigbatch prepare --verify``), which re-hashes every file: the trade-off
that keeps start-up of every process (train, valid, each rank, eval) independent of the data size.
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
    """uint8 for pixels (or a vocabulary of at most 256 ids), uint16 where every id fits, else uint32."""
    if vocab_size <= 2**8:
        return "uint8"
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


def write_atomic(path: Path, data) -> None:
    """Write ``data`` (bytes or any contiguous buffer) to ``path`` through a temporary file and a rename."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_shard(directory: Path, name: str, parts: list[dict], dtype: str) -> dict:
    """Write one shard from parts {"tokens", "length", "tgt_length", optional "label", "n_bytes"} (each
    a group of examples, tokens back to back); returns its metadata. Files get their final names
    only when complete.

    The token file's SHA-256 is taken from the bytes in memory, not read back: a read right after the
    write would come from the page cache and prove nothing about the disk; ``verify_shards`` is that check.
    """
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
    data = memoryview(np.ascontiguousarray(tokens)).cast("B")  # the token bytes, not copied
    write_atomic(bin_path, data)
    tmp_idx = directory / f".{name}.idx.tmp-{os.getpid()}.npy"
    np.save(tmp_idx, index)
    idx_sha256, idx_bytes = sha256_file(tmp_idx), tmp_idx.stat().st_size  # a few hundred KB
    os.replace(tmp_idx, idx_path)
    return {"bin": f"{directory.name}/{bin_path.name}", "idx": f"{directory.name}/{idx_path.name}",
            "n_examples": len(index), "n_tokens": len(tokens), "n_bytes": int(index["n_bytes"].sum()),
            "sha256": hashlib.sha256(data).hexdigest(), "idx_sha256": idx_sha256,
            "bin_bytes": len(data), "idx_bytes": idx_bytes}


def _again(path: Path) -> str:
    """What to do about damaged shards: the directory that holds them, named, to delete and prepare anew."""
    path = Path(path)
    top = next((d for d in (path, *path.parents) if (d / "manifest.json").exists()), path.parent)
    return (f"delete {top} and run the same command again (bigbatch train prepares it anew; "
            f"`bigbatch prepare --verify --out {top}` checks every shard)")


def read_manifest(shard_dir: Path) -> dict:
    path = Path(shard_dir) / "manifest.json"
    if not path.exists():
        raise UserError(f"{shard_dir}: no manifest.json; not a prepared shard directory (run bigbatch prepare)")
    manifest = json.loads(path.read_text())
    if manifest.get("format") != FORMAT:
        raise UserError(f"{path}: shard format {manifest.get('format')} is not {FORMAT}; {_again(shard_dir)}")
    return manifest


def check_sizes(shard_dir: Path, meta: dict, dtype: str) -> None:
    """O(1): both files of a shard exist with the byte sizes of the manifest; UserError naming the file.
    Manifests written before sizes were recorded give the token file's size from its token count and
    leave the index to ``open_index``'s header check."""
    expected = ((meta["bin"], meta.get("bin_bytes", meta["n_tokens"] * np.dtype(dtype).itemsize)),
                (meta["idx"], meta.get("idx_bytes")))
    for name, size in expected:
        path = Path(shard_dir) / name
        try:
            actual = path.stat().st_size
        except FileNotFoundError:
            raise UserError(f"{path}: shard file is missing; {_again(shard_dir)}") from None
        if size is not None and actual != size:
            raise UserError(f"{path}: truncated or wrong size ({actual} bytes, expected {size}); "
                            f"{_again(shard_dir)}")


def check_hashes(shard_dir: Path, meta: dict) -> None:
    """O(shard size): both files of a shard hash to the manifest's SHA-256; UserError naming the file."""
    for name, key in ((meta["bin"], "sha256"), (meta["idx"], "idx_sha256")):
        path = Path(shard_dir) / name
        if sha256_file(path) != meta[key]:
            raise UserError(f"{path}: checksum mismatch, the shard is corrupt; {_again(shard_dir)}")


def open_index(path: Path, meta: dict) -> np.ndarray:
    """A shard's index, memory-mapped, after an O(1) check: the .npy header holds n_examples rows of
    INDEX_DTYPE (a short file fails the map) and the last row ends at the shard's last token."""
    try:
        index = np.load(path, mmap_mode="r")
    except (ValueError, OSError, EOFError) as e:
        raise UserError(f"{path}: unreadable shard index ({e}); {_again(path)}") from None
    if index.dtype != INDEX_DTYPE or index.shape != (meta["n_examples"],):
        raise UserError(f"{path}: index of {index.shape} {index.dtype}, expected ({meta['n_examples']},) rows of "
                        f"{INDEX_DTYPE}; {_again(path)}")
    end = int(index["offset"][-1]) + int(index["length"][-1]) + int(index["tgt_length"][-1]) if len(index) else 0
    if end != meta["n_tokens"]:
        raise UserError(f"{path}: the index ends at token {end}, the shard holds {meta['n_tokens']}; "
                        f"{_again(path)}")
    return index


def verify_shards(shard_dir: str | Path) -> int:
    """Re-hash every shard file of a prepared directory against manifest.json -> the number of files
    checked; UserError naming the first file that is missing, of the wrong size, or differs."""
    manifest = read_manifest(Path(shard_dir))
    n = 0
    for info in manifest["splits"].values():
        for meta in info["shards"]:
            check_sizes(Path(shard_dir), meta, manifest["dtype"])
            check_hashes(Path(shard_dir), meta)
            n += 2
    return n


class Shard:
    """One shard: its index memory-mapped, its tokens read on demand (``read``).

    Opening checks sizes and the index header, O(1) (module docstring); ``verify`` True also re-hashes
    both files, O(shard size).
    """

    def __init__(self, shard_dir: Path, meta: dict, dtype: str, verify: bool = False):
        self.bin_path, self.idx_path = shard_dir / meta["bin"], shard_dir / meta["idx"]
        check_sizes(shard_dir, meta, dtype)
        if verify:
            check_hashes(shard_dir, meta)
        self.n_examples, self.n_tokens = meta["n_examples"], meta["n_tokens"]
        self.dtype = np.dtype(dtype)
        self.index = open_index(self.idx_path, meta)
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
    """All shards of one split of a prepared directory; ``verify`` re-hashes them as they open (see Shard)."""

    def __init__(self, shard_dir: str | Path, split: str, verify: bool = False):
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
