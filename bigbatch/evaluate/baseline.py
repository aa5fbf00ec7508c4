"""`bigbatch baseline`: the strong simple baseline of a config's task, on the splits the Transformer uses.

    classify   TF-IDF of word 1-2-grams + character 2-5-grams (char_wb) -> logistic regression;
               and the majority class
    translate  copy the source; and a word-by-word dictionary (Dice coefficient of co-occurrence)
    lm         bits per byte of a byte unigram and of a byte n-gram (interpolated modified Kneser-Ney)
    vision     logistic regression on the raw pixels (standardised) of the prepared images; and the majority class
    audio      logistic regression on the mean and standard deviation over time of 20 MFCCs (the DCT of the
               log-mel spectrogram the model reads); and the majority class

Memory does not grow with the data: the training split is sampled (seeded, uniform without
replacement) down to a cap of examples or of text bytes, the evaluation split too; the result says
how many examples were used of how many.
"""

from __future__ import annotations

import heapq
import random
import time
from collections import Counter
from typing import Callable, Iterable, Iterator

import numpy as np
from tqdm import tqdm

from bigbatch.errors import UserError

# bumped when a baseline's method changes, so cached results of the old one are not reused (evaluate/run.py)
BASELINE_VERSION = 2  # 2: evaluation words unseen in training keep their character n-grams; vision, audio
# (examples, bytes of text) kept of a split, whichever is reached first; None = no cap. Classification's
# features take about 50 bytes of memory per byte of text at their peak, the n-gram counts about 30.
TRAIN_CAP = {"classify": (200_000, 40_000_000), "translate": (200_000, None), "lm": (None, 20_000_000),
             "vision": (None, 200_000_000), "audio": (200_000, 400_000_000)}  # bytes of pixels / samples as stored
EVAL_CAP = {"classify": (50_000, None), "translate": (50_000, None), "lm": (None, 2_000_000),
            "vision": (50_000, 100_000_000), "audio": (50_000, 200_000_000)}


def baseline(cfg, split: str = "valid", max_train_examples: int | None = None, seed: int = 0,
             progress: bool = False) -> dict:
    """The baselines of ``cfg.task`` trained on a sample of the train split, scored on a sample of ``split``.

    -> {"task", "split", "method" (the best), its metrics (accuracy + macro_f1 | bleu + chrf | bits_per_byte),
        "methods": {name: metrics}, "train_examples", "eval_examples" (used), "train_examples_total",
        "eval_examples_total" (in the split), "seconds"}
    """
    from bigbatch.data.pipeline import prepare_spec
    from bigbatch.data.prepare import split_records

    if split not in ("valid", "test"):
        raise UserError(f"split {split!r}: expected valid or test")
    if max_train_examples is not None and max_train_examples < 1:
        raise UserError(f"max_train_examples={max_train_examples}: expected a number >= 1")
    start = time.time()
    if cfg.task in ("vision", "audio"):
        return {**media_baseline(cfg, split, max_train_examples, seed, progress), "seconds": round(time.time() - start, 2)}
    task, spec = cfg.task, prepare_spec(cfg)
    if task == "classify":
        _sklearn()  # before reading any data
    size = _text_bytes if task in ("lm", "classify") else None
    n_train, n_bytes = TRAIN_CAP[task]
    n_train = max_train_examples or n_train
    train, train_total = sample(_read(split_records(spec, "train"), "train", progress), n_train, n_bytes, size, seed)
    evals, eval_total = sample(_read(split_records(spec, split), split, progress), *EVAL_CAP[task], size, seed + 1)
    for name, records in (("train", train), (split, evals)):
        if not records:
            raise UserError(f"data.source={spec.source!r}: the {name} split has no examples")
    if task == "classify":
        result = classify_baseline([r["text"] for r in train], [str(r["label"]) for r in train],
                                   [r["text"] for r in evals], [str(r["label"]) for r in evals])
    elif task == "translate":
        result = translate_baseline([r["src"] for r in train], [r["tgt"] for r in train],
                                    [r["src"] for r in evals], [r["tgt"] for r in evals])
    else:  # one document larger than the cap (a whole-file .txt) is cut to it: memory stays bounded
        result = lm_baseline(_cut_to(train, TRAIN_CAP["lm"][1]), _cut_to(evals, EVAL_CAP["lm"][1]))
    return {"task": task, "split": split, **result, "train_examples": len(train), "eval_examples": len(evals),
            "train_examples_total": train_total, "eval_examples_total": eval_total,
            "seconds": round(time.time() - start, 2)}


