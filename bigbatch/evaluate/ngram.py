"""A byte n-gram language model with interpolated modified Kneser-Ney smoothing (Chen & Goodman 1999), in numpy.

Symbols are the 256 byte values plus BOS (256), which pads the start of every document so that no
context reaches across documents; BOS is context only, never predicted. An n-gram is packed into one
int64, 9 bits per symbol with the predicted byte in the lowest bits, so counting is ``np.unique`` on
an array and lookup is ``np.searchsorted``: no Python loop runs per byte.

    p_k(w | h) = max(c_k(h w) - D_k(c_k(h w)), 0) / c_k(h) + gamma_k(h) p_{k-1}(w | h')
    gamma_k(h) = (D_k1 N_1(h .) + D_k2 N_2(h .) + D_k3 N_3+(h .)) / c_k(h)

h' is h without its oldest byte; c_k is the raw count at the highest order and the continuation count
(distinct left extensions) below it; p_0 is uniform over the 256 bytes; a context never seen gives
p_k = p_{k-1}. The discounts D_k1 <= 1, D_k2 <= 2, D_k3+ <= 3 of each order come from its count of
counts, which keeps every conditional distribution summing to exactly 1.
"""

from __future__ import annotations

from typing import Iterable

import numpy as np

BOS = 256
BITS = 9  # bits per symbol: 257 symbols


def _symbols(docs: Iterable[bytes], pad: int) -> np.ndarray:
    """Documents -> one uint16 array, each document preceded by ``pad`` BOS symbols."""
    parts = []
    for doc in docs:
        parts += [np.full(pad, BOS, dtype=np.uint16), np.frombuffer(doc, dtype=np.uint8).astype(np.uint16)]
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.uint16)


def _keys(symbols: np.ndarray, order: int) -> np.ndarray:
    """The ``order``-gram ending at every byte (not BOS) of ``symbols``, packed: (n_bytes,) int64."""
    n = len(symbols) - (order - 1)  # every byte has order - 1 symbols before it (the BOS padding)
    keys = symbols[order - 1 :].astype(np.int64)
    for j in range(1, order):  # in place on slices: two int64 arrays of the text's length at the peak
        older = symbols[order - 1 - j : order - 1 - j + n].astype(np.int64)
        older <<= BITS * j
        keys |= older
    return keys[symbols[order - 1 :] != BOS]


def _discounts(counts: np.ndarray) -> np.ndarray:
    """Modified Kneser-Ney discounts (D1, D2, D3+) from the count of counts, clipped to [0.05, i]."""
    n1, n2, n3, n4 = (np.count_nonzero(counts == i) for i in (1, 2, 3, 4))
    if min(n1, n2, n3, n4) == 0:  # too little data to estimate three discounts
        y = n1 / (n1 + 2 * n2) if n1 + n2 else 0.5
        d = np.array([y, y, y])
    else:
        y = n1 / (n1 + 2 * n2)
        d = np.array([1 - 2 * y * n2 / n1, 2 - 3 * y * n3 / n2, 3 - 4 * y * n4 / n3])
    return np.clip(d, 0.05, [1.0, 2.0, 3.0])


class _Order:
    """The table of one order: n-gram keys (sorted) with their discounted counts, contexts with totals and gamma."""

    def __init__(self, keys: np.ndarray, counts: np.ndarray):
        d = _discounts(counts)
        self.keys = keys
        self.discounted = np.maximum(counts - d[np.minimum(counts, 3) - 1], 0.0)
        self.contexts, start = np.unique(keys >> BITS, return_index=True)  # keys sorted: contexts grouped
        self.total = np.add.reduceat(counts, start).astype(np.float64)
        backoff = np.add.reduceat(d[np.minimum(counts, 3) - 1], start)  # D1 N1(h.) + D2 N2(h.) + D3 N3+(h.)
        self.gamma = backoff / self.total

    def interpolate(self, query: np.ndarray, lower: np.ndarray) -> np.ndarray:
        """p_k of the packed n-grams ``query`` given p_{k-1} of the same n-grams (``lower``)."""
        ci = np.minimum(np.searchsorted(self.contexts, query >> BITS), len(self.contexts) - 1)
        seen_context = self.contexts[ci] == query >> BITS
        ki = np.minimum(np.searchsorted(self.keys, query), len(self.keys) - 1)
        count = np.where(self.keys[ki] == query, self.discounted[ki], 0.0)
        p = count / self.total[ci] + self.gamma[ci] * lower
        return np.where(seen_context, p, lower)


class ByteNgram:
    """Byte n-gram model of ``order`` (context order - 1 bytes), interpolated modified Kneser-Ney."""

    def __init__(self, order: int = 5):
        if not 1 <= order <= 7:  # 7 symbols of 9 bits fill an int64
            raise ValueError(f"order={order}: expected 1..7")
        self.order = order
        self.tables: list[_Order] = []

    def fit(self, docs: Iterable[bytes]) -> ByteNgram:
        """Count the n-grams of ``docs`` (each document from an empty context)."""
        keys, counts = np.unique(_keys(_symbols(docs, self.order - 1), self.order), return_counts=True)
        if not len(keys):
            raise ValueError("no training bytes")
        tables = [_Order(keys, counts)]
        for k in range(self.order - 1, 0, -1):  # continuation counts: distinct (k+1)-grams ending in each k-gram
            keys, counts = np.unique(keys & ((1 << (BITS * k)) - 1), return_counts=True)
            tables.append(_Order(keys, counts))
        self.tables = tables[::-1]  # orders 1..n
        return self

    def _prob(self, keys: np.ndarray) -> np.ndarray:
        p = np.full(len(keys), 1.0 / 256)
        for k, table in enumerate(self.tables, start=1):
            p = table.interpolate(keys & ((1 << (BITS * k)) - 1), p)
        return p

    def log2_probs(self, docs: Iterable[bytes]) -> np.ndarray:
        """log2 p of every byte of ``docs``, each document from an empty context: (total bytes,)."""
        return np.log2(self._prob(_keys(_symbols(docs, self.order - 1), self.order)))

    def distribution(self, context: bytes) -> np.ndarray:
        """p(next byte | context) over the 256 byte values: (256,); a short context is a document start."""
        ctx = _symbols([context], self.order - 1)[-(self.order - 1):] if self.order > 1 else np.zeros(0, np.uint16)
        packed = 0
        for j, s in enumerate(ctx[::-1], start=1):
            packed |= int(s) << (BITS * j)
        return self._prob(packed | np.arange(256, dtype=np.int64))

    def bits_per_byte(self, docs: Iterable[bytes]) -> float:
        lp = self.log2_probs(docs)
        return float(-lp.mean()) if len(lp) else float("nan")
