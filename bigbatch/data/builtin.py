"""Builtin offline corpora: real text already on the machine, split deterministically by hash.

Each builtin yields (key, record); the split of a record is ``split_of(key)``, so train / valid /
test never overlap and stay stable across machines and runs.

    python-stdlib     the running interpreter's standard library .py files     lm        key: path
    gettext[:LANG]    English -> LANG messages of /usr/share/locale/LANG/*.mo   translate key: normalised source
    debian-descriptions  package description -> archive section (data/debian.py) classify key: source package
"""

from __future__ import annotations

import hashlib
import re
import struct
import sysconfig
from pathlib import Path
from typing import Iterator

from bigbatch.data.sources import fingerprint_files
from bigbatch.errors import UserError

SPLITS = ("train", "valid", "test")
# directories of the standard library that are tests, generated tables or docs data, not code people write
_STDLIB_SKIP = {"test", "tests", "idle_test", "site-packages", "dist-packages", "pydoc_data", "encodings", "__pycache__"}
LOCALE_DIR = Path("/usr/share/locale")


def split_of(key: str, valid: float = 0.05, test: float = 0.05) -> str:
    """Deterministic split of an example by a hash of its key: stable across machines and runs."""
    u = int.from_bytes(hashlib.sha1(key.encode("utf-8")).digest()[:8], "big") / 2**64
    return "valid" if u < valid else "test" if u < valid + test else "train"


# --------------------------------------------------------------------------- python-stdlib


def _stdlib_files() -> tuple[Path, list[Path]]:
    root = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(f for f in root.rglob("*.py") if not _STDLIB_SKIP & set(f.relative_to(root).parts))
    if not files:
        raise UserError(f"builtin:python-stdlib: no .py files under {root}; this Python has no standard library sources")
    return root, files


def python_stdlib(task: str) -> Iterator[tuple[str, dict]]:
    if task != "lm":
        raise UserError(f"builtin:python-stdlib is a language-model corpus; task={task} needs another source")
    root, files = _stdlib_files()
    for f in files:
        yield f.relative_to(root).as_posix(), {"text": f.read_text(encoding="utf-8", errors="replace")}


# --------------------------------------------------------------------------- gettext

_PLACEHOLDER = re.compile(r"%(?:\([^)]*\))?[-#0 +]*\d*(?:\.\d+)?[hlLqjzt]*[diouxXeEfFgGcrsa%]|\{[^{}]*\}|<[^<>]+>|\$\w+")


def read_mo(path: Path) -> Iterator[tuple[str, str]]:
    """(msgid, msgstr) pairs of a GNU .mo catalog (both byte orders); plural forms give the first form."""
    data = path.read_bytes()
    if len(data) < 28:
        return
    magic = struct.unpack("<I", data[:4])[0]
    order = "<" if magic == 0x950412DE else ">" if struct.unpack(">I", data[:4])[0] == 0x950412DE else None
    if order is None:
        return
    n, orig_at, trans_at = struct.unpack(order + "3I", data[8:20])
    for i in range(n):
        olen, ooff = struct.unpack(order + "2I", data[orig_at + 8 * i : orig_at + 8 * i + 8])
        tlen, toff = struct.unpack(order + "2I", data[trans_at + 8 * i : trans_at + 8 * i + 8])
        msgid, msgstr = data[ooff : ooff + olen], data[toff : toff + tlen]
        if not msgid:  # the header entry
            continue
        try:
            src = msgid.split(b"\x00")[0].split(b"\x04")[-1].decode("utf-8")
            tgt = msgstr.split(b"\x00")[0].decode("utf-8")
        except UnicodeDecodeError:
            continue
        yield src, tgt


def _keep_pair(src: str, tgt: str, max_chars: int = 300) -> bool:
    """Drop empty, identical, format-only, over-long pairs and pairs whose placeholders differ."""
    if not src.strip() or not tgt.strip() or src.strip() == tgt.strip():
        return False
    if len(src) > max_chars or len(tgt) > max_chars:
        return False
    if not re.search(r"[^\W\d_]{2,}", _PLACEHOLDER.sub(" ", src)):  # nothing but placeholders and punctuation
        return False
    return sorted(_PLACEHOLDER.findall(src)) == sorted(_PLACEHOLDER.findall(tgt))


def _mo_files(lang: str) -> list[Path]:
    files = sorted((LOCALE_DIR / lang / "LC_MESSAGES").glob("*.mo"))
    if not files:
        have = sorted(p.name for p in LOCALE_DIR.glob("*") if (p / "LC_MESSAGES").is_dir()) if LOCALE_DIR.exists() else []
        hint = f"languages here: {', '.join(have[:30])}" if have else "install some translated Debian packages"
        raise UserError(f"builtin:gettext:{lang}: no catalogs in {LOCALE_DIR / lang / 'LC_MESSAGES'} ({hint})")
    return files


def gettext_pairs(task: str, lang: str = "de") -> Iterator[tuple[str, dict]]:
    """English -> LANG message pairs, one per distinct English source (the first catalog's wins)."""
    if task != "translate":
        raise UserError(f"builtin:gettext is a translation corpus; set task=translate (got task={task})")
    seen = set()
    for path in _mo_files(lang):
        for src, tgt in read_mo(path):
            key = " ".join(src.lower().split()).rstrip(".:!? ")
            if key in seen or not _keep_pair(src, tgt):
                continue
            seen.add(key)
            yield key, {"src": src, "tgt": tgt}


# --------------------------------------------------------------------------- registry


def _parse(name: str) -> tuple[str, str | None]:
    base, _, arg = name.partition(":")
    if base not in ("python-stdlib", "gettext", "debian-descriptions"):
        raise UserError(f"data.source=builtin:{name} is unknown: expected builtin:python-stdlib, "
                        "builtin:gettext[:LANG] or builtin:debian-descriptions")
    return base, arg or None


def builtin_records(name: str, task: str) -> Iterator[tuple[str, dict]]:
    """(key, record) of builtin:NAME for a task."""
    base, arg = _parse(name)
    if base == "python-stdlib":
        return python_stdlib(task)
    if base == "debian-descriptions":
        from bigbatch.data.debian import debian_descriptions

        return debian_descriptions(task)
    return gettext_pairs(task, arg or "de")


def builtin_bytes(name: str) -> int:
    """About how many bytes of text builtin:NAME holds (sizes of the files it reads; no parsing)."""
    base, arg = _parse(name)
    if base == "debian-descriptions":
        from bigbatch.data.debian import index_files

        return sum(p.stat().st_size for p in index_files()[1]) // 2  # Translation-en: about half is text
    files = _stdlib_files()[1] if base == "python-stdlib" else _mo_files(arg or "de")
    return sum(p.stat().st_size for p in files) // (1 if base == "python-stdlib" else 3)  # .mo: en + LANG + tables


def builtin_fingerprint(name: str) -> list:
    """What identifies the builtin's inputs on this machine (file names, sizes, times)."""
    base, arg = _parse(name)
    if base == "debian-descriptions":
        from bigbatch.data.debian import fingerprint

        return [name, fingerprint()]
    files = _stdlib_files()[1] if base == "python-stdlib" else _mo_files(arg or "de")
    return [name, fingerprint_files(files)]