def _cut_to(records: list[dict], max_bytes: int) -> list[str]:
    """The texts of ``records`` cut so that together they hold at most about ``max_bytes`` UTF-8 bytes."""
    out, left = [], max_bytes
    for r in records:
        text = r["text"]
        if len(text) > left:  # characters >= bytes / 4: cutting by characters bounds the bytes too
            text = text[:left]
        out.append(text)
        left -= len(text.encode("utf-8"))
        if left <= 0:
            break
    return out


def _read(records: Iterator[dict], split: str, progress: bool) -> Iterator[dict]:
    return iter(tqdm(records, desc=f"read {split}", unit=" examples", disable=not progress, mininterval=1.0))


def _text_bytes(record: dict) -> int:
    return len(record["text"].encode("utf-8"))


def sample(records: Iterable, max_items: int | None, max_bytes: int | None = None,
           size: Callable[[object], int] | None = None, seed: int = 0) -> tuple[list, int]:
    """A seeded uniform sample without replacement of a stream, in stream order -> (sample, items read).

    Bottom-k sampling: every item draws a random key, the sample is the longest run of smallest keys
    within ``max_items`` items and ``max_bytes`` bytes (``size(item)``; at least one item). Memory is
    the sample, whatever the length of the stream.
    """
    rng = random.Random(seed)
    heap: list = []  # (-key, index, size, item): the largest key on top
    total = n = 0
    for n, item in enumerate(records, start=1):
        s = size(item) if size is not None else 0
        heapq.heappush(heap, (-rng.random(), n, s, item))
        total += s
        while len(heap) > 1 and ((max_items is not None and len(heap) > max_items)
                                 or (max_bytes is not None and total > max_bytes)):
            total -= heapq.heappop(heap)[2]
    return [item for _, _, _, item in sorted(heap, key=lambda e: e[1])], n


# --------------------------------------------------------------------------- classify


def _sklearn():
    try:
        import sklearn  # noqa: F401
    except ImportError:
        raise UserError("the classification baseline needs scikit-learn: pip install scikit-learn "
                        "(or pip install 'bigbatch[baseline]')") from None


def tfidf_features(train_texts: list[str], eval_texts: list[str]):
    """TF-IDF (sublinear tf, smooth idf, l2 rows) of word 1-2-grams and of character 2-5-grams within words
    (char_wb), side by side -> (train (N, F), eval (M, F)) sparse CSR float32; n-grams in fewer than 2 training
    documents are left out (1 below 1,000 documents).

    The character n-grams of a document are the sum of those of its words, so they are counted once
    per distinct word and multiplied out (documents x words @ words x n-grams): the same matrix as
    TfidfVectorizer(analyzer="char_wb"), three times faster, and built in place (peak memory about
    twice the result, not five times).
    """
    from sklearn.feature_extraction.text import CountVectorizer, TfidfVectorizer

    min_df = 2 if len(train_texts) >= 1000 else 1
    word = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=min_df, dtype=np.float32)
    words = CountVectorizer(token_pattern=r"\S+", dtype=np.float32)  # char_wb's words: lower-cased, split on space
    doc_words = words.fit_transform(train_texts)
    chars = CountVectorizer(analyzer="char_wb", ngram_range=(2, 5), lowercase=False, dtype=np.float32)
    word_chars = chars.fit_transform(words.get_feature_names_out())  # (words, n-grams)
    df = np.zeros(word_chars.shape[1], dtype=np.int64)
    for i in range(0, doc_words.shape[0], 4096):  # document frequencies block by block: no second full matrix
        df += np.bincount((doc_words[i : i + 4096] @ word_chars).indices, minlength=len(df))
    keep = np.flatnonzero(df >= min_df)
    word_chars = word_chars[:, keep]
    idf = (np.log((1 + len(train_texts)) / (1 + df[keep])) + 1).astype(np.float32)
    try:
        word_train, word_eval = word.fit_transform(train_texts), None
        word_eval = word.transform(eval_texts)
    except ValueError:  # no word n-gram occurs in 2 training documents (one unique token per text): characters only
        from scipy.sparse import csr_matrix

        word_train = csr_matrix((len(train_texts), 0), dtype=np.float32)
        word_eval = csr_matrix((len(eval_texts), 0), dtype=np.float32)
    train = _hstack_csr(word_train, _tfidf(doc_words @ word_chars, idf))
    # the evaluation texts' own words (a word never seen in training still has known character n-grams)
    eval_words = CountVectorizer(token_pattern=r"\S+", dtype=np.float32)
    try:
        eval_doc_words = eval_words.fit_transform(eval_texts)
        eval_chars = chars.transform(eval_words.get_feature_names_out())[:, keep]
    except ValueError:  # every evaluation text empty
        from scipy.sparse import csr_matrix

        eval_doc_words, eval_chars = csr_matrix((len(eval_texts), 1), dtype=np.float32), word_chars[:1] * 0
    evals = _hstack_csr(word_eval, _tfidf(eval_doc_words @ eval_chars, idf))
    return train, evals


