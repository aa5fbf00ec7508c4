"""Tokenizers: byte-level (nothing to train), or BPE / Unigram trained with Hugging Face `tokenizers`.

Every tokenizer here has the same small surface: ``encode(text) -> uint32 ids``, ``encode_batch``,
``decode(ids)``, ``vocab_size`` and the special ids ``pad_id``, ``bos_id``, ``eos_id``. ``special=True`` applies
a tokenizer.json's own template (BERT's [CLS] ... [SEP], Marian's ... </s>) to model inputs: classify texts and
translate sources; language-model documents and translate targets are encoded without it (the data pipeline
adds eos / bos itself). Tokenizers trained here have no template.
``data.tokenizer`` takes ``byte``, ``bpe``, ``unigram`` (trained on a sample of the training data,
``data.vocab_size`` entries) or a path to a tokenizer.json / a Hugging Face tokenizer directory.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

import numpy as np

from bigbatch.errors import UserError

SPECIALS = ["<pad>", "<bos>", "<eos>", "<unk>", "<sep>", "<cls>"]
MAX_VOCAB = 1 << 24
"""Largest vocabulary (highest id + 1) a tokenizer.json may have: the largest real ones are ~256k; a stray
id of 4e9 would otherwise size an embedding table beyond any memory."""
MAX_TRAINED_VOCAB = 1 << 20
"""Largest vocabulary trained here: the BPE trainer reserves ~66 bytes per entry up front (2**40 entries:
the process aborts in Rust, beyond any Python error handling)."""


class ByteTokenizer:
    """UTF-8 bytes as ids 0..255; then eos 256, pad 257, bos 258."""

    kind = "byte"
    eos_id, pad_id, bos_id = 256, 257, 258
    vocab_size = 259

    def encode(self, text: str, special: bool = False) -> np.ndarray:
        return np.frombuffer(text.encode("utf-8"), dtype=np.uint8).astype(np.uint32)

    def encode_batch(self, texts: Iterable[str]) -> list[np.ndarray]:
        return [self.encode(t) for t in texts]

    def encode_lists(self, texts: Iterable[str], special: bool = False) -> list[list[int]]:
        return [list(t.encode("utf-8")) for t in texts]

    def decode(self, ids) -> str:
        """ids -> text; special ids are dropped, broken UTF-8 sequences become U+FFFD."""
        return bytes(int(i) for i in ids if int(i) < 256).decode("utf-8", errors="replace")

    def save(self, directory: Path) -> None:
        """Nothing to save: the byte tokenizer has no learned state."""

    def describe(self) -> dict:
        return {"kind": "byte", "vocab_size": self.vocab_size}


class HFTokenizer:
    """A `tokenizers.Tokenizer` (BPE, Unigram or any tokenizer.json) behind the same surface."""

    def __init__(self, tokenizer, kind: str = "file"):
        self.tok, self.kind = tokenizer, kind
        # documents are cut into rows by the data pipeline, not by the tokenizer: a tokenizer.json's own
        # truncation would silently shorten every document (and some settings make encode loop)
        tokenizer.no_truncation()
        tokenizer.no_padding()
        # ids need not be contiguous in a tokenizer.json: the table must hold the highest one
        self.vocab_size = max(tokenizer.get_vocab_size(), 1 + max(tokenizer.get_vocab().values(), default=-1))
        if self.vocab_size > MAX_VOCAB:
            raise UserError(f"token ids run to {self.vocab_size - 1:,}; at most {MAX_VOCAB:,} ids are supported")
        self.pad_id = self._special("<pad>", "[PAD]", "<|pad|>")
        self.bos_id = self._special("<bos>", "<s>", "[CLS]", "<|startoftext|>", "<|endoftext|>")
        self.eos_id = self._special("<eos>", "</s>", "[SEP]", "<|endoftext|>")
        if self.eos_id is None:
            raise UserError("tokenizer has no end-of-sequence token (<eos>, </s>, [SEP] or <|endoftext|>)")
        if self.pad_id is None:  # pad only ever sits under a mask; any id will do
            self.pad_id = self.eos_id
        if self.bos_id is None:
            self.bos_id = self.eos_id

    def _special(self, *names) -> int | None:
        for name in names:
            i = self.tok.token_to_id(name)
            if i is not None:
                return i
        return None

    def encode(self, text: str, special: bool = False) -> np.ndarray:
        try:
            ids = self.tok.encode(text, add_special_tokens=special).ids
        except Exception as e:  # a tokenizer.json that loads but cannot encode (e.g. no unk token)
            raise _encode_error(e) from None
        return np.asarray(ids, dtype=np.uint32)

    def encode_batch(self, texts: list[str]) -> list[np.ndarray]:
        return [np.asarray(ids, dtype=np.uint32) for ids in self.encode_lists(texts)]

    def encode_lists(self, texts: list[str], special: bool = False) -> list[list[int]]:
        try:
            return [e.ids for e in self.tok.encode_batch(list(texts), add_special_tokens=special)]
        except Exception as e:
            raise _encode_error(e) from None

    def decode(self, ids) -> str:
        return self.tok.decode([int(i) for i in ids], skip_special_tokens=True)

    def save(self, directory: Path) -> None:
        self.tok.save(str(Path(directory) / "tokenizer.json"))

    def describe(self) -> dict:
        return {"kind": self.kind, "vocab_size": self.vocab_size}


def _encode_error(e: Exception) -> UserError:
    return UserError(f"the tokenizer cannot encode the text ({' '.join(str(e).split())[:200]})")


def train_tokenizer(kind: str, texts: Iterable[str], vocab_size: int) -> HFTokenizer:
    """Train a byte-level BPE or a Unigram model on ``texts`` (an iterator over a sample)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    if not 1 <= vocab_size <= MAX_TRAINED_VOCAB:
        raise UserError(f"data.vocab_size={vocab_size} is invalid: expected 1 to {MAX_TRAINED_VOCAB:,} entries")
    if kind == "bpe":  # byte-level: any text encodes, nothing is ever unknown
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIALS,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    else:
        tok = Tokenizer(models.Unigram())
        tok.pre_tokenizer = pre_tokenizers.Metaspace()
        tok.decoder = decoders.Metaspace()
        trainer = trainers.UnigramTrainer(vocab_size=vocab_size, special_tokens=SPECIALS, unk_token="<unk>",
                                          show_progress=False)
    try:
        tok.train_from_iterator(texts, trainer=trainer)
    except UserError:  # from reading the data
        raise
    except Exception as e:  # e.g. Unigram: "The vocabulary is not large enough to contain all chars"
        raise UserError(f"cannot train a {kind} tokenizer of data.vocab_size={vocab_size} entries on this data "
                        f"({' '.join(str(e).split())[:200]})") from None
    return HFTokenizer(tok, kind)


