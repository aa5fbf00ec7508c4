"""Builtin offline corpora: real text already on the machine, split deterministically by hash."""

from __future__ import annotations

import hashlib
import sysconfig
from pathlib import Path

from bigbatch.errors import UserError

SPLITS = ("train", "valid", "test")
# directories of the standard library that are tests, generated tables or docs data, not code people write
_STDLIB_SKIP = {"test", "tests", "idle_test", "site-packages", "dist-packages", "pydoc_data", "encodings", "__pycache__"}


def split_of(key: str, valid: float = 0.05, test: float = 0.05) -> str:
    """Deterministic split of an example by a hash of its key: stable across machines and runs."""
    u = int.from_bytes(hashlib.sha1(key.encode("utf-8")).digest()[:8], "big") / 2**64
    return "valid" if u < valid else "test" if u < valid + test else "train"


def python_stdlib(split: str) -> list[tuple[str, str]]:
    """(relative path, source text) of the running interpreter's standard library .py files in ``split``."""
    root = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(f for f in root.rglob("*.py") if not _STDLIB_SKIP & set(f.relative_to(root).parts))
    if not files:
        raise UserError(f"builtin:python-stdlib: no .py files under {root}; this Python has no standard library sources")
    docs = []
    for f in files:
        rel = f.relative_to(root).as_posix()
        if split_of(rel) == split:
            docs.append((rel, f.read_text(encoding="utf-8", errors="replace")))
    return docs


BUILTINS = {"python-stdlib": python_stdlib}


def builtin_documents(name: str, split: str) -> list[tuple[str, str]]:
    """Documents of ``builtin:NAME`` in a split, as (key, text)."""
    if name not in BUILTINS:
        raise UserError(f"data.source=builtin:{name} is unknown: expected one of {', '.join('builtin:' + b for b in BUILTINS)}")
    return BUILTINS[name](split)
