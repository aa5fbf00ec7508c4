"""Data path: sources, tokenizers, prepare (parallel, cached, resumable), shards, streaming loaders, batching."""

import gzip
import json
import struct

import numpy as np
import pytest
from helpers import classify_rows, sentences, write_jsonl
import torch

from bigbatch.data import prepare as prep
from bigbatch.data.batching import ExampleLoader
from bigbatch.data.builtin import _keep_pair, read_mo
from bigbatch.data.loader import PAD_LENGTHS, PackedLMLoader
from bigbatch.data.prepare import PrepareSpec, prepare
from bigbatch.data.shards import ShardSet, token_dtype
from bigbatch.data.sources import Fields
from bigbatch.data.tokenizer import load_tokenizer_file
from bigbatch.errors import UserError

def spec(source, task="lm", **kw):
    fields = Fields(task=task, **{k: kw.pop(k) for k in list(kw) if k in ("text", "label", "src", "tgt",
                                                                          "text_per_line", "skip_bad_rows")})
    return PrepareSpec(source=str(source), task=task, fields=fields, workers=kw.pop("workers", 1), **kw)


# --------------------------------------------------------------------------- sources


def test_formats_give_the_same_records(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq
    import zstandard

    rows = classify_rows(200)
    jsonl = write_jsonl(tmp_path / "d.jsonl", rows)
    with gzip.open(tmp_path / "d.jsonl.gz", "wt") as f:
        f.write(jsonl.read_text())
    (tmp_path / "d.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(jsonl.read_bytes()))
    (tmp_path / "d.tsv").write_text("label\ttext\n" + "".join(f"{r['label']}\t{r['text']}\n" for r in rows))
    (tmp_path / "d.csv").write_text("text,label\n" + "".join(f"\"{r['text']}\",{r['label']}\n" for r in rows))
    pq.write_table(pa.table({"text": [r["text"] for r in rows], "label": [r["label"] for r in rows]}),
                   tmp_path / "d.parquet")
    manifests = []
    for name in ("d.jsonl", "d.jsonl.gz", "d.jsonl.zst", "d.tsv", "d.csv", "d.parquet"):
        out = prepare(spec(tmp_path / name, "classify"), tmp_path / f"out-{name}", progress=False)
        m = json.loads((out / "manifest.json").read_text())
        manifests.append(({k: (v["n_examples"], v["n_tokens"]) for k, v in m["splits"].items()}, m["labels"]))
    assert all(m == manifests[0] for m in manifests)
    assert sum(n for n, _ in manifests[0][0].values()) == 200


def test_hf_datasets_directories(tmp_path):
    datasets = pytest.importorskip("datasets")
    rows = classify_rows(100)
    ds = datasets.Dataset.from_list(rows)
    ds.save_to_disk(str(tmp_path / "single"))
    datasets.DatasetDict({"train": ds, "validation": datasets.Dataset.from_list(classify_rows(20, 1))}).save_to_disk(
        str(tmp_path / "dict"))
    m1 = json.loads((prepare(spec(tmp_path / "single", "classify"), tmp_path / "o1", progress=False)
                     / "manifest.json").read_text())
    assert sum(s["n_examples"] for s in m1["splits"].values()) == 100
    m2 = json.loads((prepare(spec(tmp_path / "dict", "classify"), tmp_path / "o2", progress=False)
                     / "manifest.json").read_text())
    assert m2["splits"]["train"]["n_examples"] == 100 and m2["splits"]["valid"]["n_examples"] == 20


def test_text_per_line_and_explicit_valid(tmp_path):
    (tmp_path / "a.txt").write_text("\n".join(sentences(300)) + "\n")
    (tmp_path / "v.txt").write_text("\n".join(sentences(30, 1)) + "\n")
    out = prepare(spec(tmp_path / "a.txt", text_per_line=True, valid_source=str(tmp_path / "v.txt")), tmp_path / "o",
                  progress=False)
    m = json.loads((out / "manifest.json").read_text())
    assert m["splits"]["train"]["n_examples"] == 300 and m["splits"]["valid"]["n_examples"] == 30


@pytest.mark.parametrize("content,message", [
    ('{"text": "a", "label": 1}\n{"text": "b", "label": \n', "d.jsonl:2: not valid JSON"),
    ('{"text": "a", "label": 1}\n{"txt": "b", "label": 0}\n', "d.jsonl:2: missing field 'text'"),
    ('{"text": "a", "label": 1}\n[1, 2]\n', "d.jsonl:2: expected a JSON object"),
    (b'{"text": "a", "label": 1}\n{"text": "\xff\xfe", "label": 0}\n', "d.jsonl:2: not UTF-8"),
])
def test_bad_rows_name_file_and_line(tmp_path, content, message):
    path = tmp_path / "d.jsonl"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(UserError, match=message):
        prepare(spec(path, "classify"), tmp_path / "o", progress=False)
    assert not (tmp_path / "o" / "manifest.json").exists()


def test_skip_bad_rows_counts_them(tmp_path):
    rows = [json.dumps(r) for r in classify_rows(50)]
    rows[3], rows[10] = "{broken", '{"label": "x"}'
    path = tmp_path / "d.jsonl"
    path.write_text("\n".join(rows) + "\n")
    out = prepare(spec(path, "classify", skip_bad_rows=True), tmp_path / "o", progress=False)
    m = json.loads((out / "manifest.json").read_text())
    assert m["skipped_rows"] == 2 and sum(s["n_examples"] for s in m["splits"].values()) == 48


def test_csv_with_wrong_column_count(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("text,label\nhello,a\nworld,b,extra\n")
    with pytest.raises(UserError, match=r"d.csv:3: 3 columns, the header has 2"):
        prepare(spec(path, "classify"), tmp_path / "o", progress=False)


def test_empty_and_missing_sources(tmp_path):
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(UserError, match="no usable examples"):
        prepare(spec(tmp_path / "empty.jsonl", "classify"), tmp_path / "o", progress=False)
    with pytest.raises(UserError, match="no such file"):
        prepare(spec(tmp_path / "nope" / "*.jsonl", "classify"), tmp_path / "o2", progress=False)


def test_label_only_in_valid_is_refused(tmp_path):
    train = write_jsonl(tmp_path / "t.jsonl", [{"text": s, "label": "a"} for s in sentences(20)])
    valid = write_jsonl(tmp_path / "v.jsonl", [{"text": "x y", "label": "b"}])
    with pytest.raises(UserError, match=r"labels \['b'\] occur in the valid split but never in train"):
        prepare(spec(train, "classify", valid_source=str(valid)), tmp_path / "o", progress=False)


# --------------------------------------------------------------------------- tokenizers and shards


@pytest.mark.parametrize("kind", ["bpe", "unigram"])
def test_trained_tokenizers_round_trip(tmp_path, kind):
    src = write_jsonl(tmp_path / "t.jsonl", [{"src": s, "tgt": s.upper()} for s in sentences(400)])
    out = prepare(spec(src, "translate", tokenizer=kind, vocab_size=300), tmp_path / "o", progress=False)
    tok = load_tokenizer_file(out / "tokenizer.json")
    assert tok.vocab_size <= 300
    text = "alpha beta GAMMA delta"
    assert tok.decode(tok.encode(text)).strip() == text
    assert json.loads((out / "manifest.json").read_text())["dtype"] == ("uint8" if tok.vocab_size <= 256 else "uint16")


def test_token_dtype_by_vocabulary():
    assert token_dtype(256) == "uint8" and token_dtype(259) == "uint16" and token_dtype(65536) == "uint16"
    assert token_dtype(65537) == "uint32"


def test_prepare_is_cached_and_redone_when_the_source_changes(tmp_path, monkeypatch):
    path = write_jsonl(tmp_path / "d.jsonl", classify_rows(100))
    calls = []
    real = prep._tokenize_group
    monkeypatch.setattr(prep, "_tokenize_group", lambda args: calls.append(len(args[1])) or real(args))
    monkeypatch.setenv("BIGBATCH_CACHE", str(tmp_path / "cache"))
    a = prepare(spec(path, "classify"), progress=False)
    n = len(calls)
    assert prepare(spec(path, "classify"), progress=False) == a and len(calls) == n  # nothing re-tokenised
    write_jsonl(path, classify_rows(120, 5))
    b = prepare(spec(path, "classify"), progress=False)
    assert b != a and len(calls) > n


def test_interrupted_prepare_resumes_without_retokenising(tmp_path, monkeypatch):
    (tmp_path / "a.txt").write_text("\n".join(sentences(3000)) + "\n")
    make = lambda: spec(tmp_path / "a.txt", text_per_line=True, shard_tokens=5000)  # noqa: E731
    prepare(make(), tmp_path / "whole", progress=False)

    calls, writes = [], []
    real_tok, real_write = prep._tokenize_group, prep._write_chunk
    monkeypatch.setattr(prep, "_tokenize_group", lambda args: calls.append(len(args[1])) or real_tok(args))

    def crash_after_two(*args):
        if len(writes) == 2:
            raise KeyboardInterrupt("killed")
        writes.append(1)
        real_write(*args)

    monkeypatch.setattr(prep, "_write_chunk", crash_after_two)
    with pytest.raises(KeyboardInterrupt):
        prepare(make(), tmp_path / "resumed", progress=False)
    assert not (tmp_path / "resumed" / "manifest.json").exists()
    first = sum(calls)
    monkeypatch.setattr(prep, "_write_chunk", real_write)
    calls.clear()
    prepare(make(), tmp_path / "resumed", progress=False)
    done_before = json.loads((tmp_path / "whole" / "manifest.json").read_text())
    after = json.loads((tmp_path / "resumed" / "manifest.json").read_text())
    assert sum(calls) < 3000 and first + sum(calls) < 3000 + prep.GROUP * 2  # finished chunks were not redone
    assert [s["sha256"] for s in after["splits"]["train"]["shards"]] == \
        [s["sha256"] for s in done_before["splits"]["train"]["shards"]]


def test_corrupt_and_truncated_shards_are_named(tmp_path):
    (tmp_path / "a.txt").write_text("\n".join(sentences(500)) + "\n")
    out = prepare(spec(tmp_path / "a.txt", text_per_line=True), tmp_path / "o", progress=False)
    shard = sorted((out / "train").glob("*.bin"))[0]
    data = bytearray(shard.read_bytes())
    data[10] ^= 0xFF
    shard.write_bytes(bytes(data))
    ShardSet(out, "train")  # opening checks sizes and headers only; the hash is `prepare --verify`'s job
    with pytest.raises(UserError, match=rf"{shard}: checksum mismatch"):
        ShardSet(out, "train", verify=True)
    shard.write_bytes(bytes(data[:-4]))
    with pytest.raises(UserError, match=rf"{shard}: truncated.*delete {out} and run the same command again"):
        ShardSet(out, "train")
    again = prepare(spec(tmp_path / "a.txt", text_per_line=True), tmp_path / "o", progress=False)  # repairs
    assert again == out and ShardSet(out, "train", verify=True).n_tokens > 0


def test_parallel_prepare_equals_serial(tmp_path):
    (tmp_path / "a.txt").write_text("\n".join(sentences(4000)) + "\n")
    a = prepare(spec(tmp_path / "a.txt", text_per_line=True, workers=1), tmp_path / "one", progress=False)
    b = prepare(spec(tmp_path / "a.txt", text_per_line=True, workers=2), tmp_path / "two", progress=False)
    ma, mb = (json.loads((d / "manifest.json").read_text()) for d in (a, b))
    assert [s["sha256"] for s in ma["splits"]["train"]["shards"]] == [s["sha256"] for s in mb["splits"]["train"]["shards"]]


# --------------------------------------------------------------------------- loaders


@pytest.fixture(scope="module")
def lm_shards(tmp_path_factory):
    d = tmp_path_factory.mktemp("lm")
    (d / "a.txt").write_text("\n".join(sentences(6000)) + "\n")
    return prepare(spec(d / "a.txt", text_per_line=True, shard_tokens=20000), d / "o", progress=False)


def test_lm_stream_resumes_exactly(lm_shards):
    shards = ShardSet(lm_shards, "train")
    assert len(shards.shards) > 3
    ref = PackedLMLoader(shards, 32, 64, seed=3)
    stream = [ref.next_batch()["input_ids"] for _ in range(400)]  # crosses an epoch boundary
    assert ref.walk.epoch >= 1
    first = PackedLMLoader(shards, 32, 64, seed=3)
    for _ in range(137):
        first.next_batch()
    state = json.loads(json.dumps(first.state_dict()))  # survives serialisation; a handful of integers
    resumed = PackedLMLoader(shards, 32, 64, seed=3)
    resumed.load_state_dict(state)
    assert all(torch.equal(resumed.next_batch()["input_ids"], stream[i]) for i in range(137, 400))


def test_lm_ranks_cover_an_epoch_exactly_once(lm_shards):
    shards = ShardSet(lm_shards, "train")
    one = PackedLMLoader(shards, 32, 1, seed=1)
    total = one.walk.total
    seen = []
    for rank in range(3):
        loader = PackedLMLoader(shards, 32, 1, seed=1, rank=rank, world_size=3)
        seen += [tuple(loader.walk.next()) for _ in range(loader.rows_per_epoch)]
    assert len(seen) == len(set(seen)) == total - total % 3


def test_lm_position_does_not_depend_on_the_number_of_ranks(lm_shards):
    """A step of 2 ranks x b rows reads the same rows as one process x 2 micro-batches of b, and a
    position saved by 2 ranks resumes on 1 at exactly the next rows."""
    shards = ShardSet(lm_shards, "train")
    one = PackedLMLoader(shards, 32, 4, seed=5)
    ranks = [PackedLMLoader(shards, 32, 4, seed=5, rank=r, world_size=2) for r in range(2)]
    rows = lambda batch: {tuple(x) for x in batch["input_ids"].tolist()}  # noqa: E731
    for _ in range(3):
        assert rows(one.next_batch()) | rows(one.next_batch()) == rows(ranks[0].next_batch()) | rows(ranks[1].next_batch())
    assert ranks[0].state_dict() == ranks[1].state_dict()
    resumed = PackedLMLoader(shards, 32, 4, seed=5)
    resumed.load_state_dict(ranks[0].state_dict())
    assert all(torch.equal(resumed.next_batch()["input_ids"], one.next_batch()["input_ids"]) for _ in range(4))
    five = PackedLMLoader(shards, 32, 4, seed=5, rank=0, world_size=5)
    with pytest.raises(UserError, match="not a multiple of 5"):
        five.load_state_dict(ranks[0].state_dict())  # 24 rows read: 5 ranks cannot share that position


def test_resume_on_other_data_is_refused(lm_shards, tmp_path):
    state = PackedLMLoader(ShardSet(lm_shards, "train"), 32, 4).state_dict()
    (tmp_path / "b.txt").write_text("\n".join(sentences(3000, 9)) + "\n")
    other = prepare(spec(tmp_path / "b.txt", text_per_line=True), tmp_path / "o", progress=False)
    with pytest.raises(UserError, match="different dataset"):
        PackedLMLoader(ShardSet(other, "train"), 32, 4).load_state_dict(state)


def test_document_mask_stops_attention_at_eos():
    from bigbatch.nn import CausalLM

    # rotary positions: attention within a document depends only on relative positions
    model = CausalLM(vocab_size=20, d_model=16, n_heads=2, n_layers=2, max_len=16, pos="rope").eval()
    ids = torch.tensor([[3, 4, 5, 1, 7, 8, 9, 10, 11]])  # eos = 1 ends the first document
    loader = PackedLMLoader.__new__(PackedLMLoader)
    loader.document_mask, loader.eos_id = True, 1
    mask = loader.make_batch([ids[0].numpy()])["attention_mask"]
    out = model(ids[:, :-1], attention_mask=mask)
    alone = model(ids[:, 4:-1])
    torch.testing.assert_close(out[:, 4:], alone, atol=1e-5, rtol=1e-5)


@pytest.fixture(scope="module")
def cls_shards(tmp_path_factory):
    d = tmp_path_factory.mktemp("cls")
    rows = classify_rows(3000)
    return prepare(spec(write_jsonl(d / "d.jsonl", rows), "classify", shard_tokens=30000), d / "o", progress=False)


def test_token_budget_batches(cls_shards):
    shards = ShardSet(cls_shards, "train")
    loader = ExampleLoader(shards, "classify", max_len=64, max_tokens=256, seed=0)
    for _ in range(50):
        b = loader.next_batch()
        assert b["input_ids"].numel() <= 256 and b["input_ids"].size(1) in PAD_LENGTHS
        assert b["attention_mask"].sum(1).min() >= 1
    # sorting a window by length leaves far less padding than cutting the same examples unsorted
    s = shards.shards[0]
    ids = np.random.default_rng(0).permutation(s.n_examples)[:1000]
    unsorted = loader._padding_of(loader._cut(ids, loader._lengths(s.index[ids])), s)
    assert loader._padding_of(loader._sorted_cut(s, ids), s) < 0.5 * unsorted


def test_example_batches_resume_and_split_across_ranks(cls_shards):
    shards = ShardSet(cls_shards, "train")
    ref = ExampleLoader(shards, "classify", max_len=64, max_tokens=512, seed=2, window=256)
    stream = [ref.next_batch()["input_ids"] for _ in range(120)]
    a = ExampleLoader(shards, "classify", max_len=64, max_tokens=512, seed=2, window=256)
    for _ in range(55):
        a.next_batch()
    b = ExampleLoader(shards, "classify", max_len=64, max_tokens=512, seed=2, window=256)
    b.load_state_dict(a.state_dict())
    assert all(torch.equal(b.next_batch()["input_ids"], stream[i]) for i in range(55, 120))
    # a position saved by 2 ranks (after whole blocks of 2 batches) resumes on 1 at the next batch
    pair = [ExampleLoader(shards, "classify", max_len=64, max_tokens=512, seed=2, window=256, rank=r, world_size=2)
            for r in range(2)]
    for _ in range(20):
        for loader in pair:
            loader.next_batch()
    assert pair[0].state_dict() == pair[1].state_dict()
    c = ExampleLoader(shards, "classify", max_len=64, max_tokens=512, seed=2, window=256)
    c.load_state_dict(pair[1].state_dict())
    assert all(torch.equal(c.next_batch()["input_ids"], stream[i]) for i in range(40, 60))
    # two ranks split each epoch's batches: together every example exactly once
    seen = []
    for rank in range(2):
        loader = ExampleLoader(shards, "classify", max_len=64, max_tokens=512, seed=2, rank=rank, world_size=2)
        while True:
            shard, ids = loader._advance()
            if loader.batch_epoch > 0:  # this batch already belongs to the next epoch
                break
            seen += [(shard, int(i)) for i in ids]
    assert len(seen) == len(set(seen)) == shards.n_examples


def test_translation_batches(tmp_path):
    src = write_jsonl(tmp_path / "t.jsonl", [{"src": s, "tgt": s[::-1]} for s in sentences(500)])
    out = prepare(spec(src, "translate"), tmp_path / "o", progress=False)
    loader = ExampleLoader(ShardSet(out, "train"), "translate", max_len=128, max_tokens=2048)
    b = loader.next_batch()
    assert (b["tgt_ids"][:, 0] == 258).all()  # bos of the byte tokenizer
    lengths = b["tgt_mask"].sum(1)
    assert all(b["tgt_ids"][i, n - 1] == 256 for i, n in enumerate(lengths.tolist()))  # eos ends each target
    assert b["n_targets"] == int((lengths - 1).sum())
    # a max_len off the padding grid: sources are cut to it and never padded past it (the model's positions)
    short = ExampleLoader(ShardSet(out, "train"), "translate", max_len=56, max_tokens=4096)
    for batch in short.eval_batches():
        assert batch["src_ids"].size(1) <= 56 and batch["tgt_ids"].size(1) - 1 <= 56


# --------------------------------------------------------------------------- gettext


def write_mo(path, pairs):
    """A minimal GNU .mo file (little-endian) holding ``pairs``."""
    pairs = sorted(pairs)
    ids, strs = b"", b""
    offsets = []
    for msgid, msgstr in pairs:
        offsets.append((len(ids), len(msgid.encode()), len(strs), len(msgstr.encode())))
        ids += msgid.encode() + b"\0"
        strs += msgstr.encode() + b"\0"
    n = len(pairs)
    key_start = 28 + 16 * n
    table_o = b"".join(struct.pack("<2I", ln, key_start + o) for o, ln, _, _ in offsets)
    table_t = b"".join(struct.pack("<2I", ln, key_start + len(ids) + o) for _, _, o, ln in offsets)
    path.write_bytes(struct.pack("<7I", 0x950412DE, 0, n, 28, 28 + 8 * n, 0, 0) + table_o + table_t + ids + strs)


def test_read_mo_and_filters(tmp_path):
    write_mo(tmp_path / "x.mo", [("Open file", "Datei öffnen"), ("%s of %d", "%s von %d"), ("ctx\x04Save", "Speichern")])
    assert sorted(read_mo(tmp_path / "x.mo")) == [("%s of %d", "%s von %d"), ("Open file", "Datei öffnen"),
                                                   ("Save", "Speichern")]
    assert _keep_pair("Open file", "Datei öffnen")
    assert not _keep_pair("OK", "OK")  # identical
    assert not _keep_pair("%s: %d", "%s: %d %d")  # placeholders differ
    assert not _keep_pair("%s", "%s!")  # format only
    assert not _keep_pair("Delete %s", "Löschen")  # a placeholder lost


def test_debian_descriptions_join_by_md5(tmp_path, monkeypatch):
    """The builder joins Section (Packages) to the long description (Translation-en) and keys by source package."""
    from bigbatch.data import debian

    monkeypatch.setenv("BIGBATCH_CACHE", str(tmp_path))
    lists = tmp_path / "apt" / "lists"
    lists.mkdir(parents=True)
    (lists / "x_main_binary-amd64_Packages").write_text(
        "Package: foo\nSection: utils\nDescription-md5: aa\n\n"
        "Package: libfoo-dev\nSource: foo (1.0)\nSection: libdevel\nDescription-md5: bb\n\n"
        "Package: bar\nSection: contrib/games\nDescription-md5: cc\n\n"
        "Package: nodesc\nSection: utils\nDescription-md5: zz\n")
    (lists / "x_main_i18n_Translation-en").write_text(
        "Package: foo\nDescription-md5: aa\nDescription-en: do foo\n a tool.\n .\n more.\n\n"
        "Package: libfoo-dev\nDescription-md5: bb\nDescription-en: foo headers\n\n"
        "Package: bar\nDescription-md5: cc\nDescription-en: a game\n")
    records = list(debian.debian_descriptions("classify"))
    assert records == [("foo", {"text": "do foo\na tool.\n\nmore.", "label": "utils"}),
                       ("foo", {"text": "foo headers", "label": "libdevel"}),
                       ("bar", {"text": "a game", "label": "games"})]
    with pytest.raises(UserError, match="set task=classify"):
        list(debian.debian_descriptions("lm"))


def test_tsv_has_no_quoting_and_a_bom_is_not_text(tmp_path):
    from bigbatch.data.sources import BadRows, read_file

    tsv = tmp_path / "a.tsv"  # an unclosed quote must not swallow the rows after it
    tsv.write_bytes(b'\xef\xbb\xbftext\tlabel\nhello world\ta\n"unclosed quote\tb\nthird row\tc\n')
    rows = list(read_file(tsv, Fields(task="classify"), BadRows()))
    assert [r["label"] for r in rows] == ["a", "b", "c"] and rows[1]["text"] == '"unclosed quote'
    jsonl = tmp_path / "a.jsonl"
    jsonl.write_bytes(b'\xef\xbb\xbf{"t": "x y", "l": "p"}\n{"t": "z", "l": "q"}\n')
    rows = list(read_file(jsonl, Fields(task="classify", text="t", label="l"), BadRows()))
    assert rows == [{"text": "x y", "label": "p"}, {"text": "z", "label": "q"}]
    quoted = tmp_path / "q.tsv"  # as pandas / csv.writer(delimiter="\t") write it: quoted where needed
    import csv as csv_module

    with open(quoted, "w", newline="") as f:
        w = csv_module.writer(f, delimiter="\t")
        w.writerows([["text", "label"], ['he said "hi"', "a"], ["tab\there", "b"], ["plain", "c"]])
    rows = list(read_file(quoted, Fields(task="classify"), BadRows()))
    assert [r["text"] for r in rows] == ['he said "hi"', "tab\there", "plain"]
    plain = tmp_path / "p.tsv"  # a plain TSV whose text happens to be in quotes keeps them
    plain.write_text('text\tlabel\n"Hello"\ta\n"open\tb\n')
    assert [r["text"] for r in read_file(plain, Fields(task="classify"), BadRows())] == ['"Hello"', '"open']
    csv_file = tmp_path / "a.csv"  # CSV keeps its quoting: a quoted comma and newline stay in the field
    csv_file.write_text('text,label\n"one, two\nthree",a\nfour,b\n')
    rows = list(read_file(csv_file, Fields(task="classify"), BadRows()))
    assert rows[0] == {"text": "one, two\nthree", "label": "a"} and len(rows) == 2


def test_train_never_replaces_shards_the_user_prepared(tmp_path):
    from bigbatch.data.pipeline import shard_dir_for
    from bigbatch.config import load_config

    path = write_jsonl(tmp_path / "d.jsonl", classify_rows(60))
    out = prepare(spec(path, "classify"), tmp_path / "mine", progress=False)  # byte tokenizer
    before = sorted(p.name for p in out.rglob("*"))
    cfg = load_config(None, ["task=classify", f"data.source={path}", f"data.shard_dir={out}", "data.tokenizer=bpe",
                             "data.vocab_size=300"])
    with pytest.raises(UserError, match=r"holds data prepared with other settings \(tokenizer byte -> bpe 300\)"):
        shard_dir_for(cfg, progress=False)
    assert sorted(p.name for p in out.rglob("*")) == before
    same = load_config(None, ["task=classify", f"data.source={path}", f"data.shard_dir={out}", "data.tokenizer=byte"])
    assert shard_dir_for(same, progress=False) == out  # the same settings reuse them
