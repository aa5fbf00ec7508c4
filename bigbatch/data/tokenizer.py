"""Tokenizers. Byte-level: every UTF-8 byte is a token (0..255), plus eos and pad; nothing to train."""

from __future__ import annotations

import numpy as np

from bigbatch.errors import UserError


class ByteTokenizer:
    """UTF-8 bytes as ids 0..255; ``eos_id`` 256 ends a document, ``pad_id`` 257 pads."""

    name = "byte"
    eos_id = 256
    pad_id = 257
    vocab_size = 258

    def encode(self, text: str) -> np.ndarray:
        """text -> uint16 ids, one per UTF-8 byte."""
        return np.frombuffer(text.encode("utf-8"), dtype=np.uint8).astype(np.uint16)

    def decode(self, ids) -> str:
        """ids -> text; special ids are dropped, broken UTF-8 sequences become U+FFFD."""
        return bytes(int(i) for i in ids if int(i) < 256).decode("utf-8", errors="replace")

    def count_bytes(self, ids: np.ndarray) -> int:
        """How many of ``ids`` stand for bytes of text (for bits per byte)."""
        return int((ids < 256).sum())


def get_tokenizer(name: str) -> ByteTokenizer:
    if name == "byte":
        return ByteTokenizer()
    raise UserError(f"data.tokenizer={name!r} is not available: expected byte")