def _hstack_csr(a, b):
    """[a b] of two CSR matrices with the same rows, float32, ``b``'s column indices shifted in place: the
    result plus a bit per entry, where scipy's hstack holds two more copies of the entries at its peak."""
    from scipy.sparse import csr_matrix

    n = a.nnz + b.nnz
    in_a = np.zeros(n, dtype=bool)  # row r of the result: a's entries of row r, then b's
    in_a[np.arange(a.nnz) + np.repeat(b.indptr[:-1], np.diff(a.indptr))] = True
    index = np.int32 if max(n, a.shape[1] + b.shape[1]) < 2**31 else np.int64
    data, indices = np.empty(n, dtype=np.float32), np.empty(n, dtype=index)
    data[in_a], indices[in_a] = a.data, a.indices
    b.indices += a.shape[1]
    in_a = ~in_a
    data[in_a], indices[in_a] = b.data, b.indices
    indptr = a.indptr.astype(index) + b.indptr.astype(index)
    return csr_matrix((data, indices, indptr), shape=(a.shape[0], a.shape[1] + b.shape[1]))


def _tfidf(counts, idf: np.ndarray):
    """Term counts (N, F) -> (1 + log tf) * idf, rows l2-normalised, in place: TfidfTransformer(sublinear_tf=True)."""
    from sklearn.preprocessing import normalize

    counts = counts.tocsr()
    np.log(counts.data, out=counts.data)
    counts.data += 1
    counts.data *= idf[counts.indices]
    return normalize(counts, copy=False)


def tfidf_logreg_predict(train_texts: list[str], train_labels: list[str], eval_texts: list[str],
                         C: float = 10.0) -> list[str]:
    """TF-IDF features -> multinomial logistic regression -> the predicted label of each eval text.

    saga with a loose tolerance (measured on 45k Debian descriptions of 400 characters, 2 cores): the fit takes
    about 15 s; tol=1e-3 takes three times as long for at most half a point of accuracy, lbfgs five times."""
    _sklearn()
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    if len(set(train_labels)) < 2:  # nothing to learn: the one label
        return [train_labels[0]] * len(eval_texts)
    x_train, x_eval = tfidf_features(train_texts, eval_texts)
    model = LogisticRegression(C=C, solver="saga", max_iter=100, tol=1e-2, random_state=0)
    with warnings.catch_warnings():  # the loose tolerance is deliberate
        warnings.simplefilter("ignore", ConvergenceWarning)
        model.fit(x_train, train_labels)
    return [str(p) for p in model.predict(x_eval)]


def classify_baseline(train_texts: list[str], train_labels: list[str], eval_texts: list[str],
                      eval_labels: list[str]) -> dict:
    """TF-IDF + logistic regression, and the majority class of the training labels: accuracy and macro-F1 of
    each. Labels are strings; an evaluation label never seen in training counts as an error."""
    from bigbatch.evaluate.evaluate import classification_metrics

    labels = sorted(set(train_labels) | set(eval_labels))
    index = {label: i for i, label in enumerate(labels)}

    def metrics(predicted: list[str]) -> dict:
        confusion = np.zeros((len(labels), len(labels)), dtype=np.int64)  # (true, predicted)
        np.add.at(confusion, ([index[y] for y in eval_labels], [index[p] for p in predicted]), 1)
        return classification_metrics(confusion)

    majority = Counter(train_labels).most_common(1)[0][0]
    methods = {"tfidf_logreg": metrics(tfidf_logreg_predict(train_texts, train_labels, eval_texts)),
               "majority": {**metrics([majority] * len(eval_labels)), "label": majority}}
    return {"method": "tfidf_logreg", **methods["tfidf_logreg"], "methods": methods}


