"""A word-by-word translation dictionary learned from sentence pairs by the Dice coefficient.

Each source word (lower-cased) maps to the target word with the highest

    Dice(s, t) = 2 C(s, t) / (C(s) + C(t))

where C counts the sentence pairs a word (or both words) occurs in; pairs seen fewer than
``min_count`` times are ignored and only the ``max_words`` most frequent words of each side are
considered, so memory is bounded whatever the corpus. Co-occurrence counts are one sparse product
(pairs x source words).T @ (pairs x target words).
"""

from __future__ import annotations

import re
from collections import Counter

import numpy as np

# printf / Python / shell / markup placeholders, numbers, words, single punctuation marks
_PLACEHOLDER = r"%(?:\([^)]*\))?[-#0+'*.\d$]*[hlLqjzt]*[a-zA-Z%]|\{[^{}\s]*\}|<[^<>]+>|\$\{?\w+\}?|&\w+;"
TOKEN = re.compile(rf"(?P<copy>{_PLACEHOLDER}|\d+(?:[.,:]\d+)*)|(?P<word>\w+)|[^\w\s]")


def tokenize(text: str) -> list[tuple[str, str, bool]]:
    """-> (text before the token: spacing, the token, whether it is a word to translate) per token."""
    out, end = [], 0
    for m in TOKEN.finditer(text):
        word = m.lastgroup == "word" and any(ch.isalpha() for ch in m.group())
        out.append((text[end:m.start()], m.group(), word))
        end = m.end()
    if end < len(text):
        out.append((text[end:], "", False))
    return out


def _words(text: str) -> list[str]:
    return [tok.lower() for _, tok, word in tokenize(text) if word]


class WordDictionary:
    """source word (lower-cased) -> target word (its most frequent spelling) by the highest Dice coefficient."""

    def __init__(self, min_count: int = 2, max_words: int = 50_000):
        self.min_count, self.max_words = min_count, max_words
        self.table: dict[str, str] = {}

    def __len__(self) -> int:
        return len(self.table)

    def _vocab(self, sentences: list[list[str]]) -> dict[str, int]:
        freq = Counter(w for s in sentences for w in dict.fromkeys(s))  # not set(): ties in first-seen order
        return {w: i for i, (w, _) in enumerate(freq.most_common(self.max_words))}

    @staticmethod
    def _incidence(sentences: list[list[str]], vocab: dict[str, int]):
        """(sentences, words) 0/1 CSR matrix."""
        from scipy.sparse import csr_matrix

        cols = [sorted({vocab[w] for w in s if w in vocab}) for s in sentences]
        indptr = np.cumsum([0] + [len(c) for c in cols])
        indices = np.fromiter((i for c in cols for i in c), dtype=np.int32, count=int(indptr[-1]))
        return csr_matrix((np.ones(len(indices), dtype=np.float64), indices, indptr), shape=(len(cols), len(vocab)))

    def fit(self, sources: list[str], targets: list[str]) -> WordDictionary:
        src = [_words(s) for s in sources]
        tgt_tokens = [[tok for _, tok, word in tokenize(t) if word] for t in targets]
        tgt = [[t.lower() for t in s] for s in tgt_tokens]
        src_vocab, tgt_vocab = self._vocab(src), self._vocab(tgt)
        if not src_vocab or not tgt_vocab:
            return self
        s_inc, t_inc = self._incidence(src, src_vocab), self._incidence(tgt, tgt_vocab)
        co = (s_inc.T @ t_inc).tocoo()  # (source words, target words) sentence co-occurrence counts
        keep = co.data >= self.min_count
        rows, cols, both = co.row[keep], co.col[keep], co.data[keep]
        dice = 2 * both / (np.asarray(s_inc.sum(0)).ravel()[rows] + np.asarray(t_inc.sum(0)).ravel()[cols])
        order = np.lexsort((cols, -dice, rows))  # per source word: highest Dice first, ties to the commoner word
        rows, cols = rows[order], cols[order]
        first = np.flatnonzero(np.r_[True, rows[1:] != rows[:-1]])
        src_words, tgt_words = list(src_vocab), list(tgt_vocab)
        chosen = {tgt_words[c] for c in cols[first]}
        spelling = Counter(tok for s in tgt_tokens for tok in s if tok.lower() in chosen)
        best: dict[str, str] = {}
        for tok, _ in spelling.most_common():
            best.setdefault(tok.lower(), tok)
        self.table = {src_words[r]: best[tgt_words[c]] for r, c in zip(rows[first], cols[first])}
        return self

    def translate(self, text: str) -> str:
        """Word by word: known words replaced (capitalised like the source word), everything else copied,
        the source's spacing kept."""
        out = []
        for space, tok, word in tokenize(text):
            target = self.table.get(tok.lower()) if word else None
            if target is None:
                out.append(space + tok)
                continue
            if tok.isupper() and len(tok) > 1:
                target = target.upper()
            elif tok[0].isupper():
                target = target[0].upper() + target[1:]
            out.append(space + target)
        return "".join(out)
