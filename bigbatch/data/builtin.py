"""Builtin offline corpora: real text already on the machine, split deterministically by hash.

Each builtin yields (key, record); the split of a record is ``split_of(key)``, so train / valid /
test never overlap and stay stable across machines and runs.

    python-stdlib     the running interpreter's standard library .py files     lm        key: path
    gettext[:LANG]    English -> LANG messages of /usr/share/locale/LANG/*.mo   translate key: normalised source
    debian-descriptions  package description -> archive section (data/debian.py) classify key: source package
"""

from __future__ import annotations

import codecs
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


_MO_MAGIC = 0x950412DE


def _mo_entries(path: Path, data: bytes) -> list[tuple[bytes, bytes]]:
    """The (msgid, msgstr) byte strings of a GNU .mo file (either byte order), checked to lie inside it."""
    if len(data) < 28:
        raise UserError(f"{path}: truncated .mo catalog: {len(data)} bytes, less than its 28-byte header")
    order = next((o for o in "<>" if struct.unpack(o + "I", data[:4])[0] == _MO_MAGIC), None)
    if order is None:
        raise UserError(f"{path}: not a GNU .mo catalog (magic number {data[:4].hex()}, expected 950412de)")
    revision, n, orig_at, trans_at = struct.unpack(order + "4I", data[4:20])
    if revision >> 16 > 1:
        raise UserError(f"{path}: .mo format revision {revision >> 16} is not supported (expected 0 or 1)")
    if max(orig_at, trans_at) + 8 * n > len(data):
        raise UserError(f"{path}: truncated .mo catalog: its tables of {n:,} messages end past its {len(data):,} bytes")
    orig = struct.unpack_from(f"{order}{2 * n}I", data, orig_at)  # length, offset of each msgid
    trans = struct.unpack_from(f"{order}{2 * n}I", data, trans_at)  # length, offset of each msgstr
    ids, strs = list(zip(orig[1::2], orig[::2])), list(zip(trans[1::2], trans[::2]))  # (offset, length)
    end = max((off + length for off, length in ids + strs), default=0)
    if end > len(data):
        raise UserError(f"{path}: truncated .mo catalog: its strings end at byte {end:,}, the file has {len(data):,}")
    return [(data[i : i + m], data[t : t + k]) for (i, m), (t, k) in zip(ids, strs)]


def _mo_charset(path: Path, header: bytes) -> str:
    """The charset the header entry's Content-Type declares (``charset=ISO-8859-1``); UTF-8 when none."""
    found = re.search(rb"^content-type:[^\n]*?charset=\s*([-\w.:]+)", header, re.IGNORECASE | re.MULTILINE)
    charset = found.group(1).decode("ascii") if found else "utf-8"
    try:
        return codecs.lookup(charset).name
    except LookupError:
        raise UserError(f"{path}: unknown charset {charset!r} in the catalog's Content-Type header") from None


def _is_utf8(text: bytes) -> bool:
    try:
        text.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def read_mo(path: Path) -> Iterator[tuple[str, str]]:
    """(msgid, msgstr) pairs of a GNU .mo catalog, decoded from the charset its header declares; plural forms
    give the first form, a context (``ctx\\x04msgid``) is dropped. Text that is all valid UTF-8 is read as
    UTF-8 whatever the header says (some catalogs are mislabelled; accented latin-1 or EUC text is almost never
    valid UTF-8). A truncated or malformed file: UserError.

    Not gettext.GNUTranslations: it decodes the header as UTF-8 whatever the charset, so it fails on
    latin-1 catalogs whose translator's name is not ASCII (Debian's de/net-tools.mo, ca/diffutils.mo)."""
    entries = _mo_entries(path, path.read_bytes())
    charset = _mo_charset(path, next((msgstr for msgid, msgstr in entries if not msgid), b""))
    if charset != "utf-8" and _is_utf8(b"".join(m + t for m, t in entries if m)):
        charset = "utf-8"  # mislabelled: Debian's nn/gettext-tools.mo says ISO-8859-1 and holds UTF-8
    for msgid, msgstr in entries:
        if not msgid:  # the header entry
            continue
        try:
            src = msgid.decode(charset).split("\0")[0].split("\x04")[-1]
            tgt = msgstr.decode(charset).split("\0")[0]
        except UnicodeDecodeError:  # one message not in the declared charset: left out, the catalog stands
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
    if base not in ("python-stdlib", "gettext", "debian-descriptions", "fashion-mnist", "digits", "spoken-digits"):
        raise UserError(f"data.source=builtin:{name} is unknown: expected builtin:python-stdlib, "
                        "builtin:gettext[:LANG], builtin:debian-descriptions, builtin:fashion-mnist, builtin:digits "
                        "or builtin:spoken-digits")
    return base, arg or None


def builtin_records(name: str, task: str) -> Iterator[tuple[str, dict]]:
    """(key, record) of builtin:NAME for a task."""
    base, arg = _parse(name)
    if base == "python-stdlib":
        return python_stdlib(task)
    if base == "debian-descriptions":
        from bigbatch.data.debian import debian_descriptions

        return debian_descriptions(task)
    if base in ("fashion-mnist", "digits"):
        from bigbatch.data import images

        return images.fashion_mnist(task) if base == "fashion-mnist" else images.digits(task)
    if base == "spoken-digits":
        from bigbatch.data.audio import spoken_digits

        return spoken_digits(task)
    return gettext_pairs(task, arg or "de")


def builtin_bytes(name: str) -> int:
    """About how many bytes of text builtin:NAME holds (sizes of the files it reads; no parsing)."""
    base, arg = _parse(name)
    if base in ("fashion-mnist", "digits", "spoken-digits"):
        return 0  # images, audio: no text to size a vocabulary by
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
    if base in ("fashion-mnist", "digits"):
        from bigbatch.data import images

        return [name, images.fashion_mnist_fingerprint() if base == "fashion-mnist" else images.digits_fingerprint()]
    if base == "spoken-digits":
        from bigbatch.data.audio import spoken_digits_fingerprint

        return [name, spoken_digits_fingerprint()]
    files = _stdlib_files()[1] if base == "python-stdlib" else _mo_files(arg or "de")
    return [name, fingerprint_files(files)]
