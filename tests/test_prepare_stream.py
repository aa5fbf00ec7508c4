"""A large text file read as one document: streamed in blocks (flat memory) and split by position."""

import gzip
import io
import json
import tracemalloc

import numpy as np
import pytest
from helpers import sentences

from bigbatch.data import sources
from bigbatch.data.builtin import split_of
from bigbatch.data.prepare import PrepareSpec, block_split, fingerprint, prepare, split_records
from bigbatch.data.shards import ShardSet
from bigbatch.data.sources import SPLIT_KEY, BadRows, Fields, read_file, text_blocks
from bigbatch.errors import UserError

BLOCK = 16 << 10  # the block size the tests lower TEXT_BLOCK_BYTES to: a few MB become a few hundred blocks


@pytest.fixture
def small_blocks(monkeypatch):
    monkeypatch.setattr(sources, "TEXT_BLOCK_BYTES", BLOCK)
    return BLOCK


def big_text(path, n_bytes, seed=0):
    """A text file of about ``n_bytes``: lines of words, some with multi-byte characters."""
    lines, size, i = [], 0, 0
    while size < n_bytes:
        line = " ".join(sentences(8, seed=seed + i)) + (" — ünïcode €" if i % 3 == 0 else "")
        lines.append(line)
        size += len(line.encode()) + 1
        i += 1
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_text_blocks_stay_under_the_block_size_and_never_cut_a_character():
    rng = np.random.default_rng(0)
    alphabet = list("ab c\n\té€😀")
    for trial in range(500):
        text = "".join(rng.choice(alphabet, size=int(rng.integers(0, 400))))
        if trial % 3 == 0:  # no newline or space to cut at: only character boundaries are left
            text = "".join(c for c in text if not c.isspace())
        data, size = text.encode(), int(rng.integers(4, 64))
        pieces = list(text_blocks(io.BytesIO(data), size))
        assert b"".join(pieces) == data
        assert all(0 < len(p) <= size for p in pieces) or pieces == [b""]
        for p in pieces:
            p.decode("utf-8")  # raises when a character was cut


def read_peak(path) -> tuple[int, int, int]:
    """(records, largest record in bytes, peak traced bytes) of reading ``path`` record by record."""
    tracemalloc.start()
    try:
        n, largest = 0, 0
        for record in read_file(path, Fields(), BadRows()):
            assert record[SPLIT_KEY] == (path.name, n)
            n, largest = n + 1, max(largest, len(record["text"].encode()))
        return n, largest, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_a_large_file_is_read_in_blocks_with_flat_memory(tmp_path, small_blocks):
    small = big_text(tmp_path / "small.txt", 16 * BLOCK)
    large = big_text(tmp_path / "large.txt", 256 * BLOCK)  # 4 MB
    n_small, _, peak_small = read_peak(small)
    n_large, largest, peak_large = read_peak(large)
    assert n_small >= 16 and n_large >= 256 and largest <= BLOCK
    # the same peak for 16x the data, a fraction of the file: one window at a time, never the whole file
    assert peak_large < 1.25 * peak_small + BLOCK and peak_large < large.stat().st_size / 16, (peak_small, peak_large)


def test_a_file_of_one_block_is_one_document_split_by_its_content(tmp_path, small_blocks):
    path = tmp_path / "small.txt"
    path.write_text("one small document\nof two lines\n")
    (record,) = read_file(path, Fields(), BadRows())
    assert record == {"text": path.read_text()}  # no split key: split_of(text), as before blocks existed
    (split,) = [s for s in ("train", "valid", "test") if list(split_records(PrepareSpec(str(path)), s))]
    assert split == split_of(path.read_text())


def test_compressed_files_give_the_same_blocks(tmp_path, small_blocks):
    path = big_text(tmp_path / "big.txt", 10 * BLOCK)
    with gzip.open(tmp_path / "big.txt.gz", "wb") as f:
        f.write(path.read_bytes())
    plain = [r["text"] for r in read_file(path, Fields(), BadRows())]
    assert [r["text"] for r in read_file(tmp_path / "big.txt.gz", Fields(), BadRows())] == plain


