"""Token-budget batches of classification / translation examples, bucketed by length.

Like fairseq's --max-tokens: a batch holds at most ``max_tokens`` tokens counting padding
(rows x padded length). Each shard's examples are shuffled, taken a window at a time, sorted by
the lengths stored in the shard index (no text is read to do it), cut into batches, and the
batches of the window shuffled again. Rank r of W takes every W-th batch.
"""

from __future__ import annotations

import collections
import sys

import numpy as np
import torch

from bigbatch.data.loader import DRAWN_MAX, _rng, check_resumable, padded_length
from bigbatch.data.shards import ShardSet
from bigbatch.errors import UserError


class ExampleLoader:
    """Batches of a classify or translate split; exact resume from (epoch, shard, window, batch) integers."""

    def __init__(self, shards: ShardSet, task: str, max_len: int, max_tokens: int | None = None,
                 batch_size: int | None = None, seed: int = 0, rank: int = 0, world_size: int = 1,
                 shuffle: bool = True, window: int = 4096, special_ids: dict | None = None, augment: str = "none"):
        if not max_tokens and not batch_size:
            raise UserError("give train.micro_batch_tokens (a token budget) or train.micro_batch_size")
        self.shards, self.task, self.max_len = shards, task, max_len
        self.max_tokens, self.batch_size, self.window = max_tokens, batch_size, window
        self.seed, self.rank, self.world, self.shuffle = seed, rank, world_size, shuffle
        ids = special_ids or shards.manifest["special_ids"]
        self.pad_id, self.bos_id, self.eos_id = ids["pad"], ids["bos"], ids["eos"]
        self.fingerprint = shards.fingerprint
        self.image, self.augment = shards.manifest.get("image"), augment  # vision: {"size", "channels"}
        self.audio = shards.manifest.get("audio")  # audio: {"sample_rate", "clip_samples"}
        if task in ("vision", "audio") and not shards.manifest.get("image" if task == "vision" else "audio"):
            raise UserError(f"{shards.dir}: these shards hold no {'images' if task == 'vision' else 'clips'} "
                            f"(prepared for task={shards.manifest.get('task')})")
        if max_tokens and max_tokens < self._pad(max_len + 1):
            raise UserError(f"train.micro_batch_tokens={max_tokens} cannot hold one example of the longest length "
                            f"{max_len} (padded {self._pad(max_len + 1)}); raise it or lower model.max_len")
        self.epoch, self.shard_pos, self.window_pos, self.batch_pos, self.ordinal = 0, 0, 0, 0, 0
        self._load_window()
        self.padding_seen, self.tokens_seen = 0, 0
        self.drawn = collections.deque(maxlen=DRAWN_MAX)  # (shard, example) since the caller last cleared it

    # ------------------------------------------------------------------ lengths and batches

    def _pad(self, n: int) -> int:
        return min(padded_length(n), self.max_len + 1) if self.task == "translate" else min(padded_length(n), self.max_len)

    def _lengths(self, index) -> np.ndarray:
        if self.task == "translate":  # decoder sees bos + target (+ eos as the last label)
            return np.maximum(np.minimum(index["length"], self.max_len), np.minimum(index["tgt_length"] + 2, self.max_len + 1))
        return np.minimum(index["length"], self.max_len)

    def _cut(self, ids: np.ndarray, lengths: np.ndarray) -> list[np.ndarray]:
        """Greedy cut of examples ``ids`` (with their ``lengths``, same order) into batches under the budget."""
        batches, start = [], 0
        while start < len(ids):
            end, longest = start + 1, int(lengths[start])
            while end < len(ids):
                rows, longest_next = end - start + 1, max(longest, int(lengths[end]))
                if self.batch_size and rows > self.batch_size:
                    break
                if self.max_tokens and rows * self._pad(longest_next) > self.max_tokens:
                    break
                end, longest = end + 1, longest_next
            batches.append(ids[start:end])
            start = end
        return batches

    def _sorted_cut(self, shard, ids: np.ndarray) -> list[np.ndarray]:
        lengths = self._lengths(shard.index[ids])
        order = np.argsort(lengths, kind="stable")
        return self._cut(ids[order], lengths[order])

    def _window_batches(self, epoch: int, shard_pos: int, window_pos: int) -> list[tuple[int, np.ndarray]] | None:
        """The batches (shard, example ids) of one window, or None past the last window of the shard."""
        n_shards = len(self.shards.shards)
        shard_order = _rng(self.seed, epoch).permutation(n_shards) if self.shuffle else np.arange(n_shards)
        shard = int(shard_order[shard_pos])
        s = self.shards.shards[shard]
        order = _rng(self.seed, epoch, shard + 1).permutation(s.n_examples) if self.shuffle else np.arange(s.n_examples)
        chunk = order[window_pos * self.window : (window_pos + 1) * self.window]
        if len(chunk) == 0:
            return None
        batches = self._sorted_cut(s, chunk)
        if self.shuffle:
            batches = [batches[i] for i in _rng(self.seed, epoch, shard + 1, window_pos + 1).permutation(len(batches))]
        return [(shard, b) for b in batches]

    def _load_window(self) -> None:
        while True:
            batches = self._window_batches(self.epoch, self.shard_pos, self.window_pos)
            if batches is not None:
                self._batches = batches
                return
            self.window_pos, self.batch_pos = 0, 0
            self.shard_pos += 1
            if self.shard_pos == len(self.shards.shards):
                self.epoch, self.shard_pos = self.epoch + 1, 0

    def _advance(self) -> tuple[int, np.ndarray]:
        """This rank's batch of the next block of W batches; the position ends at the block's end,
        the same on every rank, so the saved position does not depend on the number of ranks."""
        mine = None
        while mine is None or self.ordinal % self.world:
            while self.batch_pos >= len(self._batches):
                self.window_pos, self.batch_pos = self.window_pos + 1, 0
                self._load_window()
            if self.ordinal % self.world == self.rank:
                mine, self.batch_epoch = self._batches[self.batch_pos], self.epoch
            self.batch_pos += 1
            self.ordinal += 1
        return mine

    # ------------------------------------------------------------------ tensors

    def make_batch(self, shard: int, ids: np.ndarray) -> dict:
        s = self.shards.shards[shard]
        rows = s.index[np.sort(ids)]
        if self.task == "translate":
            return self._translate_batch(s, rows)
        if self.task == "vision":
            return self._image_batch(shard, s, rows)
        if self.task == "audio":
            return self._audio_batch(shard, s, rows)
        seqs = [s.read(r["offset"], r["offset"] + min(r["length"], self.max_len)) for r in rows]
        width = self._pad(max(len(x) for x in seqs))
        input_ids = torch.full((len(seqs), width), self.pad_id, dtype=torch.long)
        for i, x in enumerate(seqs):
            input_ids[i, : len(x)] = torch.from_numpy(x.astype(np.int64))
        mask = input_ids != self.pad_id if self.pad_id not in (self.eos_id, self.bos_id) else None
        if mask is None:
            lengths = torch.tensor([len(x) for x in seqs])
            mask = torch.arange(width)[None] < lengths[:, None]
        self._count(int(mask.sum()), mask.numel())
        return {"input_ids": input_ids, "attention_mask": mask, "labels": torch.from_numpy(rows["label"].astype(np.int64)),
                "n_targets": len(seqs)}

    def _translate_batch(self, s, rows) -> dict:
        src = [s.read(r["offset"], r["offset"] + min(r["length"], self.max_len)) for r in rows]
        tgt = [s.read(r["offset"] + r["length"], r["offset"] + r["length"] + min(r["tgt_length"], self.max_len - 1))
               for r in rows]
        # sources are cut to max_len, so their padded width never passes it (the target's may: bos + max_len)
        ws, wt = min(self._pad(max(len(x) for x in src)), self.max_len), self._pad(max(len(x) for x in tgt) + 2)
        src_ids = torch.full((len(rows), ws), self.pad_id, dtype=torch.long)
        tgt_ids = torch.full((len(rows), wt), self.pad_id, dtype=torch.long)
        src_len, tgt_len = torch.tensor([len(x) for x in src]), torch.tensor([len(x) + 2 for x in tgt])
        for i, (a, b) in enumerate(zip(src, tgt)):
            src_ids[i, : len(a)] = torch.from_numpy(a.astype(np.int64))
            tgt_ids[i, 0] = self.bos_id
            tgt_ids[i, 1 : len(b) + 1] = torch.from_numpy(b.astype(np.int64))
            tgt_ids[i, len(b) + 1] = self.eos_id
        src_mask = torch.arange(ws)[None] < src_len[:, None]
        tgt_mask = torch.arange(wt)[None] < tgt_len[:, None]
        self._count(int(src_len.sum() + tgt_len.sum()), src_ids.numel() + tgt_ids.numel())
        return {"src_ids": src_ids, "src_mask": src_mask, "tgt_ids": tgt_ids, "tgt_mask": tgt_mask,
                "n_targets": int((tgt_len - 1).sum())}

    def _image_batch(self, shard: int, s, rows) -> dict:
        """{"pixels": (B, H, W, C) uint8, "labels"}; training batches augmented with a generator drawn from
        (seed, epoch, shard, first example), so a resumed run sees the same crops and flips."""
        from bigbatch.data.images import augment_batch

        size, channels = self.image["size"], self.image["channels"]
        n = size * size * channels
        pixels = np.stack([s.read(r["offset"], r["offset"] + n) for r in rows]).reshape(len(rows), size, size, channels)
        if self.augment != "none":
            rng = _rng(self.seed, getattr(self, "batch_epoch", self.epoch), shard, int(rows["offset"][0]) // n, 8191)
            pixels = augment_batch(pixels, rng, self.augment)
        return {"pixels": torch.from_numpy(np.ascontiguousarray(pixels)),
                "labels": torch.from_numpy(rows["label"].astype(np.int64)), "n_targets": len(rows),
                "input_tokens": len(rows) * self.max_len}  # max_len: the ViT's patches (+ class token)

    def _audio_batch(self, shard: int, s, rows) -> dict:
        """{"waveform": (B, clip_samples) int16, "labels"}; training batches shifted in time (data.augment)."""
        from bigbatch.data.audio import augment_shift

        n = self.audio["clip_samples"]
        stored = np.stack([s.read(r["offset"], r["offset"] + n) for r in rows])
        waves = (stored.astype(np.int32) - 32768).astype(np.int16)
        if self.augment == "shift":
            rng = _rng(self.seed, getattr(self, "batch_epoch", self.epoch), shard, int(rows["offset"][0]) // n, 8191)
            waves = augment_shift(waves, rng, self.audio["sample_rate"] // 10)
        return {"waveform": torch.from_numpy(waves), "labels": torch.from_numpy(rows["label"].astype(np.int64)),
                "n_targets": len(rows), "input_tokens": len(rows) * self.max_len}

    def _count(self, real: int, total: int) -> None:
        self.tokens_seen += total
        self.padding_seen += total - real

    @property
    def padding_fraction(self) -> float:
        return self.padding_seen / max(self.tokens_seen, 1)

    def next_batch(self) -> dict:
        shard, ids = self._advance()
        self.drawn.extend((shard, int(i)) for i in ids)
        return self.make_batch(shard, ids)

    def describe(self, picks: list[tuple[int, int]]) -> list[str]:
        """Where (shard, example) picks lie, for people: file and example number within it."""
        return [f"{self.shards.shards[k].bin_path} example {i}" for k, i in picks]

    def eval_batches(self, max_batches: int | None = None, max_examples: int | None = None, seed: int = 0):
        """Every example of the split once (this rank's share), length-sorted per window, in order.

        ``max_examples``: a seeded random sample of about that many examples instead (each example kept with
        probability max_examples / n, so the sample is unbiased and the same for the same seed)."""
        done = 0
        keep_p = max_examples / self.shards.n_examples if max_examples else 1.0
        for k, s in enumerate(self.shards.shards):
            keep = _rng(seed, 7919, k).random(s.n_examples) < keep_p if keep_p < 1.0 else None
            for w in range(-(-s.n_examples // self.window)):
                ids = np.arange(w * self.window, min((w + 1) * self.window, s.n_examples))
                if keep is not None:
                    ids = ids[keep[ids]]
                    if len(ids) == 0:
                        continue
                for j, b in enumerate(self._sorted_cut(s, ids)):
                    if j % self.world != self.rank:
                        continue
                    if max_batches is not None and done >= max_batches:
                        return
                    done += 1
                    yield self.make_batch(k, b)

    def check_bucketing(self) -> None:
        """Warn when sorting by length leaves about as much padding as random batches would."""
        s = self.shards.shards[0]
        ids = np.arange(min(self.window, s.n_examples))
        shuffled = _rng(self.seed).permutation(ids)
        bucketed = self._padding_of(self._sorted_cut(s, ids), s)
        random = self._padding_of(self._cut(shuffled, self._lengths(s.index[shuffled])), s)
        if random > 0.05 and bucketed > 0.8 * random:
            print(f"warning: length bucketing has little effect here ({bucketed:.0%} padding vs {random:.0%} "
                  "unsorted)", file=sys.stderr)

    def _padding_of(self, batches, s) -> float:
        real = total = 0
        for b in batches:
            lengths = self._lengths(s.index[b])
            real += int(lengths.sum())
            total += len(b) * self._pad(int(lengths.max()))
        return 1 - real / max(total, 1)

    # ------------------------------------------------------------------ resume

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "shard_pos": self.shard_pos, "window_pos": self.window_pos,
                "batch_pos": self.batch_pos, "global_position": self.ordinal, "seed": self.seed,
                "world_size": self.world, "fingerprint": self.fingerprint}

    def load_state_dict(self, state: dict) -> None:
        check_resumable(state, self.fingerprint, self.world)
        self.seed, self.epoch, self.shard_pos = state["seed"], state["epoch"], state["shard_pos"]
        self.window_pos, self.ordinal = state["window_pos"], state["global_position"]
        self._load_window()
        self.batch_pos = state["batch_pos"]
