"""Fuzz hostile input at length: the categories of tests/test_fuzz.py with many more examples, every
command-line case, and the big inputs through `bigbatch prepare` in a subprocess under a memory limit.

Each case must end in success or one clear error line (UserError in process; exit 2 and one
`bigbatch: error:` line on the command line), within its time limit, within its memory, writing only into
its own directories (cwd, HOME, TMPDIR and BIGBATCH_CACHE point into a fresh sandbox per case). The
repository's `git status` is compared before and after the run as well.

    python benchmarks/fuzz.py [--examples 2000] [--no-big] [--only CATEGORY ...]

Writes benchmarks/out/fuzz.json: a list of {"category", "cases", "ok", "clean_error", "failures",
"examples_of_failures"}, and prints the same as a table.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
os.environ.setdefault("OMP_NUM_THREADS", "1")

import test_fuzz as fz  # noqa: E402  (the strategies and checks live beside the fast tests)
from hypothesis import given, settings  # noqa: E402

SCALE = {"prepare": 0.15, "prepare_config": 0.1, "tokenizer_files": 0.5}
"""Examples of a category relative to --examples (prepare runs a whole pipeline per example)."""
BIG_MEMORY_MB = 3072
"""Address-space limit (RLIMIT_AS) of each process of a big case: about 15x the largest input."""
BIG_TIMEOUT_S = 600


class Tally:
    def __init__(self, category: str):
        self.category, self.cases, self.ok, self.clean_error, self.failures = category, 0, 0, 0, 0
        self.examples: list[dict] = []
        self.kinds: dict[str, int] = {}
        self.seconds = 0.0

    def record(self, example, run) -> None:
        self.cases += 1
        try:
            outcome = run()
        except KeyboardInterrupt:
            raise
        except BaseException as e:  # noqa: B036  (a Rust panic is a BaseException; we count it)
            self.failures += 1
            error = f"{type(e).__name__}: {_short(str(e))}"
            kind = re.sub(r"\d+", "N", error)[:160]  # the same failure with other numbers is the same kind
            self.kinds[kind] = self.kinds.get(kind, 0) + 1
            if len(self.examples) < 8 and self.kinds[kind] <= 2:  # at most 2 examples of a kind
                where = traceback.extract_tb(e.__traceback__)[-1]
                self.examples.append({"input": _short(example), "error": error,
                                      "at": f"{Path(where.filename).name}:{where.lineno}"})
            return
        if outcome == "ok":
            self.ok += 1
        else:
            self.clean_error += 1

    def row(self) -> dict:
        return {"category": self.category, "cases": self.cases, "ok": self.ok, "clean_error": self.clean_error,
                "failures": self.failures, "examples_of_failures": self.examples, "seconds": round(self.seconds, 1),
                "failure_kinds": self.kinds}


def _short(x, n: int = 300) -> str:
    text = repr(x) if not isinstance(x, str) else x
    return text if len(text) <= n else text[:n] + f"... ({len(text)} chars)"


def fuzz_category(name: str, n: int) -> Tally:
    case, strategy = fz.CATEGORIES[name]
    tally = Tally(name)

    @settings(max_examples=n, **fz.FUZZ)
    @given(strategy)
    def run(example):
        tally.record(example, lambda: fz.run_case(case, example))

    start = time.time()
    run()
    tally.seconds = time.time() - start
    return tally


def train_settings(n: int) -> Tally:
    """`bigbatch train` for 2 steps with extreme settings: a subprocess each (~6 s), so few examples; first the
    settings known to fail (tests/test_fuzz.py KNOWN_UNFIXED), one case each."""
    tally = Tally("train_settings")
    start = time.time()
    for key, values in fz.KNOWN_UNFIXED.items():  # each once, so the summary shows what is still open
        for value in values:
            sets = [f"{key}={value}"]
            tally.record(sets, lambda sets=sets: fz.run_case(fz.train_case, sets, seconds=200))

    @settings(max_examples=n, **fz.FUZZ)
    @given(fz.train_sets)
    def run(sets):
        tally.record(sets, lambda: fz.run_case(fz.train_case, sets, seconds=200))

    run()
    tally.seconds = time.time() - start
    return tally


def cli_cases() -> Tally:
    tally = Tally("cli")
    start = time.time()
    for name in sorted(fz.CLI_CASES):
        tally.record(name, lambda name=name: fz.run_case(fz.cli_case, name, seconds=300))
    tally.seconds = time.time() - start
    return tally


# --------------------------------------------------------------------------- big inputs


def _million_tiny(path: Path) -> None:
    with open(path, "wb") as f:
        for i in range(1_000_000):
            f.write(b'{"text": "d%d"}\n' % i)


def _giant_line(path: Path, prefix: bytes = b"", suffix: bytes = b"") -> None:
    """~200 MB on one line: words without a single newline."""
    block = b"lorem ipsum dolor sit amet " * 40_000  # ~1 MB
    with open(path, "wb") as f:
        f.write(prefix)
        for _ in range(200):
            f.write(block)
        f.write(suffix)


def _gzip_bomb(path: Path, head: bytes, tail: bytes, gib: int = 2) -> None:
    """~2 MB of gzip that inflates to ``gib`` GiB on a single line."""
    import gzip

    chunk = b"a" * (1 << 24)
    with gzip.open(path, "wb", compresslevel=9) as f:
        f.write(head)
        for _ in range(gib << 6):
            f.write(chunk)
        f.write(tail)


def _random_bytes(path: Path, mb: int = 100) -> None:
    with open(path, "wb") as f:
        for _ in range(mb):
            f.write(os.urandom(1 << 20))


BIG_CASES = {
    # name: (file name, writer, extra prepare args, expected outcome)
    "million_tiny_jsonl": ("d.jsonl", _million_tiny, [], "ok"),
    "giant_line_txt_200mb": ("d.txt", _giant_line, [], "ok"),
    "giant_line_txt_per_line_200mb": ("d.txt", _giant_line, ["--set", "data.text_per_line=true"], "ok"),
    "giant_document_jsonl_200mb": ("d.jsonl", lambda p: _giant_line(p, b'{"text": "', b'"}\n'), [], "ok"),
    "random_bytes_txt_100mb": ("d.txt", _random_bytes, [], "clean_error"),
    "random_bytes_txt_skip_100mb": ("d.txt", _random_bytes, ["--set", "data.skip_bad_rows=true"], "clean_error"),
    "random_bytes_jsonl_skip_100mb": ("d.jsonl", _random_bytes, ["--set", "data.skip_bad_rows=true"], "clean_error"),
    "random_bytes_csv_100mb": ("d.csv", _random_bytes, ["--task", "classify"], "clean_error"),
    "giant_csv_field_200mb": ("d.csv", lambda p: _giant_line(p, b'text\n"', b'"\n'), [], "clean_error"),
    "gzip_bomb_jsonl_2gib_line": ("d.jsonl.gz", lambda p: _gzip_bomb(p, b'{"text": "', b'"}\n'), [], "clean_error"),
    "gzip_bomb_csv_2gib_line": ("d.csv.gz", lambda p: _gzip_bomb(p, b"text\n", b"\n"), [], "clean_error"),
    "gzip_bomb_txt_1gib": ("d.txt.gz", lambda p: _gzip_bomb(p, b"", b"\n", gib=1), [], "ok"),
}


def big_case(name: str) -> dict:
    """One big input through `bigbatch prepare` (2 workers) under RLIMIT_AS and a timeout -> its record."""
    file, write, extra, expected = BIG_CASES[name]
    box = fz.Sandbox()
    try:
        path = box.inputs / file
        write(path)
        before = fz._listing(box.root)
        # a wrapper reports the peak RSS of bigbatch and its workers (RUSAGE_CHILDREN of its own children only)
        wrapper = ("import resource, subprocess, sys; rc = subprocess.run(sys.argv[1:]).returncode; "
                   "print(f'PEAK_RSS_KB={resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}'); sys.exit(rc)")
        start = time.time()
        limit = BIG_MEMORY_MB << 20
        proc = subprocess.run(
            [sys.executable, "-c", wrapper, sys.executable, "-m", "bigbatch", "prepare", "--source", str(path),
             "--out", str(box.out), "--workers", "2", *extra],
            cwd=box.cwd, env=box.env(), capture_output=True, text=True, errors="replace", timeout=BIG_TIMEOUT_S,
            preexec_fn=lambda: __import__("resource").setrlimit(__import__("resource").RLIMIT_AS, (limit, limit)))
        seconds = time.time() - start
        peak = next((int(line.split("=")[1]) for line in proc.stdout.splitlines() if line.startswith("PEAK_RSS_KB=")), 0)
        outcome = "ok" if proc.returncode == 0 else "clean_error"
        if proc.returncode != 0:
            fz.check_cli_error(proc)
        if outcome != expected:  # a clean error on a million good documents is a defect all the same
            raise fz.Failure(f"{outcome}, expected {expected}: {proc.stderr[-300:]!r}")
        box.check_writes(before)
        last = [line for line in proc.stderr.replace("\r", "\n").splitlines() if line.strip()][-1:]
        return {"outcome": outcome, "expected": expected, "seconds": round(seconds, 1),
                "peak_rss_mb": round(peak / 1024), "input_mb": round(path.stat().st_size / 2**20),
                "last_stderr_line": last[0][:300] if last else ""}
    finally:
        box.remove()


def big_cases() -> tuple[Tally, dict]:
    tally, details = Tally("big_inputs_prepare"), {}
    start = time.time()
    for name in BIG_CASES:
        def run(name=name):
            record = big_case(name)
            details[name] = record
            print(f"  {name}: {record['outcome']} in {record['seconds']} s, peak RSS {record['peak_rss_mb']} MB",
                  file=sys.stderr)
            return record["outcome"]
        tally.record(name, run)
        if name not in details:
            print(f"  {name}: FAILED {tally.examples[-1]['error'] if tally.examples else ''}", file=sys.stderr)
    tally.seconds = time.time() - start
    return tally, details


# --------------------------------------------------------------------------- main


def _git_status() -> set[str]:
    out = subprocess.run(["git", "status", "--porcelain", "--untracked-files=all"], cwd=ROOT, capture_output=True,
                         text=True).stdout
    return set(out.splitlines())


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--examples", type=int, default=2000,
                   help="hypothesis examples per category (prepare: x0.15, prepare_config: x0.1, train_settings: /40)")
    p.add_argument("--no-big", action="store_true", help="leave out the big inputs (a million documents, 200 MB)")
    p.add_argument("--only", nargs="*", help="run only these categories")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "out" / "fuzz.json"))
    args = p.parse_args(argv)

    status_before = _git_status()
    rows, big_details, start = [], {}, time.time()
    names = list(fz.CATEGORIES) + ["cli", "train_settings"] + ([] if args.no_big else ["big_inputs_prepare"])
    for name in names:
        if args.only and name not in args.only:
            continue
        print(f"{name} ...", file=sys.stderr)
        if name == "cli":
            tally = cli_cases()
        elif name == "train_settings":
            tally = train_settings(max(5, args.examples // 40))
        elif name == "big_inputs_prepare":
            tally, big_details = big_cases()
        else:
            tally = fuzz_category(name, max(10, int(args.examples * SCALE.get(name, 1.0))))
        rows.append(tally.row())
        print(f"  {tally.cases} cases: {tally.ok} ok, {tally.clean_error} clean errors, {tally.failures} failures "
              f"({tally.seconds:.0f} s)", file=sys.stderr)

    new_in_repo = sorted(_git_status() - status_before)  # others may edit the tree at the same time: a hint
    if big_details:
        for row in rows:
            if row["category"] == "big_inputs_prepare":
                row["details"] = big_details
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(rows, indent=1) + "\n")

    print(f"\n{'category':<22} {'cases':>7} {'ok':>7} {'clean_error':>12} {'failures':>9} {'seconds':>8}")
    for r in rows:
        print(f"{r['category']:<22} {r['cases']:>7} {r['ok']:>7} {r['clean_error']:>12} {r['failures']:>9} "
              f"{r['seconds']:>8}")
    print(f"total {time.time() - start:.0f} s; summary in {out}")
    if new_in_repo:
        print("git status changed during the run (another process, or a case writing into the repository): "
              + "; ".join(new_in_repo[:10]))
    for r in rows:
        for kind, count in r["failure_kinds"].items():
            print(f"FAILURES {r['category']} x{count}: {kind}")
        for ex in r["examples_of_failures"]:
            print(f"  e.g. input {ex['input']} ({ex['at']})")
    return 1 if any(r["failures"] for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
