"""Raw data sources -> records: dicts with "text" (lm), "text" + "label" (classify), "src" + "tgt" (translate).

A source is a file, a directory, a glob, a Hugging Face ``datasets`` directory (save_to_disk), or
``builtin:NAME``. Files: .txt (one document per file, or per line), .jsonl, .csv, .tsv, .parquet,
each optionally .gz or .zst. A malformed row stops with ``file:line: what is wrong`` unless
``skip_bad_rows`` counts and skips it instead.

Every reader streams: memory stays flat whatever the file size. A text file read as one document
that is larger than ``TEXT_BLOCK_BYTES`` comes as consecutive blocks of about that size (see
``text_blocks``), each a record of its own that carries ``SPLIT_KEY`` = (file name, block index), so
preparation splits such a file by position instead of putting all of it in one split.
"""

from __future__ import annotations

import csv
import glob
import gzip
import io
import itertools
import json
import os
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from bigbatch.errors import UserError

TEXT_SUFFIXES = {".txt", ".text", ".md", ".py", ".rst"}
TABLE_SUFFIXES = {".jsonl", ".json", ".csv", ".tsv", ".parquet"}
TEXT_BLOCK_BYTES = 1 << 20
"""A whole-file text document larger than this is read, tokenised and split in blocks of about this size."""
MAX_LINE_BYTES = 256 << 20
"""Longest line of a line-based file (.jsonl, .csv, .tsv, text per line): a longer one is a bad row, read past in
bounded pieces, so a small .gz of one endless line cannot take all memory (a .txt document is read in blocks)."""
SPLIT_KEY = "_split_key"
"""Record key of a block of a large text file: (file name, block index); prepare pops it to choose the split."""


@dataclass
class Fields:
    """Which keys / columns hold what, and what a task needs from each record."""

    task: str = "lm"
    text: str = "text"
    label: str = "label"
    src: str = "src"
    tgt: str = "tgt"
    text_per_line: bool = False
    skip_bad_rows: bool = False

    def wanted(self) -> dict[str, str]:
        """record key -> source field name."""
        if self.task == "translate":
            return {"src": self.src, "tgt": self.tgt}
        if self.task == "classify":
            return {"text": self.text, "label": self.label}
        return {"text": self.text}


class BadRows:
    """Counts skipped rows (data.skip_bad_rows) and remembers the first few reasons."""

    def __init__(self):
        self.count, self.examples = 0, []

    def add(self, where: str, why: str, skip: bool) -> None:
        if not skip:
            raise UserError(f"{where}: {why} (set data.skip_bad_rows=true to skip such rows)")
        self.count += 1
        if len(self.examples) < 5:
            self.examples.append(f"{where}: {why}")


def _format(path: Path) -> tuple[str, str | None]:
    """(format suffix, compression) of a file name such as data.jsonl.gz."""
    suffixes = [s.lower() for s in path.suffixes]
    compression = suffixes.pop() if suffixes and suffixes[-1] in (".gz", ".zst") else None
    return (suffixes[-1] if suffixes else ""), compression


def is_hf_dataset_dir(path: Path) -> bool:
    return path.is_dir() and (path / "dataset_info.json").exists() and (path / "state.json").exists()


def expand(source: str) -> list[Path]:
    """A file, directory (its files, recursively), glob or HF datasets dir -> sorted files / dirs."""
    if not source.strip():  # Path("") is the current directory: every file under it would be read
        raise UserError("data.source is empty: expected a file, directory, glob or builtin:NAME")
    if any(c in source for c in "*?["):
        paths = [Path(p) for p in sorted(glob.glob(os.path.expanduser(source), recursive=True))]
    else:
        paths = [Path(os.path.expanduser(source))]
    out: list[Path] = []
    try:
        for p in paths:
            if is_hf_dataset_dir(p) or p.is_file() or (p / "dataset_dict.json").exists():
                out.append(p)
            elif p.is_dir():
                out += sorted(f for f in p.rglob("*") if f.is_file() and not f.name.startswith("."))
    except OSError as e:  # a name too long for the file system, a directory we may not list
        raise UserError(f"data.source={source[:200]!r}: cannot read it ({e.strerror})") from None
    if not out:
        raise UserError(f"data.source={source[:200]!r}: no such file, directory or matching files")
    return out