def load_tokenizer_file(path: str | Path) -> HFTokenizer:
    """A tokenizer.json, or a directory holding one (a Hugging Face tokenizer directory)."""
    from tokenizers import Tokenizer

    path = Path(path).expanduser()
    try:
        file = path / "tokenizer.json" if path.is_dir() else path
        found = file.exists()
    except OSError as e:  # a name too long for the file system
        raise UserError(f"data.tokenizer={str(path)[:200]!r}: cannot read it ({e.strerror})") from None
    if not found:
        raise UserError(f"data.tokenizer={str(path)!r}: no tokenizer.json there; expected byte, bpe, unigram, "
                        "a tokenizer.json file or a Hugging Face tokenizer directory")
    try:
        return HFTokenizer(Tokenizer.from_file(str(file)), "file")
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as e:  # the tokenizers library raises its own types, a Rust panic a BaseException
        raise UserError(f"{file}: not a valid tokenizer.json ({' '.join(str(e).split())[:200]})") from None


def get_tokenizer(name: str, shard_dir: str | Path | None = None):
    """The tokenizer named by data.tokenizer; a trained one (bpe / unigram) is read from ``shard_dir``."""
    if name == "byte":
        return ByteTokenizer()
    if name in ("bpe", "unigram"):
        if shard_dir is None or not (Path(shard_dir) / "tokenizer.json").exists():
            raise UserError(f"data.tokenizer={name}: no trained tokenizer.json in {shard_dir} (prepare the data first)")
        tok = load_tokenizer_file(Path(shard_dir) / "tokenizer.json")
        tok.kind = name
        return tok
    return load_tokenizer_file(name)
