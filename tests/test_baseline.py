"""`bigbatch baseline`: the strong simple baselines, on the same splits as the shards, checked against references."""

import csv
import json
import sys
from collections import Counter

import numpy as np
import pytest
import sacrebleu

from bigbatch.config import load_config
from bigbatch.data.pipeline import prepare_spec
from bigbatch.data.prepare import split_records
from bigbatch.errors import UserError
from bigbatch.evaluate.baseline import baseline, classify_baseline, sample, tfidf_features, tfidf_logreg_predict
from bigbatch.evaluate.dictionary import WordDictionary, tokenize
from bigbatch.evaluate.ngram import BOS, ByteNgram
from helpers import run_cli, write_jsonl

EN = "cat dog sun moon tree rock fish bird star leaf house river stone cloud wind rain snow fire door road".split()
XX = ("kato hundo suno luno arbo roko fiso birdo stelo folio domo rivo stono nubo vento pluvo nego fajro pordo "
      "vojo").split()


def _pairs(n, seed=0):
    """A word-substitution language: every English word has one foreign word, word order kept."""
    rng = np.random.default_rng(seed)
    lex = dict(zip(EN, XX))
    rows = []
    for i in range(n):
        words = list(rng.choice(EN, size=rng.integers(3, 9)))
        tail = f" {i} %s." if i % 3 == 0 else "."
        rows.append({"en": " ".join(words).capitalize() + tail,
                     "xx": " ".join(lex[w] for w in words).capitalize() + tail})
    return rows


def _cfg(*sets):
    return load_config(None, list(sets))


def test_split_records_disjoint_splits_whose_union_is_the_source(tmp_path):
    rows = [{"text": f"document {i} " + "x" * (i % 7)} for i in range(600)]
    write_jsonl(tmp_path / "d.jsonl", rows)
    spec = prepare_spec(_cfg("task=lm", f"data.source={tmp_path / 'd.jsonl'}"))
    splits = {s: [r["text"] for r in split_records(spec, s)] for s in ("train", "valid", "test")}
    assert all(splits.values())
    assert Counter(t for texts in splits.values() for t in texts) == Counter(r["text"] for r in rows)
    assert not set(splits["train"]) & set(splits["valid"]) and not set(splits["valid"]) & set(splits["test"])
    # an explicit valid source: all of it is valid, all of the main source is train, no test
    write_jsonl(tmp_path / "v.jsonl", [{"text": "held out"}])
    spec = prepare_spec(_cfg("task=lm", f"data.source={tmp_path / 'd.jsonl'}",
                             f"data.valid_source={tmp_path / 'v.jsonl'}"))
    assert [r["text"] for r in split_records(spec, "valid")] == ["held out"]
    assert len(list(split_records(spec, "train"))) == len(rows) and not list(split_records(spec, "test"))
    with pytest.raises(UserError):
        next(split_records(spec, "dev"))


def test_sample_is_seeded_uniform_in_order_and_capped():
    s, n = sample(iter(range(1000)), 100, seed=1)
    assert n == 1000 and len(s) == 100 and s == sorted(s) and len(set(s)) == 100
    assert sample(range(1000), 100, seed=1)[0] == s and sample(range(1000), 100, seed=2)[0] != s
    assert abs(np.mean([np.mean(sample(range(1000), 100, seed=k)[0]) for k in range(50)]) - 499.5) < 15
    texts = ["ab" * (i % 50 + 1) for i in range(500)]
    kept, _ = sample(texts, None, max_bytes=2000, size=len, seed=0)
    assert 1900 < sum(map(len, kept)) <= 2000
    assert sample(range(10), 100)[0] == list(range(10))


# --------------------------------------------------------------------------- translate


def test_translation_baselines(tmp_path):
    write_jsonl(tmp_path / "pairs.jsonl", _pairs(2000))
    cfg = _cfg("task=translate", f"data.source={tmp_path / 'pairs.jsonl'}", "data.src_field=en", "data.tgt_field=xx")
    result = baseline(cfg, "valid")
    evals = list(split_records(prepare_spec(cfg), "valid"))
    srcs, refs = [r["src"] for r in evals], [r["tgt"] for r in evals]
    copy = result["methods"]["copy_source"]
    assert copy["bleu"] == pytest.approx(sacrebleu.corpus_bleu(srcs, [refs]).score)
    assert copy["chrf"] == pytest.approx(sacrebleu.corpus_chrf(srcs, [refs]).score)
    assert result["method"] == "word_dictionary" and result["bleu"] > 95 > copy["bleu"] + 50
    assert result["bleu"] == result["methods"]["word_dictionary"]["bleu"]
    assert result["eval_examples"] == result["eval_examples_total"] == len(evals)
    assert result["train_examples"] + len(evals) + len(list(split_records(prepare_spec(cfg), "test"))) == 2000
    assert result["task"] == "translate" and result["split"] == "valid" and result["seconds"] >= 0