def open_binary(path: Path):
    """A binary stream of the file's content, decompressing .gz / .zst transparently."""
    _, compression = _format(path)
    if compression == ".gz":
        return gzip.open(path, "rb")
    if compression == ".zst":
        import zstandard

        return zstandard.ZstdDecompressor().stream_reader(open(path, "rb"), closefd=True)
    return open(path, "rb")


def _lines(path: Path, bad: BadRows, skip: bool) -> Iterator[tuple[int, str]]:
    """(line number, text) of a UTF-8 file; a line that is not UTF-8, or longer than MAX_LINE_BYTES, is a bad row."""
    with open_binary(path) as raw:
        stream = raw if hasattr(raw, "peek") else io.BufferedReader(raw)
        for number, line in enumerate(iter(lambda: stream.readline(MAX_LINE_BYTES + 1), b""), start=1):
            if len(line) > MAX_LINE_BYTES and not line.endswith(b"\n"):
                while (rest := stream.readline(1 << 20)) and not rest.endswith(b"\n"):
                    pass  # the rest of the line, 1 MiB at a time
                bad.add(f"{path}:{number}", f"a line longer than {MAX_LINE_BYTES >> 20} MiB (a .txt file of one "
                        "document per file is read in blocks instead)", skip)
                continue
            try:  # a UTF-8 byte-order mark (Windows editors, Excel) is not part of the first line's text
                yield number, line.decode("utf-8-sig" if number == 1 else "utf-8").rstrip("\r\n")
            except UnicodeDecodeError as e:
                bad.add(f"{path}:{number}", f"not UTF-8 (byte {e.start})", skip)


def _pick(row: dict, fields: Fields, where: str, bad: BadRows) -> dict | None:
    """The wanted fields of one row, or None (skipped) when one is missing or empty."""
    record = {}
    for key, name in fields.wanted().items():
        value = row.get(name)
        if value is None or (isinstance(value, str) and key != "label" and not value.strip()):
            # names as repr without quotes: a name with a newline still gives a one-line message
            present = ", ".join(repr(str(n))[1:-1][:40] for n in itertools.islice(row, 20)) or "none"
            present += ", ..." if len(row) > 20 else ""
            what = "missing field" if name not in row else "empty field"
            bad.add(where, f"{what} '{name}' (data.{key}_field; fields present: {present})", fields.skip_bad_rows)
            return None
        if isinstance(value, (list, dict, bytes)):  # str() of these is not the text anyone meant
            kind = {list: "a list", dict: "an object", bytes: "bytes"}[type(value)]
            bad.add(where, f"field '{name}' holds {kind}, expected a string or a number (data.{key}_field)",
                    fields.skip_bad_rows)
            return None
        record[key] = value if key == "label" else str(value)
    return record


def _read_text(path: Path, fields: Fields, bad: BadRows) -> Iterator[dict]:
    if fields.task != "lm":
        raise UserError(f"{path}: a plain text file gives documents only; task={fields.task} needs .jsonl/.csv/.tsv/.parquet "
                        f"with fields {', '.join(fields.wanted().values())}")
    if fields.text_per_line:
        for _, line in _lines(path, bad, fields.skip_bad_rows):
            if line.strip():
                yield {"text": line}
        return
    with open_binary(path) as f:
        blocks = text_blocks(f)
        first = next(blocks)
        second = next(blocks, None)
        if second is None:  # the whole file in one block: one document, split by its content as always
            yield from _decode_block(path, 1, 0, first, None, fields, bad)
            return
        line, offset = 1, 0
        for index, block in enumerate(itertools.chain([first, second], blocks)):
            yield from _decode_block(path, line, offset, block, (path.name, index), fields, bad)
            line, offset = line + block.count(b"\n"), offset + len(block)


