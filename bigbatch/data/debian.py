"""builtin:debian-descriptions: Debian package descriptions -> their archive section (classification).

The long English descriptions live in apt's Translation-en index, which many images tell apt not to
download. The builder runs ``apt-get update`` with a private lists directory under the bigbatch
cache and ``Acquire::Languages=en``, leaving the system's apt state untouched, then joins each
package's Section (Packages index) to its description (Translation-en) by Description-md5.
Records are keyed by *source* package, so foo, libfoo-dev and foo-doc land in the same split; the
text is the description only (package names give the label away).
"""

from __future__ import annotations

import collections
import shutil
import subprocess
from pathlib import Path
from typing import Iterator

from bigbatch.errors import UserError

N_SECTIONS = 20


def _lists_dir() -> Path:
    from bigbatch.data.prepare import cache_root

    return cache_root() / "apt" / "lists"


def private_apt_options(lists: Path) -> list[str]:
    """apt-get options that keep its state in the bigbatch cache: the lists there, no package cache files
    (apt would otherwise rebuild /var/cache/apt/*.bin from them), no lock on the system's state."""
    return ["-o", f"Dir::State::Lists={lists}/", "-o", f"Dir::Cache={lists.parent / 'cache'}/",
            "-o", "Dir::Cache::pkgcache=", "-o", "Dir::Cache::srcpkgcache=", "-o", "Debug::NoLocking=1"]


def _update(lists: Path) -> None:
    apt_get = shutil.which("apt-get")
    if apt_get is None:
        raise UserError("builtin:debian-descriptions needs apt-get (a Debian or Ubuntu machine); "
                        "use another data.source here")
    (lists / "partial").mkdir(parents=True, exist_ok=True)
    conf = lists.parent / "apt.conf"
    conf.write_text(f'Dir::State::Lists "{lists}/";\nAcquire::Languages "en";\nDebug::NoLocking "true";\n')
    cmd = [apt_get, "-c", str(conf), *private_apt_options(lists), "-o", "Acquire::Languages=en", "-qq", "update"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0 or not list(lists.glob("*Translation-en*")):
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no Translation-en index was fetched"]
        raise UserError(f"builtin:debian-descriptions: `apt-get update` into {lists} failed ({tail[0]}); it needs "
                        "root and access to the Debian archive")


def index_files(update: bool = True) -> tuple[list[Path], list[Path]]:
    """(Packages files, Translation-en files) of the private lists dir, fetching them once."""
    lists = _lists_dir()
    packages = sorted(lists.glob("*_Packages*"))
    translations = sorted(lists.glob("*_i18n_Translation-en*"))
    if (not packages or not translations) and update:
        _update(lists)
        return index_files(update=False)
    return packages, translations


def _read_index(path: Path) -> str:
    """An apt index file as text (apt may store it lz4 / gz / xz compressed: apt-helper reads them all)."""
    if path.suffix in ("", ".txt"):
        return path.read_text(encoding="utf-8", errors="replace")
    helper = Path("/usr/lib/apt/apt-helper")
    if not helper.exists():
        raise UserError(f"{path}: compressed apt index and no /usr/lib/apt/apt-helper to read it")
    proc = subprocess.run([str(helper), "cat-file", str(path)], capture_output=True)
    if proc.returncode != 0:
        raise UserError(f"{path}: apt-helper could not read it ({proc.stderr.decode(errors='replace').strip()})")
    return proc.stdout.decode("utf-8", errors="replace")


def _stanzas(text: str) -> Iterator[dict[str, str]]:
    """RFC 822 stanzas of an apt index: field -> value (continuation lines joined with newlines)."""
    for block in text.split("\n\n"):
        fields, key = {}, None
        for line in block.splitlines():
            if line.startswith((" ", "\t")) and key:
                fields[key] += "\n" + line[1:]
            elif ":" in line:
                key, _, value = line.partition(":")
                fields[key] = value.strip()
        if fields:
            yield fields


def _clean(description: str) -> str:
    """Debian's description markup: ' .' lines are blank lines."""
    lines = [("" if line.strip() == "." else line) for line in description.splitlines()]
    return "\n".join(lines).strip()


def debian_descriptions(task: str) -> Iterator[tuple[str, dict]]:
    if task != "classify":
        raise UserError(f"builtin:debian-descriptions is a classification corpus; set task=classify (got {task})")
    packages, translations = index_files()
    texts: dict[str, str] = {}
    for path in translations:
        for st in _stanzas(_read_index(path)):
            if "Description-md5" in st and "Description-en" in st:
                texts.setdefault(st["Description-md5"], _clean(st["Description-en"]))
    rows, seen = [], set()
    for path in packages:
        for st in _stanzas(_read_index(path)):
            md5, section = st.get("Description-md5"), st.get("Section", "")
            if not md5 or md5 in seen or md5 not in texts or not section:
                continue
            seen.add(md5)
            source = st.get("Source", st.get("Package", "")).split(" ")[0]
            rows.append((source, section.split("/")[-1], texts[md5]))
    top = {s for s, _ in collections.Counter(r[1] for r in rows).most_common(N_SECTIONS)}
    for source, section, text in rows:
        if section in top:
            yield source, {"text": text, "label": section}


def fingerprint() -> list:
    from bigbatch.data.sources import fingerprint_files

    packages, translations = index_files()
    return fingerprint_files(packages + translations)