def test_bad_utf8_names_the_line_and_byte_of_the_file(tmp_path, small_blocks):
    path = big_text(tmp_path / "big.txt", 5 * BLOCK)
    data = bytearray(path.read_bytes())
    at = 3 * BLOCK + 100
    at = data.index(b"\n", at) + 1  # the start of a line in the fourth block
    data[at] = 0xFF
    path.write_bytes(bytes(data))
    line = data[:at].count(b"\n") + 1
    with pytest.raises(UserError, match=rf"big.txt:{line}: not UTF-8 \(byte {at}\)"):
        list(read_file(path, Fields(), BadRows()))


def test_one_large_file_fills_every_split_and_keeps_every_token(tmp_path, small_blocks):
    path = big_text(tmp_path / "corpus.txt", 3 << 20)  # 3 MB: ~190 blocks
    out = prepare(PrepareSpec(str(path), workers=1, shard_tokens=200_000), tmp_path / "o", progress=False)
    splits = json.loads((out / "manifest.json").read_text())["splits"]
    n_blocks = sum(s["n_examples"] for s in splits.values())
    assert all(splits[s]["n_examples"] for s in ("train", "valid", "test")), splits
    for s in ("valid", "test"):  # the golden-ratio sequence gives 5% each within 3 blocks
        assert abs(splits[s]["n_examples"] - 0.05 * n_blocks) <= 3
    size = path.stat().st_size
    assert sum(s["n_bytes"] for s in splits.values()) == size
    assert sum(s["n_tokens"] for s in splits.values()) == size + n_blocks  # bytes + one eos per block
    counts = np.zeros(257, dtype=np.int64)  # every byte of the file in exactly one split
    for split in ("train", "valid", "test"):
        shards = ShardSet(out, split)
        for shard in shards.shards:
            counts += np.bincount(shard.read(0, shard.n_tokens), minlength=257)[:257]
    eos = 256  # ByteTokenizer: ids 0-255 are bytes
    assert counts[eos] == n_blocks
    assert np.array_equal(counts[:256], np.bincount(np.frombuffer(path.read_bytes(), np.uint8), minlength=256))


def test_parallel_workers_give_the_same_shards(tmp_path, small_blocks):
    path = big_text(tmp_path / "corpus.txt", 1 << 20)
    a, b = (prepare(PrepareSpec(str(path), workers=w, shard_tokens=100_000), tmp_path / f"w{w}", progress=False)
            for w in (1, 2))
    ma, mb = (json.loads((d / "manifest.json").read_text())["splits"] for d in (a, b))
    assert {s: [x["sha256"] for x in v["shards"]] for s, v in ma.items()} == \
        {s: [x["sha256"] for x in v["shards"]] for s, v in mb.items()}


def test_block_split_is_stable_and_the_block_size_is_in_the_fingerprint(tmp_path, monkeypatch):
    assert [block_split("enwik8", i) for i in range(40)] == [block_split("enwik8", i) for i in range(40)]
    assert {block_split("enwik8", i) for i in range(34)} == {"train", "valid", "test"}
    path = big_text(tmp_path / "c.txt", 1000)
    before = fingerprint(PrepareSpec(str(path)))
    monkeypatch.setattr(sources, "TEXT_BLOCK_BYTES", BLOCK)
    assert fingerprint(PrepareSpec(str(path))) != before  # shards cut at another size are not reused
    per_line = PrepareSpec(str(path), fields=Fields(text_per_line=True))
    fp = fingerprint(per_line)
    monkeypatch.setattr(sources, "TEXT_BLOCK_BYTES", 2 * BLOCK)
    assert fingerprint(per_line) == fp  # one document per line: blocks play no part