def _decode_block(path: Path, line: int, offset: int, block: bytes, key: tuple | None, fields: Fields,
                  bad: BadRows) -> Iterator[dict]:
    """The record of one block of a text file that starts at ``line`` / byte ``offset``; a block that is not
    UTF-8 is a bad row named by the file line and byte where the bad byte is."""
    try:  # a UTF-8 byte-order mark opening the file is not text
        text = block.decode("utf-8-sig" if offset == 0 else "utf-8")
    except UnicodeDecodeError as e:
        bad_line = line + block[: e.start].count(b"\n")
        bad.add(f"{path}:{bad_line}", f"not UTF-8 (byte {offset + e.start})", fields.skip_bad_rows)
        return
    yield {"text": text} if key is None else {"text": text, SPLIT_KEY: key}


def text_blocks(stream, block_bytes: int | None = None) -> Iterator[bytes]:
    """Consecutive pieces of a binary stream, each at most ``block_bytes`` (default ``TEXT_BLOCK_BYTES``);
    together exactly the stream's bytes. At least one piece, empty for an empty stream.

    A piece ends after the last newline of its window when that is in the window's second half, else
    after the last space or tab there, else just before a UTF-8 character that starts at most 3 bytes
    before the window's end: a multi-byte character is never cut. Only one window is held at a time.
    For a language model a piece is a document: the model sees a document break (eos) at every cut.
    """
    size = block_bytes or TEXT_BLOCK_BYTES
    buf, pieces = b"", 0
    while True:
        while len(buf) < size:  # short reads (gzip, zstd streams) are read on until the window is full
            more = stream.read(size - len(buf))
            if not more:
                if buf or not pieces:
                    yield buf  # the last piece (or the only, empty one)
                return
            buf += more
        cut = _cut(buf)
        yield buf[:cut]
        buf, pieces = buf[cut:], pieces + 1


def _cut(window: bytes) -> int:
    """Where to end a piece of a full window: after a newline, else whitespace, in its second half; else
    at the start of the window's last UTF-8 character (a continuation byte is 0b10xxxxxx)."""
    half = len(window) // 2
    for sep in (b"\n", b" ", b"\t"):
        i = window.rfind(sep, half)
        if i >= 0:
            return i + 1
    cut = len(window)
    while cut > len(window) - 3 and window[cut - 1] & 0xC0 == 0x80:
        cut -= 1
    if window[cut - 1] & 0xC0 == 0xC0:  # the lead byte of a character whose continuation bytes follow
        cut -= 1
    return cut or len(window)  # a window shorter than one character: not UTF-8 anyway, keep it whole


def _read_jsonl(path: Path, fields: Fields, bad: BadRows) -> Iterator[dict]:
    for number, line in _lines(path, bad, fields.skip_bad_rows):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            bad.add(f"{path}:{number}", f"not valid JSON ({e.msg} at column {e.colno})", fields.skip_bad_rows)
            continue
        except (ValueError, RecursionError) as e:  # an int of > 4300 digits; nesting deeper than the stack
            why = "nested too deeply" if isinstance(e, RecursionError) else "a number too long"
            bad.add(f"{path}:{number}", f"not usable JSON ({why})", fields.skip_bad_rows)
            continue
        if not isinstance(row, dict):
            bad.add(f"{path}:{number}", "expected a JSON object per line", fields.skip_bad_rows)
            continue
        record = _pick(row, fields, f"{path}:{number}", bad)
        if record is not None and "\\u" in line and not _encodable(record):  # "\ud800": a lone surrogate
            bad.add(f"{path}:{number}", "a string escape that is not a character (a lone UTF-16 surrogate)",
                    fields.skip_bad_rows)
            continue
        if record is not None:
            yield record