def test_dictionary_keeps_placeholders_case_and_spacing():
    d = WordDictionary().fit(["the cat", "the dog", "a cat", "a dog"] * 3,
                             ["le chat", "le chien", "un chat", "un chien"] * 3)
    assert d.table["cat"] == "chat" and d.table["dog"] == "chien"
    assert d.translate("The cat, %(name)s and {0}:  DOG 42%") == "Le chat, %(name)s and {0}:  CHIEN 42%"
    tokens = [t for _, t, _ in tokenize("%.*s files at 3.5 <b>x</b>")]
    assert tokens == ["%.*s", "files", "at", "3.5", "<b>", "x", "</b>"]


def test_dictionary_ties_do_not_depend_on_the_hash_seed():
    """Equal Dice scores go to the target word seen first, whatever PYTHONHASHSEED orders sets by."""
    import os
    import subprocess

    code = ("from bigbatch.evaluate.dictionary import WordDictionary as D; "
            "print(sorted(D(min_count=1).fit(['a b c', 'd e f'], ['x y z', 'u v w']).table.items()))")
    outs = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                           env={**os.environ, "PYTHONHASHSEED": str(seed)}).stdout for seed in range(4)}
    assert outs == {str(sorted(zip("abcdef", "xxxuuu"))) + "\n"}


# --------------------------------------------------------------------------- classify


def _classify_rows(n, seed=0):
    rng = np.random.default_rng(seed)
    fruit, tool = ["apple", "pear", "plum", "cherry", "mango"], ["hammer", "saw", "drill", "wrench", "chisel"]
    filler = "the a my your this old new red big small".split()
    rows = []
    for _ in range(n):
        label = str(rng.choice(["fruit", "tool"]))
        words = list(rng.choice(filler, size=rng.integers(2, 10))) + [rng.choice(fruit if label == "fruit" else tool)]
        rng.shuffle(words)
        rows.append({"sentence": " ".join(words), "topic": label})
    return rows


def test_classification_baseline_on_csv(tmp_path):
    with open(tmp_path / "c.csv", "w", newline="") as f:
        w = csv.DictWriter(f, ["sentence", "topic"])
        w.writeheader()
        w.writerows(_classify_rows(1500))
    cfg = _cfg("task=classify", f"data.source={tmp_path / 'c.csv'}", "data.text_field=sentence",
               "data.label_field=topic")
    result = baseline(cfg, "test")
    assert result["method"] == "tfidf_logreg" and result["accuracy"] > 0.95 and result["macro_f1"] > 0.95
    train, test = (list(split_records(prepare_spec(cfg), s)) for s in ("train", "test"))
    predicted = tfidf_logreg_predict([r["text"] for r in train], [r["label"] for r in train], [r["text"] for r in test])
    assert result["accuracy"] == pytest.approx(np.mean([p == r["label"] for p, r in zip(predicted, test)]))
    majority = Counter(r["label"] for r in train).most_common(1)[0][0]
    assert result["methods"]["majority"]["accuracy"] == pytest.approx(np.mean([r["label"] == majority for r in test]))


def test_unseen_eval_label_is_an_error():
    rows = _classify_rows(300)
    texts, labels = [r["sentence"] for r in rows], [r["topic"] for r in rows]
    result = classify_baseline(texts, labels, texts[:20] + ["a red apple"], labels[:20] + ["never-seen"])
    predicted = tfidf_logreg_predict(texts, labels, texts[:20])
    assert result["accuracy"] == pytest.approx(sum(p == y for p, y in zip(predicted, labels[:20])) / 21)


def test_char_ngram_features_equal_sklearns_char_wb():
    from scipy.sparse import hstack
    from sklearn.feature_extraction.text import TfidfVectorizer

    texts = [r["sentence"] + " Ünïcode\tTabs  x" * (i % 2) for i, r in enumerate(_classify_rows(200))]
    ours, ours_eval = tfidf_features(texts[:150], texts[150:])
    word = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True).fit(texts[:150])
    char = TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5), sublinear_tf=True).fit(texts[:150])
    for x, part in ((ours, texts[:150]), (ours_eval, texts[150:])):
        ref = hstack([word.transform(part), char.transform(part)])
        assert x.shape == ref.shape and abs(x - ref).max() < 1e-6


def test_missing_scikit_learn_is_one_line(tmp_path, monkeypatch):
    write_jsonl(tmp_path / "c.jsonl", [{"text": "a", "label": "x"}])
    monkeypatch.setitem(sys.modules, "sklearn", None)
    with pytest.raises(UserError, match="pip install scikit-learn"):
        baseline(_cfg("task=classify", f"data.source={tmp_path / 'c.jsonl'}"))


# --------------------------------------------------------------------------- lm


