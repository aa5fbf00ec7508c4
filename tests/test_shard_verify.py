"""Opening shards checks sizes and index headers, O(1); `bigbatch prepare --verify` re-hashes every file."""

import hashlib
import json

import pytest
from helpers import sentences

from bigbatch.cli import main
from bigbatch.data import shards as shards_module
from bigbatch.data.prepare import PrepareSpec, prepare, verify_prepared
from bigbatch.data.shards import ShardSet
from bigbatch.data.sources import Fields
from bigbatch.errors import UserError


@pytest.fixture
def prepared(tmp_path):
    (tmp_path / "a.txt").write_text("\n".join(sentences(3000)) + "\n")
    spec = PrepareSpec(str(tmp_path / "a.txt"), fields=Fields(text_per_line=True), workers=1, shard_tokens=20_000)
    return spec, prepare(spec, tmp_path / "o", progress=False)


def first_shard(out):
    return sorted((out / "train").glob("*.bin"))[0]


def test_manifest_records_sizes_and_the_hash_of_the_written_bytes(prepared):
    _, out = prepared
    for info in json.loads((out / "manifest.json").read_text())["splits"].values():
        for meta in info["shards"]:
            for name, size, sha in ((meta["bin"], meta["bin_bytes"], meta["sha256"]),
                                    (meta["idx"], meta["idx_bytes"], meta["idx_sha256"])):
                assert (out / name).stat().st_size == size
                assert hashlib.sha256((out / name).read_bytes()).hexdigest() == sha


def test_opening_reads_no_shard_to_hash_it(prepared, monkeypatch):
    _, out = prepared
    monkeypatch.setattr(shards_module, "sha256_file", lambda path: pytest.fail(f"{path} hashed at open"))
    for split in ("train", "valid", "test"):
        ShardSet(out, split)


def test_corruption_with_the_size_intact_is_found_by_verify_only(prepared, capsys):
    spec, out = prepared
    assert verify_prepared(spec, out) == (out, 2 * sum(1 for _ in out.rglob("*.bin")))
    shard = first_shard(out)
    original = shard.read_bytes()
    data = bytearray(original)
    data[10] ^= 0xFF
    shard.write_bytes(bytes(data))
    ShardSet(out, "train")  # the documented trade-off: opening does not read the data
    with pytest.raises(UserError, match=rf"{shard}: checksum mismatch"):
        verify_prepared(spec, out)
    args = ["prepare", "--source", spec.source, "--set", "data.text_per_line=true", "--set", "data.shard_tokens=20000",
            "--workers", "1", "--out", str(out), "--verify"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"{shard}: checksum mismatch" in err
    assert main(["prepare", "--out", str(out), "--verify"]) == 2  # the shard directory alone, sources gone
    assert f"{shard}: checksum mismatch" in capsys.readouterr().err
    shard.write_bytes(original)
    assert main(args) == 0 and capsys.readouterr().out.startswith("OK: ")
    assert main(["prepare", "--out", str(out), "--verify"]) == 0 and capsys.readouterr().out.startswith("OK: ")


def test_a_truncated_shard_or_index_stops_at_open_naming_the_file(prepared):
    _, out = prepared
    shard = first_shard(out)
    data = shard.read_bytes()
    shard.write_bytes(data[:-4])
    with pytest.raises(UserError, match=rf"^{shard}: truncated or wrong size \(\d+ bytes, expected {len(data)}\)"):
        ShardSet(out, "train")
    shard.write_bytes(data)
    index = shard.with_name(shard.name.replace(".bin", ".idx.npy"))
    index.write_bytes(index.read_bytes()[:-24])
    with pytest.raises(UserError, match=rf"^{index}: truncated or wrong size"):
        ShardSet(out, "train")


def test_old_manifests_without_sizes_check_the_index_header(prepared):
    _, out = prepared
    manifest = json.loads((out / "manifest.json").read_text())
    for info in manifest["splits"].values():
        for meta in info["shards"]:
            del meta["bin_bytes"], meta["idx_bytes"]
    (out / "manifest.json").write_text(json.dumps(manifest))
    ShardSet(out, "train")
    index = out / manifest["splits"]["train"]["shards"][0]["idx"]
    original = index.read_bytes()
    index.write_bytes(original[:-24])
    with pytest.raises(UserError, match=rf"^{index}: unreadable shard index"):
        ShardSet(out, "train")
    index.write_bytes(original)
    bin_path = out / manifest["splits"]["train"]["shards"][1]["bin"]
    bin_path.write_bytes(bin_path.read_bytes()[:-2])  # its size still follows from n_tokens
    with pytest.raises(UserError, match=rf"^{bin_path}: truncated"):
        ShardSet(out, "train")


def test_verify_names_data_that_was_never_prepared(tmp_path, prepared):
    spec, _ = prepared
    with pytest.raises(UserError, match="no prepared data"):
        verify_prepared(spec, tmp_path / "elsewhere")