# --------------------------------------------------------------------------- vision


def _pixel_sample(shards, max_items: int | None, max_bytes: int | None, seed: int) -> tuple[np.ndarray, np.ndarray, int]:
    """(pixels (N, H*W*C) uint8, label ids (N,), images in the split): a seeded uniform sample within the caps,
    read from the memory-mapped shards (only the sampled images are read)."""
    n_total = shards.n_examples
    per_image = max(int(shards.shards[0].index["length"][0]), 1) if shards.shards else 1
    keep = n_total if max_items is None else min(n_total, max_items)
    if max_bytes is not None:  # bytes as stored: pixels 1 each, samples 2
        keep = min(keep, max(max_bytes // (per_image * shards.shards[0].dtype.itemsize), 1))
    chosen = np.sort(np.random.default_rng(seed).choice(n_total, size=keep, replace=False)) if keep < n_total \
        else np.arange(n_total)
    xs, ys, start = [], [], 0
    for s in shards.shards:
        local = chosen[(chosen >= start) & (chosen < start + s.n_examples)] - start
        for r in s.index[local]:
            xs.append(s.read(r["offset"], r["offset"] + r["length"]))
        ys.append(s.index["label"][local])
        start += s.n_examples
    x = np.stack(xs) if xs else np.zeros((0, per_image), dtype=np.uint8)
    return x, np.concatenate(ys) if ys else np.zeros(0, dtype=np.int32), n_total


def mfcc_stats(stored: np.ndarray, sample_rate: int, n_mels: int, n_mfcc: int = 20) -> np.ndarray:
    """Clips as stored (uint16 = sample + 32768) -> (N, 2 * n_mfcc) float32: mean and standard deviation
    over time of the first ``n_mfcc`` MFCCs (orthonormal DCT-II of the log-mel of bigbatch.nn.audio.LogMel,
    before its per-clip standardisation)."""
    import torch
    from scipy.fft import dct

    from bigbatch.nn.audio import LogMel

    frontend = LogMel(sample_rate, n_mels)
    out = []
    for i in range(0, len(stored), 512):
        waves = torch.from_numpy((stored[i : i + 512].astype(np.int32) - 32768).astype(np.float32) / 32768.0)
        spec = torch.stft(waves, frontend.n_fft, frontend.hop, window=frontend.window, center=True, return_complex=True)
        logmel = torch.log(torch.einsum("bft,fm->bmt", spec.abs().square(), frontend.fb) + 1e-6).numpy()
        mfcc = dct(logmel, type=2, norm="ortho", axis=1)[:, :n_mfcc]  # (B, n_mfcc, frames)
        out.append(np.concatenate([mfcc.mean(axis=2), mfcc.std(axis=2)], axis=1).astype(np.float32))
    return np.concatenate(out)


def media_baseline(cfg, split: str, max_train_examples: int | None = None, seed: int = 0,
                   progress: bool = False) -> dict:
    """vision: logistic regression on the raw pixels (standardised per pixel); audio: on MFCC statistics
    (mfcc_stats, standardised); trained on a sample of the prepared train split, beside the majority class:
    accuracy and macro-F1 of each on ``split``."""
    from bigbatch.data.pipeline import shard_dir_for
    from bigbatch.data.shards import ShardSet
    from bigbatch.evaluate.evaluate import classification_metrics

    _sklearn()
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    from bigbatch.data.pipeline import resolve_before_data

    cfg = resolve_before_data(cfg)[0]  # image size / sample rate of a config that leaves them to the data
    shard_dir = shard_dir_for(cfg, progress=progress)
    task = cfg.task
    n_train, n_bytes = TRAIN_CAP[task]
    train_x, train_y, train_total = _pixel_sample(ShardSet(shard_dir, "train"), max_train_examples or n_train, n_bytes, seed)
    eval_x, eval_y, eval_total = _pixel_sample(ShardSet(shard_dir, split), *EVAL_CAP[task], seed + 1)
    if not len(train_x) or not len(eval_x):
        raise UserError(f"data.source={cfg.data.source!r}: the {'train' if not len(train_x) else split} split has no examples")
    if task == "audio":
        train_x, eval_x = (mfcc_stats(x, cfg.model.sample_rate, cfg.model.n_mels) for x in (train_x, eval_x))
    n_classes = int(max(train_y.max(), eval_y.max())) + 1
    mean = train_x.mean(axis=0, dtype=np.float64).astype(np.float32)
    std = np.maximum(train_x.std(axis=0, dtype=np.float64), 1.0 if task == "vision" else 1e-6).astype(np.float32)

    def features(x: np.ndarray) -> np.ndarray:  # one float32 copy, standardised in place
        out = x.astype(np.float32)
        out -= mean
        out /= std
        return out

    def metrics(predicted: np.ndarray) -> dict:
        confusion = np.zeros((n_classes, n_classes), dtype=np.int64)
        np.add.at(confusion, (eval_y, predicted), 1)
        return classification_metrics(confusion)

    methods = {}
    if len(np.unique(train_y)) > 1:
        model = LogisticRegression(C=0.1, max_iter=300, tol=1e-3)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            model.fit(features(train_x), train_y)
        methods["pixels_logreg" if task == "vision" else "mfcc_logreg"] = metrics(model.predict(features(eval_x)))
    majority = int(np.bincount(train_y).argmax())
    methods["majority"] = {**metrics(np.full(len(eval_y), majority)), "label": majority}
    best = next(iter(methods))
    return {"task": task, "split": split, "method": best, **{k: v for k, v in methods[best].items() if k != "label"},
            "methods": methods, "train_examples": len(train_x), "eval_examples": len(eval_x),
            "train_examples_total": train_total, "eval_examples_total": eval_total}


# --------------------------------------------------------------------------- translate


def translate_baseline(train_src: list[str], train_tgt: list[str], eval_src: list[str], eval_tgt: list[str]) -> dict:
    """Copy-source and a word-by-word Dice dictionary, scored with sacrebleu BLEU and chrF; the better (by BLEU)
    is the top-level result."""
    import sacrebleu

    from bigbatch.evaluate.dictionary import WordDictionary

    def scores(hyps: list[str]) -> dict:
        return {"bleu": sacrebleu.corpus_bleu(hyps, [eval_tgt]).score,
                "chrf": sacrebleu.corpus_chrf(hyps, [eval_tgt]).score}

    dictionary = WordDictionary().fit(train_src, train_tgt)
    methods = {"copy_source": scores(list(eval_src)),
               "word_dictionary": {**scores([dictionary.translate(s) for s in eval_src]), "entries": len(dictionary)}}
    best = max(methods, key=lambda m: (methods[m]["bleu"], methods[m]["chrf"]))
    return {"method": best, "bleu": methods[best]["bleu"], "chrf": methods[best]["chrf"], "methods": methods}


# --------------------------------------------------------------------------- lm


def lm_baseline(train_texts: list[str], eval_texts: list[str], order: int = 5) -> dict:
    """Bits per UTF-8 byte of ``eval_texts`` under an add-one byte unigram and a byte ``order``-gram
    (interpolated modified Kneser-Ney, evaluate/ngram.py); each document is scored from an empty context
    and no end-of-document symbol is predicted."""
    from bigbatch.evaluate.evaluate import unigram_bits_per_byte
    from bigbatch.evaluate.ngram import ByteNgram

    train = [t.encode("utf-8") for t in train_texts]
    evals = [t.encode("utf-8") for t in eval_texts]
    eval_bytes = np.frombuffer(b"".join(evals), dtype=np.uint8)
    if not len(eval_bytes) or not any(train):
        raise UserError("the language-model baseline needs text in both the training and the evaluation split")
    unigram = unigram_bits_per_byte(np.frombuffer(b"".join(train), dtype=np.uint8), eval_bytes, 256, 1.0)
    ngram = ByteNgram(order).fit(train).bits_per_byte(evals)
    name = f"byte_{order}gram_kn"
    methods = {name: {"bits_per_byte": ngram}, "byte_unigram": {"bits_per_byte": unigram}}
    return {"method": name, "bits_per_byte": ngram, "methods": methods,
            "train_bytes": sum(map(len, train)), "eval_bytes": len(eval_bytes)}