def _encodable(record: dict) -> bool:
    try:
        for value in record.values():
            if isinstance(value, str):
                value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _tsv_is_quoted(path: Path) -> bool:
    """Whether a .tsv file quotes fields as CSV writers do (pandas, Python's csv module and Excel quote only a
    field that holds a quote, tab or newline), judged on its first 64 KiB: a quoted field with a doubled
    quote inside, or rows that have the header's number of fields only when read with quoting. A field that
    merely starts and ends with a quote (`"Hello"`) is text, as in any plain TSV."""
    with open_binary(path) as raw:
        head = raw.read(1 << 16).decode("utf-8", errors="replace").lstrip("\ufeff")
    lines = head.splitlines()
    lines = lines[:-1] if len(lines) > 1 and not head.endswith(("\n", "\r")) else lines  # the last may be cut
    if len(lines) < 2:
        return False
    n = len(lines[0].split("\t"))
    for line in lines[1:]:
        if any(len(f) > 3 and f[0] == f[-1] == '"' and '""' in f[1:-1] for f in line.split("\t")):
            return True
    if all(len(line.split("\t")) == n for line in lines):
        return False
    try:
        rows = list(csv.reader(io.StringIO("\n".join(lines)), delimiter="\t"))
    except csv.Error:
        return False
    return all(len(r) == n for r in rows if r)


def _read_csv(path: Path, fields: Fields, bad: BadRows, delimiter: str) -> Iterator[dict]:
    # plain TSV has no quoting (IANA text/tab-separated-values; GLUE's readers agree): a stray " opening a
    # field is text, not a quoted field that swallows the rows after it; a TSV whose fields are quoted as
    # CSV writers quote them is read with CSV quoting
    quoting = csv.QUOTE_MINIMAL
    if delimiter == "\t" and not _tsv_is_quoted(path):
        quoting = csv.QUOTE_NONE
    with open_binary(path) as raw:
        text = io.TextIOWrapper(raw, encoding="utf-8-sig", newline="")  # -sig: a BOM (Excel) is not in a name
        reader = csv.reader(_bounded_lines(text, path), delimiter=delimiter, quoting=quoting)
        header = None  # the first row
        while True:
            try:
                values = next(reader)
            except StopIteration:
                return
            except UnicodeDecodeError:  # decoded ahead in blocks: the row and byte are not known exactly
                raise UserError(f"{path}: not UTF-8 text (after line {reader.line_num})") from None
            except csv.Error as e:
                bad.add(f"{path}:{reader.line_num}", f"malformed row ({e})", fields.skip_bad_rows)
                continue
            if not values:
                continue
            if header is None:
                header = values
                continue
            if len(values) != len(header):
                bad.add(f"{path}:{reader.line_num}", f"{len(values)} columns, the header has {len(header)}",
                        fields.skip_bad_rows)
                continue
            record = _pick(dict(zip(header, values)), fields, f"{path}:{reader.line_num}", bad)
            if record is not None:
                yield record


def _bounded_lines(text, path: Path) -> Iterator[str]:
    """The lines of a text stream for the csv reader, each read at most MAX_LINE_BYTES characters at a time."""
    while line := text.readline(MAX_LINE_BYTES + 1):
        if len(line) > MAX_LINE_BYTES and not line.endswith(("\n", "\r")):
            raise UserError(f"{path}: a line longer than {MAX_LINE_BYTES >> 20} MiB")
        yield line


def _check_columns(names: list[str], path: Path, fields: Fields) -> list[str]:
    missing = [n for n in fields.wanted().values() if n not in names]
    if missing:
        raise UserError(f"{path}: no column {missing[0]!r} (columns: {', '.join(names)}); "
                        f"set data.{[k for k, v in fields.wanted().items() if v == missing[0]][0]}_field")
    return list(fields.wanted().values())