def _kn_reference(docs, order, context, w):
    """Interpolated modified Kneser-Ney by the book, one probability at a time, with dicts."""
    grams = Counter()
    for d in docs:
        s = (BOS,) * (order - 1) + tuple(d)
        grams.update(s[i - order + 1 : i + 1] for i in range(order - 1, len(s)))
    tables = {order: grams}
    for k in range(order - 1, 0, -1):
        tables[k] = Counter(g[1:] for g in tables[k + 1])  # continuation counts

    def discounts(counts):
        n1, n2, n3, n4 = (sum(c == i for c in counts) for i in (1, 2, 3, 4))
        if min(n1, n2, n3, n4) == 0:
            y = n1 / (n1 + 2 * n2)
            return np.clip([y, y, y], 0.05, [1, 2, 3])
        y = n1 / (n1 + 2 * n2)
        return np.clip([1 - 2 * y * n2 / n1, 2 - 3 * y * n3 / n2, 3 - 4 * y * n4 / n3], 0.05, [1, 2, 3])

    def p(k, h):
        if k == 0:
            return 1 / 256
        table, d = tables[k], discounts(list(tables[k].values()))
        ext = [c for g, c in table.items() if g[:-1] == h]
        if not ext:
            return p(k - 1, h[1:])
        c = table.get(h + (w,), 0)
        own = max(c - d[min(c, 3) - 1], 0) if c else 0.0
        return own / sum(ext) + sum(d[min(x, 3) - 1] for x in ext) / sum(ext) * p(k - 1, h[1:])

    h = ((BOS,) * (order - 1) + tuple(context))[len(context):] if order > 1 else ()
    return p(order, h)


def test_byte_ngram_matches_reference_and_is_normalised():
    docs = [b"abracadabra abracadabra", b"the cat sat on the mat", b"abba", b"cadabra"]
    model = ByteNgram(3).fit(docs)
    for context in (b"", b"a", b"ab", b"the c", b"zq", b"\xff"):
        dist = model.distribution(context)
        assert dist.shape == (256,) and (dist > 0).all() and dist.sum() == pytest.approx(1.0, abs=1e-12)
        for w in (ord("a"), ord("b"), ord("c"), ord(" "), 0):
            assert dist[w] == pytest.approx(_kn_reference(docs, 3, context[-2:], w), rel=1e-12), (context, w)
    lp = model.log2_probs([b"abra", b"cat"])
    assert len(lp) == 7 and lp[0] == pytest.approx(np.log2(model.distribution(b"")[ord("a")]))
    assert lp[4] == pytest.approx(np.log2(model.distribution(b"")[ord("c")]))  # a new document: a fresh context


def test_lm_baseline_on_repetitive_text(tmp_path):
    rng = np.random.default_rng(0)
    phrases = ["def forward(self, x):\n", "    return self.proj(x)\n", "import numpy as np\n", "# a comment\n"]
    rows = [{"text": "".join(rng.choice(phrases, size=30))} for _ in range(400)]
    write_jsonl(tmp_path / "lm.jsonl", rows)
    result = baseline(_cfg("task=lm", f"data.source={tmp_path / 'lm.jsonl'}"), "valid")
    unigram = result["methods"]["byte_unigram"]["bits_per_byte"]
    assert result["method"] == "byte_5gram_kn" and result["bits_per_byte"] < 0.25 * unigram
    assert 3 < unigram < 8 and result["eval_bytes"] > 0
    for context in (b"def forw", b"    ret", b"\x00\x01"):
        model = ByteNgram(5).fit(r["text"].encode() for r in rows)
        assert model.distribution(context).sum() == pytest.approx(1.0, abs=1e-12)


# --------------------------------------------------------------------------- command line


def test_baseline_command_line(tmp_path):
    write_jsonl(tmp_path / "pairs.jsonl", _pairs(600))
    config = tmp_path / "config.yaml"
    config.write_text(f"task: translate\ndata: {{source: {tmp_path / 'pairs.jsonl'}, src_field: en, tgt_field: xx}}\n")
    result = json.loads(run_cli("baseline", config, "--json", "--split", "test").stdout)
    assert result["split"] == "test" and result["method"] == "word_dictionary" and result["bleu"] > 80
    assert set(result["methods"]) == {"copy_source", "word_dictionary"}
    out = run_cli("baseline", tmp_path, "--max-examples", "50").stdout  # a run directory: its config.yaml
    assert "valid copy_source: bleu" in out and "50 of" in out


def test_baseline_missing_path_exits_2(tmp_path):
    proc = run_cli("baseline", tmp_path / "nope.yaml", check=False)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1 and "nope.yaml" in proc.stderr


def test_tfidf_baseline_when_no_word_occurs_twice():
    """Texts that are one unique token each (codes, sequences): no word n-gram survives min_df, the
    character n-grams carry the baseline instead of a crash."""
    pytest.importorskip("sklearn")
    from bigbatch.evaluate.baseline import classify_baseline

    rng = np.random.default_rng(0)
    labels = [str(rng.choice(["low", "high"])) for _ in range(1200)]
    texts = ["".join(rng.choice(list("abcde" if y == "low" else "fghij"), size=12)) for y in labels]
    assert len(set(texts)) == len(texts)  # every text a word of its own
    result = classify_baseline(texts[:1000], labels[:1000], texts[1000:], labels[1000:])
    assert result["method"] == "tfidf_logreg" and result["accuracy"] > 0.95  # the letters tell the class
