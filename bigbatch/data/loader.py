"""Streaming loaders over memory-mapped shards, resumable exactly from a few integers.

Epoch e visits the shards in an order drawn from (seed, e) and, inside each shard, its rows or
examples in an order drawn from (seed, e, shard): memory stays O(one shard's index) however big
the data. Rank r of W takes every W-th row / batch of that sequence, so ranks never overlap and
together cover the epoch. ``state_dict()`` is (epoch, position); resuming recomputes the current
shard's order and continues at the next item without reading anything that came before.
"""

from __future__ import annotations

import collections

import numpy as np
import torch

from bigbatch.data.shards import ShardSet
from bigbatch.errors import UserError

DRAWN_MAX = 1 << 16  # the (shard, item) picks a loader remembers for a bad step's report: bounded whoever calls it

# padded lengths are rounded up to one of these, so shapes repeat (few torch.compile recompiles)
PAD_LENGTHS = (8, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024, 1536, 2048, 3072, 4096, 6144, 8192)


def padded_length(n: int) -> int:
    for p in PAD_LENGTHS:
        if n <= p:
            return p
    return -(-n // 1024) * 1024


def _rng(*key) -> np.random.Generator:
    return np.random.default_rng([int(k) for k in key])


def check_resumable(state: dict, fingerprint: str, world_size: int) -> None:
    """Refuse a loader state saved on other data, or at a position the new ranks cannot share."""
    if state["fingerprint"] != fingerprint:
        raise UserError("the checkpoint's data-loader state belongs to a different dataset "
                        f"({state['fingerprint']}, this data {fingerprint}); refusing to resume on it")
    if state["global_position"] % world_size:
        raise UserError(f"cannot resume on {world_size} ranks: the checkpoint's data position "
                        f"{state['global_position']} is not a multiple of {world_size} (it was written by "
                        f"{state['world_size']} ranks); use a world size that divides it")


class _EpochWalk:
    """The epoch's item sequence and this rank's place in it.

    Items are numbered by one global counter g over the endless stream of epochs (epoch g // total,
    item g % total of that epoch's order); rank r of W takes g = r, r + W, r + 2W, ... All ranks are
    at the same global position after each of their items, so the saved position does not depend
    on W: a run written by 2 ranks resumes on 1 (or 4) at exactly the same place in the data.
    """

    def __init__(self, items_per_shard: np.ndarray, seed: int, rank: int, world_size: int, shuffle: bool,
                 fingerprint: str):
        self.items_per_shard, self.seed, self.rank, self.world = items_per_shard, seed, rank, world_size
        self.shuffle, self.fingerprint = shuffle, fingerprint
        self.total = int(items_per_shard.sum())
        if self.total < world_size:
            raise UserError(f"the data has {self.total} items, fewer than the {world_size} ranks reading it")
        self.per_rank = self.total // world_size
        self.position = 0  # global items consumed, a multiple of world_size
        self.epoch = -1
        self._start_epoch(0)

    def _start_epoch(self, epoch: int) -> None:
        n = len(self.items_per_shard)
        self.epoch = epoch
        self.shard_order = _rng(self.seed, epoch).permutation(n) if self.shuffle else np.arange(n)
        self.cum = np.cumsum(self.items_per_shard[self.shard_order])
        self._cached = (None, None)

    def _order_in(self, shard: int) -> np.ndarray:
        if self._cached[0] != shard:
            n = int(self.items_per_shard[shard])
            order = _rng(self.seed, self.epoch, shard + 1).permutation(n) if self.shuffle else np.arange(n)
            self._cached = (shard, order)
        return self._cached[1]

    def next(self) -> tuple[int, int]:
        """(shard, item within shard) of this rank's next item; rolls over into the next epoch."""
        epoch, g = divmod(self.position + self.rank, self.total)
        if epoch != self.epoch:
            self._start_epoch(epoch)
        k = int(np.searchsorted(self.cum, g, side="right"))
        shard = int(self.shard_order[k])
        local = g - (int(self.cum[k - 1]) if k else 0)
        self.position += self.world
        return shard, int(self._order_in(shard)[local])

    def state_dict(self) -> dict:
        return {"global_position": self.position, "seed": self.seed, "world_size": self.world,
                "fingerprint": self.fingerprint}

    def load_state_dict(self, state: dict) -> None:
        check_resumable(state, self.fingerprint, self.world)
        self.seed, self.position = state["seed"], state["global_position"]
        self._start_epoch(self.position // self.total)


class PackedLMLoader:
    """Language-model rows: each shard's token stream (documents ending in eos) cut into
    non-overlapping rows of seq_len + 1 tokens. Batches {"input_ids": (B, seq_len + 1), "n_targets"}.

    With ``document_mask`` a batch also carries "attention_mask" (B, 1, T, T): causal and
    within the document only, so attention never crosses an eos.
    """

    def __init__(self, shards: ShardSet, seq_len: int, batch_size: int, seed: int = 0, rank: int = 0,
                 world_size: int = 1, shuffle: bool = True, document_mask: bool = False, eos_id: int | None = None):
        self.shards, self.seq_len, self.batch_size = shards, seq_len, batch_size
        self.document_mask, self.eos_id = document_mask, eos_id
        rows = np.array([max((s.n_tokens - 1) // seq_len, 0) for s in shards.shards], dtype=np.int64)
        if rows.sum() == 0:
            raise UserError(f"{shards.dir} ({shards.split}): {shards.n_tokens} tokens, fewer than one row of "
                            f"data.seq_len+1={seq_len + 1}")
        self.walk = _EpochWalk(rows, seed, rank, world_size, shuffle, shards.fingerprint)
        self.rows_per_epoch = self.walk.per_rank
        self.drawn = collections.deque(maxlen=DRAWN_MAX)

    def row(self, shard: int, r: int) -> np.ndarray:
        start = r * self.seq_len
        return self.shards.shards[shard].read(start, start + self.seq_len + 1)

    def make_batch(self, rows: list[np.ndarray]) -> dict:
        ids = torch.from_numpy(np.stack(rows).astype(np.int64))
        batch = {"input_ids": ids, "n_targets": ids.size(0) * (ids.size(1) - 1)}
        if self.document_mask:
            inputs = ids[:, :-1]
            doc = torch.cumsum(inputs == self.eos_id, dim=1) - (inputs == self.eos_id).long()  # eos ends its doc
            same = doc[:, :, None] == doc[:, None, :]
            batch["attention_mask"] = (same & torch.ones_like(same[0]).tril())[:, None]
        return batch

    def next_batch(self) -> dict:
        picks = [self.walk.next() for _ in range(self.batch_size)]
        self.drawn.extend(picks)
        return self.make_batch([self.row(*p) for p in picks])

    drawn: collections.deque  # (shard, row) since the caller last cleared it: where a bad step's data came from

    def describe(self, picks: list[tuple[int, int]]) -> list[str]:
        """Where (shard, row) picks lie, for people: file and token range."""
        n = self.seq_len
        return [f"{self.shards.shards[k].bin_path} tokens {r * n}..{(r + 1) * n}" for k, r in picks]

    def state_dict(self) -> dict:
        return self.walk.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.walk.load_state_dict(state)

    def eval_batches(self, max_batches: int | None = None):
        """Every row of the split in order (rank-local share), ``batch_size`` at a time."""
        rows = [(k, r) for k, s in enumerate(self.walk.items_per_shard) for r in range(int(s))]
        rows = rows[self.walk.rank :: self.walk.world]
        n = -(-len(rows) // self.batch_size)
        for i in range(n if max_batches is None else min(n, max_batches)):
            yield self.make_batch([self.row(k, r) for k, r in rows[i * self.batch_size : (i + 1) * self.batch_size]])