def _read_batches(batches, path: Path, fields: Fields, bad: BadRows) -> Iterator[dict]:
    number = 0  # rows counted across batches, for the error messages
    for batch in batches:
        for row in batch.to_pylist():
            number += 1
            record = _pick(row, fields, f"{path}:row {number}", bad)
            if record is not None:
                yield record


def _read_arrow_table(table, path: Path, fields: Fields, bad: BadRows) -> Iterator[dict]:
    columns = _check_columns(table.column_names, path, fields)
    yield from _read_batches(table.select(columns).to_batches(max_chunksize=4096), path, fields, bad)


def _read_parquet(path: Path, fields: Fields, bad: BadRows) -> Iterator[dict]:
    """Batches of rows as they are decoded, one row group at a time (not the whole table at once)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    with open_binary(path) as f:
        try:
            parquet = pq.ParquetFile(io.BytesIO(f.read()) if _format(path)[1] else path)
            columns = _check_columns(parquet.schema_arrow.names, path, fields)
            yield from _read_batches(parquet.iter_batches(batch_size=4096, columns=columns), path, fields, bad)
        except pa.ArrowException as e:
            raise UserError(f"{path}: not a readable Parquet file ({_one_line(e)})") from None


def _read_hf_dataset(path: Path, fields: Fields, bad: BadRows) -> Iterator[dict]:
    """A directory written by datasets' save_to_disk: Arrow IPC stream files listed in state.json."""
    import pyarrow as pa

    try:
        names = [entry["filename"] for entry in json.loads((path / "state.json").read_text()).get("_data_files", [])]
        if not all(isinstance(n, str) and n == Path(n).name for n in names):  # file names inside the directory
            raise ValueError("a data file that is not a file name in the directory")
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise UserError(f"{path}/state.json: not a datasets save_to_disk state ({_one_line(e)})") from None
    for name in names:
        try:
            with pa.memory_map(str(path / name)) as source:
                table = pa.ipc.open_stream(source).read_all()
        except (pa.ArrowException, OSError) as e:
            raise UserError(f"{path / name}: not a readable Arrow stream ({_one_line(e)})") from None
        yield from _read_arrow_table(table, path / name, fields, bad)


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split())[:200] or type(e).__name__


def read_file(path: Path, fields: Fields, bad: BadRows) -> Iterator[dict]:
    """Records of one file (or HF datasets directory)."""
    if is_hf_dataset_dir(path):
        yield from _read_hf_dataset(path, fields, bad)
        return
    import zstandard

    try:
        yield from _read_format(path, fields, bad)
    except (OSError, EOFError, zlib.error, zstandard.ZstdError) as e:  # not gzip / zstd, truncated, unreadable
        raise UserError(f"{path}: cannot read it ({getattr(e, 'strerror', None) or _one_line(e)})") from None


def _read_format(path: Path, fields: Fields, bad: BadRows) -> Iterator[dict]:
    fmt, _ = _format(path)
    if fmt in (".jsonl", ".json"):
        yield from _read_jsonl(path, fields, bad)
    elif fmt in (".csv", ".tsv"):
        yield from _read_csv(path, fields, bad, "\t" if fmt == ".tsv" else ",")
    elif fmt == ".parquet":
        yield from _read_parquet(path, fields, bad)
    elif fmt in TEXT_SUFFIXES or fields.task == "lm":
        yield from _read_text(path, fields, bad)
    else:
        raise UserError(f"{path}: unknown file type {fmt or '(none)'}; expected .txt, .jsonl, .csv, .tsv, .parquet "
                        "(optionally .gz/.zst) or a datasets save_to_disk directory")


def fingerprint_files(paths: list[Path]) -> list:
    """What identifies the content of ``paths`` cheaply: name, size and modification time of each file."""
    out = []
    for p in paths:
        files = sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else [p]
        out += [[str(f.resolve()), f.stat().st_size, f.stat().st_mtime_ns] for f in files]
    return out
