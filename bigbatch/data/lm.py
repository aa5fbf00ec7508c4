"""Language-model data: documents -> one token stream -> fixed-length rows, shuffled per epoch.

A row is seq_len + 1 consecutive tokens (inputs and shifted targets); rows do not overlap.
The order of rows in epoch e is a permutation drawn from (seed, e), so the loader's whole
position is two integers and resuming costs nothing however far training got.
"""

from __future__ import annotations

import glob
import hashlib
from pathlib import Path

import numpy as np
import torch

from bigbatch.data.builtin import builtin_documents, split_of
from bigbatch.data.tokenizer import ByteTokenizer
from bigbatch.errors import UserError


def _text_files(source: str) -> list[Path]:
    paths = sorted(Path(p) for p in glob.glob(source, recursive=True)) if any(c in source for c in "*?[") else [Path(source)]
    files: list[Path] = []
    for p in paths:
        if p.is_dir():
            files += sorted(f for f in p.rglob("*") if f.is_file())
        elif p.is_file():
            files.append(p)
    if not files:
        raise UserError(f"data.source={source!r}: no such file, directory or matching files")
    return files


def documents(source: str, split: str | None) -> list[tuple[str, str]]:
    """(key, text) documents of ``source``; ``split`` picks the deterministic hash split
    (None = every document, for an explicit valid_source/test_source)."""
    if source.startswith("builtin:"):
        return builtin_documents(source[len("builtin:"):], split or "train")
    docs = []
    for f in _text_files(source):
        try:
            text = f.read_bytes().decode("utf-8")
        except UnicodeDecodeError as e:
            raise UserError(f"{f}: not UTF-8 text (byte {e.start}); expected plain text files") from None
        if split is None or split_of(f.as_posix()) == split:
            docs.append((f.as_posix(), text))
    return docs


def token_stream(docs: list[tuple[str, str]], tokenizer: ByteTokenizer) -> np.ndarray:
    """Concatenate documents, each followed by eos -> uint16 token array."""
    eos = np.array([tokenizer.eos_id], dtype=np.uint16)
    parts = []
    for _, text in docs:
        parts += [tokenizer.encode(text), eos]
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.uint16)


def load_lm_split(source: str, explicit: str | None, split: str, tokenizer: ByteTokenizer, seq_len: int) -> np.ndarray:
    """Tokens of one split: from ``explicit`` whole, else from the source's hash split."""
    if explicit:  # a file source is read whole; a builtin one still gives its own split
        docs = documents(explicit, split if explicit.startswith("builtin:") else None)
    else:
        docs = documents(source, split)
    tokens = token_stream(docs, tokenizer)
    if len(tokens) < seq_len + 1:
        where = explicit or f"the {split} split of {source}"
        raise UserError(
            f"{where} has {len(tokens)} tokens, fewer than one row of data.seq_len+1={seq_len + 1}"
            + ("" if explicit else f"; give more data or set data.{split}_source")
        )
    return tokens


def fingerprint(tokens: np.ndarray) -> str:
    return hashlib.sha1(tokens.tobytes()).hexdigest()[:16]


def to_batch(rows: list[np.ndarray]) -> dict:
    """Rows of seq_len + 1 tokens -> {"input_ids": (B, seq_len + 1) int64, "n_targets", "n_bytes"}.

    Every target is counted (packed rows have no padding); byte ids are those below 256.
    """
    batch = np.stack(rows)
    targets = batch[:, 1:]
    return {"input_ids": torch.from_numpy(batch.astype(np.int64)), "n_targets": targets.size,
            "n_bytes": int((targets < 256).sum())}


class RowStream:
    """Batches of shuffled rows (B, seq_len + 1) from a token array, resumable exactly.

    rank / world_size give each process a disjoint stride of every epoch's permutation.
    """

    def __init__(self, tokens: np.ndarray, seq_len: int, batch_size: int, seed: int = 0,
                 rank: int = 0, world_size: int = 1, shuffle: bool = True):
        self.tokens, self.seq_len, self.batch_size = tokens, seq_len, batch_size
        self.seed, self.rank, self.world_size, self.shuffle = seed, rank, world_size, shuffle
        self.n_rows = (len(tokens) - 1) // seq_len
        self.rows_per_rank = self.n_rows // world_size
        self.epoch, self.position = 0, 0
        self.fingerprint = fingerprint(tokens)
        self._order = self._epoch_order()

    def _epoch_order(self) -> np.ndarray:
        order = np.random.default_rng([self.seed, self.epoch]).permutation(self.n_rows) if self.shuffle else np.arange(self.n_rows)
        return order[self.rank : self.rows_per_rank * self.world_size : self.world_size]

    def _row(self, r: int) -> np.ndarray:
        start = int(r) * self.seq_len
        return self.tokens[start : start + self.seq_len + 1]

    def next_batch(self) -> dict:
        """The next ``batch_size`` rows as a batch (see ``to_batch``); crosses epochs seamlessly."""
        rows = []
        while len(rows) < self.batch_size:
            if self.position == len(self._order):
                self.epoch, self.position = self.epoch + 1, 0
                self._order = self._epoch_order()
            rows.append(self._row(self._order[self.position]))
            self.position += 1
        return to_batch(rows)

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "position": self.position, "fingerprint": self.fingerprint, "seed": self.seed}

    def load_state_dict(self, state: dict) -> None:
        if state["fingerprint"] != self.fingerprint:
            raise UserError("the checkpoint's data-loader state belongs to a different dataset "
                            f"(fingerprint {state['fingerprint']}, this data {self.fingerprint}); refusing to resume on it")
        self.seed, self.epoch, self.position = state["seed"], state["epoch"], state["position"]
        self._order = self._epoch_order()


def eval_batches(tokens: np.ndarray, seq_len: int, batch_size: int, max_batches: int | None = None):
    """Rows of a split in order (no shuffle), ``batch_size`` at a time; at most ``max_batches``."""
    stream = RowStream(tokens, seq_len, batch_size, shuffle=False)
    n = -(-stream.n_rows // batch_size)
    for i in range(n if max_batches is None else min(n, max_batches)):
        yield to_batch([stream._row(r) for r in range(i * batch_size, min((i + 1) * batch_size, stream.n_rows))])
