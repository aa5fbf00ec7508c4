"""Every shell command in README.md and docs/*.md is executed here, so documented commands cannot rot (issue 13).

Which commands
    Fenced blocks whose info string starts with bash, sh, shell, zsh or console, in README.md and docs/*.md (a
    new docs/NAME.md is picked up by itself). In a console block only `$ ` lines are commands (the rest is their
    output; `> ` continuation lines join them); in the others every line is a command (a `$ ` prompt is stripped).
    A trailing backslash continues a line, `#` starts a comment, pipes, `&&`, `;`, redirections and leading
    NAME=value assignments run as bash runs them. Unmarked blocks hold output (resolved configs, a run directory
    listing), so they are not run; test_unmarked_blocks_hold_no_commands fails if one looks like a command.

How they run
    Each document runs its commands in document order, in one temporary directory, through `bash -o pipefail -c`
    with the repo's .venv/bin first on PATH and the session's BIGBATCH_CACHE (tests/conftest.py); `cd` and
    `export` carry over to the next command. Later commands read what earlier ones wrote (`--run-dir runs/X`, then
    `bigbatch eval runs/X`). The directory holds copies of configs/, examples/ and benchmarks/ and the small
    stand-ins for the user's own data that the docs name (USER_DATA: reviews.jsonl, photos/, clips/, corpus/, ...).

    So that it ends in seconds, each `bigbatch SUB ...` (also `python -m bigbatch` and `torchrun ... -m bigbatch`)
    gets the flags of FAST[SUB] (a value the command already gives is lowered to the cap, never raised; a flag
    it does not give is appended, except the ones marked "if given"). `bigbatch train` gets
    `--set train.max_steps=6 --set optim.warmup_steps=1 --set train.eval_examples=200 --no-progress` and a small
    model (`--set model.d_model=32 --set model.n_heads=2 --set model.n_layers=2 ...`, and for text tasks
    `--set model.max_len=32 --set data.seq_len=32`; neither when it starts from weights, train.init_from), and its run's
    summary.json must show at most 6 steps (the override really shortened it); eval gets --max-examples 100,
    compress prune --finetune-steps 4, noise-scale --steps 5, and so on (FAST).

Fast and slow
    test_documented_command_is_valid (default run, in-process, milliseconds): every bigbatch command parses with
    the real argument parser, its config files load with its --set overrides (unknown keys, bad values), and
    every run, config, data file or glob it reads exists in the repo, is user data in USER_DATA, or is written by
    an earlier command of the same document.
    test_documented_command_runs: one parameter per command, id FILE:LINE. A command is fast (default run) when
    nothing in it can take long: `bigbatch bench peak`, `--help`, `prepare` / `baseline` of user data only, plain
    shell utilities, and it reads nothing a slow command wrote; everything else (training, and all that reads a
    trained run) is `@pytest.mark.slow` (`make test-slow`). A failure names the line, the command as run, its
    exit code and its stderr tail.

Writing a testable command (for doc writers)
    - Give the run a name where later commands read it: `bigbatch train ... --run-dir runs/deb`, then
      `bigbatch eval runs/deb`; `--out DIR` of compress / prepare / attention / plot counts the same way.
    - The user's own data: use a name from USER_DATA or add a small maker there (a few hundred examples).
    - A command that cannot run here (other machines, a GPU, an install): add a regex to SKIP with its reason,
      or put `<!-- not-tested: reason -->` on the line before its block (no command of the block runs).
    - A command of a program the harness does not know (RUNNABLE) fails instead of being skipped silently; a
      long `python benchmarks/...` run needs a SKIP entry or a not-tested marker.
"""

from __future__ import annotations

import contextlib
import fnmatch
import glob
import io
import json
import math
import os
import re
import shlex
import shutil
import signal
import subprocess
import wave
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = ROOT / ".venv" / "bin"
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SHELL_LANGS = {"bash", "sh", "shell", "zsh", "console"}
COPIED = ("configs", "examples", "benchmarks")  # copied into each document's directory (small files)
TIMEOUT_S = 1800  # one command

# Documented commands that are not run here, by a regex on the command's text, each with its reason.
SKIP = {
    r"^make\b": "make train / make test create .venv, install and run the 5-minute default or this suite: "
                "CI runs them itself",
    r"(^|\s)(\S*/)?pip3? install\b|-m pip install\b": "installs packages: CI's set-up does it",
    r"^torchrun\b.*--nnodes[ =](?!1\b)\d+": "needs that many machines (each waits at the rendezvous for the others)",
}
NOT_TESTED = re.compile(r"<!--\s*not-tested:\s*(.*?)\s*-->")

# The flags that make `bigbatch SUB` finish in seconds: (flag, cap) lowers the flag's value to cap or appends it;
# (flag, cap, "if given") only lowers; ("--set", "key", cap) does the same for a config key; (flag,) a switch.
MAX_STEPS = 6
SHORT_RUN = [("--set", "train.max_steps", MAX_STEPS), ("--set", "optim.warmup_steps", 1),  # below max_steps
             ("--set", "train.eval_examples", 200), ("--no-progress",)]
SMALL_MODEL = [("--set", f"model.{key}", n) for key, n in  # a 256 x 4 classifier's 6 steps took minutes
               (("d_model", 32), ("n_heads", 2), ("n_layers", 2), ("n_encoder_layers", 2), ("n_decoder_layers", 2),
                ("d_ff", 64))]
SHORT_TEXT = [("--set", "model.max_len", 32), ("--set", "data.seq_len", 32)]  # text tasks: an untrained translator
# decodes every validation sentence to max_len (gettext's 128: minutes); ViT / audio models refuse a max_len
FAST = {
    "train": SHORT_RUN,
    "compress distill": SHORT_RUN,  # the student: the teacher's (small) model with half its layers
    "compress prune": [("--finetune-steps", 4, "if given"), ("--eval-examples", 200), ("--no-progress",)],
    "compress quantize": [("--eval-examples", 200), ("--no-progress",)],
    "noise-scale": [("--steps", 5)],  # its estimate needs 5 (the default LM's took 2 minutes)
    "bench throughput": [("--steps", 3)],
    "bench latency": [("--reps", 3)],
    "eval": [("--max-examples", 100)],
    "generate": [("--max-new-tokens", 40)],
    "baseline": [("--max-examples", 2000)],
}
MODEL_FROM_CONFIG = ("train", "noise-scale", "bench throughput")  # they also get _model_rules

# Programs a documented command may run: bigbatch (and python -m bigbatch, torchrun -m bigbatch), python
# scripts, and shell utilities that are fast unless they read a slow command's output.
UTILITIES = {"cd", "export", "mkdir", "ls", "cat", "echo", "head", "tail", "grep", "wc", "cp", "mv", "rm", "touch",
             "sort", "uniq", "cut", "tr", "sed", "awk", "printf", "tee", "test", "true", "du", "jq", "zstdcat",
             "zcat", "gzip", "zstd", "find", "diff", "cmp", "python", "python3", "tensorboard"}
RUNNABLE = UTILITIES | {"bigbatch", "torchrun"}


# --------------------------------------------------------------------------- the user's own data, small


def _reviews(n=300, seed=0):
    rng = np.random.default_rng(seed)
    good, bad = "great lovely sturdy fast perfect".split(), "broken slow awful flimsy late".split()
    filler = "the a this it was very quite and but my box item".split()
    rows = []
    for _ in range(n):
        stars = int(rng.integers(1, 6))
        words = list(rng.choice(filler, size=rng.integers(3, 12))) + list(rng.choice(good if stars > 3 else bad, 2))
        rng.shuffle(words)
        rows.append({"body": " ".join(words), "stars": stars})
    return rows


def _make_reviews_jsonl(path):
    path.write_text("".join(json.dumps(r) + "\n" for r in _reviews()))


def _make_reviews_csv(path):
    path.write_text("body,stars\n" + "".join(f"{r['body']},{r['stars']}\n" for r in _reviews()))


def _make_photos(path, per_class=24):
    from PIL import Image

    rng = np.random.default_rng(0)
    for name, colour in (("cat", (200, 80, 40)), ("dog", (40, 90, 200))):
        (path / name).mkdir(parents=True)
        for i in range(per_class):
            h, w = int(rng.integers(24, 48)), int(rng.integers(24, 48))
            pixels = np.clip(np.array(colour) + rng.normal(0, 40, (h, w, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(path / name / f"{i}.jpg")


def _make_clips(path, per_class=16, rate=8000):
    rng = np.random.default_rng(0)
    for name, hz in (("beep", 880.0), ("hum", 120.0)):
        (path / name).mkdir(parents=True)
        for i in range(per_class):
            t = np.arange(int(rate * rng.uniform(0.5, 1.5))) / rate
            pcm = (0.3 * np.sin(2 * math.pi * hz * rng.uniform(0.9, 1.1) * t) * 32767).astype("<i2")
            with wave.open(str(path / name / f"{i}.wav"), "wb") as f:
                f.setnchannels(1)
                f.setsampwidth(2)
                f.setframerate(rate)
                f.writeframes(pcm.tobytes())


def _make_corpus(path):
    import zstandard

    path.mkdir()
    words = "alpha beta gamma delta epsilon zeta theta kappa lambda sigma omega".split()
    rng = np.random.default_rng(0)
    for i in range(4):
        text = "\n".join(" ".join(rng.choice(words, size=12)) for _ in range(200)) + "\n"
        (path / f"part{i}.txt.zst").write_bytes(zstandard.ZstdCompressor().compress(text.encode()))


def _make_shoe(path):
    from PIL import Image

    pixels = np.zeros((28, 28), np.uint8)
    pixels[16:24, 3:25] = 220  # a sole and an upper, roughly
    pixels[8:16, 14:25] = 160
    Image.fromarray(pixels).save(path)


USER_DATA = {"reviews.jsonl": _make_reviews_jsonl, "reviews.csv": _make_reviews_csv, "photos": _make_photos,
             "clips": _make_clips, "corpus": _make_corpus, "shoe.png": _make_shoe}


@pytest.fixture(scope="session")
def user_data(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("user-data")
    for name, make in USER_DATA.items():
        make(d / name)
    return d


# --------------------------------------------------------------------------- shell words


@dataclass
class Token:
    value: str  # the word as the program sees it (quotes removed)
    start: int  # span of its raw text in the command
    end: int
    op: bool = False  # | || && ; & or a redirection


_OPS = ("&&", "||", ">>", ">&", "|", ";", "&", ">", "<")


def _op_at(text, i):
    return next((o for o in _OPS if text.startswith(o, i)), None)


def tokenize(text: str) -> tuple[list[Token], int]:
    """Shell words and operators of one command line; returns (tokens, where a trailing # comment starts)."""
    tokens, i, n = [], 0, len(text)
    while i < n:
        c = text[i]
        if c.isspace():
            i += 1
            continue
        if c == "#":
            return tokens, i
        op = _op_at(text, i)
        if op:
            tokens.append(Token(op, i, i + len(op), op=True))
            i += len(op)
            continue
        start, value, depth = i, [], 0
        while i < n and (depth or not (text[i].isspace() or _op_at(text, i))):
            c = text[i]
            if c == "\\" and i + 1 < n:
                value.append(text[i + 1])
                i += 2
            elif c == "'":
                j = text.find("'", i + 1)
                if j < 0:
                    raise ValueError("unclosed '")
                value.append(text[i + 1 : j])
                i = j + 1
            elif c == '"':
                i += 1
                while i < n and text[i] != '"':
                    if text[i] == "\\" and i + 1 < n and text[i + 1] in '"\\$`':
                        i += 1
                    value.append(text[i])
                    i += 1
                if i >= n:
                    raise ValueError('unclosed "')
                i += 1
            else:
                depth += text.startswith("$(", i)
                depth -= c == ")" and depth > 0
                value.append(c)
                i += 1
        word = "".join(value)
        if word.isdigit() and i < n and text[i] in "<>":  # 2>file, 2>&1: the descriptor belongs to the operator
            op = _op_at(text, i)
            tokens.append(Token(word + op, start, i + len(op), op=True))
            i += len(op)
            continue
        tokens.append(Token(word, start, i))
    return tokens, n


# --------------------------------------------------------------------------- commands of the docs


@dataclass
class Command:
    doc: Path
    line: int
    text: str  # comment removed, continuations joined
    not_tested: str | None = None  # the reason of a <!-- not-tested: ... --> marker before the block
    skip: str | None = None  # a reason from SKIP or the marker
    problem: str | None = None  # what the harness cannot run
    segments: list = field(default_factory=list)
    fast: bool = False

    @property
    def id(self) -> str:
        return f"{self.doc.relative_to(ROOT)}:{self.line}"


def fenced_blocks(path: Path):
    """(language, first content line number, lines, not-tested reason) of every fenced block of a Markdown file."""
    lines = path.read_text(encoding="utf-8").splitlines()
    i = 0
    while i < len(lines):
        m = re.match(r"^\s*(`{3,}|~{3,})\s*([^\s`]*)", lines[i])
        if not m:
            i += 1
            continue
        fence, lang = m.group(1), m.group(2).lower().lstrip("{.").rstrip("}")
        before = next((x for x in reversed(lines[:i]) if x.strip()), "")
        marker = NOT_TESTED.search(before)
        j = i + 1
        while j < len(lines) and not lines[j].strip().startswith(fence[0] * len(fence)):
            j += 1
        yield lang, i + 2, lines[i + 1 : j], marker.group(1) if marker else None
        i = j + 1


def block_commands(lang: str, first: int, lines: list[str]):
    """(line number, text) of each command of a shell block: continuations joined, prompts and comments gone."""
    k = 0
    while k < len(lines):
        raw, number = lines[k], first + k
        k += 1
        stripped = raw.strip()
        if lang == "console":
            if not stripped.startswith("$"):
                continue  # output
            stripped = stripped[1:].strip()
        elif stripped.startswith("$ "):
            stripped = stripped[2:].strip()
        parts = [stripped]
        while parts[-1].endswith("\\") and k < len(lines):
            parts[-1] = parts[-1][:-1]
            nxt = lines[k].strip()
            parts.append(nxt[2:] if lang == "console" and nxt.startswith("> ") else nxt)
            k += 1
        text = " ".join(p.strip() for p in parts)
        try:
            text = text[: tokenize(text)[1]].strip()
        except ValueError:
            pass  # reported by analyse()
        if text:
            yield number, text


@dataclass
class Segment:
    """One program of a command line (pipes and && give several)."""
    tokens: list[Token]
    program: str  # the program's name: bigbatch for bigbatch, python -m bigbatch and torchrun -m bigbatch
    argv_at: int = 0  # bigbatch: index in tokens of its first argument
    args: object = None  # bigbatch: the parsed argparse namespace
    key: str = ""  # bigbatch: train, eval, compress prune, bench peak, ...
    error: str | None = None  # bigbatch: what the real parser said

    @property
    def argv(self) -> list[str]:
        return [t.value for t in self.tokens[self.argv_at :]]


def split_segments(tokens: list[Token]) -> list[Segment]:
    segments, current, redirect = [], [], False
    for t in tokens + [Token(";", 0, 0, op=True)]:
        if t.op and t.value in ("|", "||", "&&", ";", "&"):
            if current:
                segments.append(current)
            current, redirect = [], False
        elif t.op:
            redirect = True  # the next word is a file name, not an argument
        elif redirect:
            redirect = False
        else:
            current.append(t)
    out = []
    for words in segments:
        k = 0
        while k < len(words) - 1 and re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", words[k].value):
            k += 1  # NAME=value before the program
        words = words[k:]
        name = os.path.basename(words[0].value)
        values = [w.value for w in words]
        if name == "bigbatch":
            out.append(Segment(words, "bigbatch", 1))
        elif name in ("python", "python3", "torchrun") and "-m" in values and "bigbatch" in values[values.index("-m"):]:
            out.append(Segment(words, "bigbatch", values.index("bigbatch", values.index("-m")) + 1))
        else:
            out.append(Segment(words, name))
    return out


def parse_bigbatch(argv: list[str]):
    """(namespace, key, error) of `bigbatch ARGV` by the real parser, as bigbatch.cli.main reads it."""
    from bigbatch.cli import build_parser

    parser, err = build_parser(), io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            args, extra = parser.parse_known_args(argv)
    except SystemExit as e:
        message = err.getvalue().strip().splitlines()
        return None, "", None if e.code == 0 else (message[-1] if message else f"exit {e.code}")
    if extra and not (hasattr(args, "text") and not any(x.startswith("-") for x in extra)):
        return None, "", f"unrecognized arguments: {' '.join(extra)}"
    key = args.command + "".join(f" {getattr(args, a)}" for a in ("how", "what") if getattr(args, a, None))
    return args, key, None


def analyse(cmd: Command) -> None:
    for pattern, reason in SKIP.items():
        if re.search(pattern, cmd.text):
            cmd.skip = reason
            return
    if cmd.not_tested is not None:
        cmd.skip = f"marked not-tested: {cmd.not_tested}"
        return
    if "<<" in cmd.text:
        cmd.problem = "here-documents are not supported by this harness"
        return
    try:
        cmd.segments = split_segments(tokenize(cmd.text)[0])
    except ValueError as e:
        cmd.problem = f"cannot split the command into words: {e}"
        return
    for seg in cmd.segments:
        if seg.program == "bigbatch":
            seg.args, seg.key, seg.error = parse_bigbatch(seg.argv)
        elif seg.program not in RUNNABLE:
            cmd.problem = (f"`{seg.program}` is neither run by this harness nor in its SKIP list: add a SKIP entry "
                           "with the reason, or `<!-- not-tested: reason -->` before the block")


def doc_commands(path: Path) -> list[Command]:
    cmds = []
    for lang, first, lines, marker in fenced_blocks(path):
        if lang in SHELL_LANGS:
            cmds += [Command(path, n, text, not_tested=marker) for n, text in block_commands(lang, first, lines)]
    for cmd in cmds:
        analyse(cmd)
    _classify_speed(cmds)
    return cmds


# --------------------------------------------------------------------------- what a command reads and writes

_BUILTIN = "builtin:"
_SCHEME = re.compile(r"^[a-z][a-z0-9+-]+:")  # builtin:NAME, package:NAME/DIR: not paths
_FILE_SUFFIX = re.compile(r"\.(png|jpe?g|gif|bmp|webp|wav|txt|jsonl|json|csv|tsv|parquet|ya?ml|gz|zst)$", re.I)


def _sets(args) -> dict[str, str]:
    return dict(item.split("=", 1) for item in (getattr(args, "set", None) or []) if "=" in item)


def _config_sources(path: str, sets: dict[str, str]) -> list[str]:
    """data.source / valid_source / test_source a config file and --set overrides name."""
    import yaml

    data = {}
    if path and Path(path).suffix in (".yaml", ".yml") and (ROOT / path).is_file():
        data = (yaml.safe_load((ROOT / path).read_text()) or {}).get("data") or {}
    out = [str(data.get(k)) for k in ("source", "valid_source", "test_source") if data.get(k)]
    return out + [v for k, v in sets.items() if k in ("data.source", "data.valid_source", "data.test_source")]


def reads_writes(seg: Segment) -> tuple[list[str], list[str], list[str]]:
    """(paths the segment reads, paths it writes, data sources it reads) of a bigbatch segment."""
    a, reads, writes = seg.args, [], []
    if a is None:
        return [], [], []
    for name in ("config", "run", "teacher", "student", "source", "hf_dir"):
        if getattr(a, name, None):
            reads.append(getattr(a, name))
    sets = _sets(a)
    reads += [v for k, v in sets.items() if k in ("train.init_from", "distill.teacher")]
    reads += list(getattr(a, "runs", None) or [])
    reads += [x for x in [getattr(a, "input", None), *(getattr(a, "text", None) or [])] if x and _FILE_SUFFIX.search(x)]
    if seg.key == "train":
        if a.run_dir:
            writes.append(a.run_dir)
        elif a.resume:
            reads.append("runs/*")
        else:
            writes.append("runs/*")
    writes += [getattr(a, name) for name in ("out", "out_dir") if getattr(a, name, None)]
    sources = _config_sources(getattr(a, "config", None), sets)
    if getattr(a, "source", None):
        sources.append(a.source)
    reads += sources
    return [r for r in reads if r and not _SCHEME.match(r)], writes, sources


def _norm(path: str) -> str:
    return os.path.normpath(path)


def _covers(written: str, path: str) -> bool:
    """Whether an earlier command that wrote ``written`` (a path, or runs/* for a timestamped run) made ``path``."""
    w, p = _norm(written), _norm(path)
    return p == w or p.startswith(w + "/") or fnmatch.fnmatch(p, w) or fnmatch.fnmatch(w, p)


def _mentions(cmd: Command, written: str) -> bool:
    return any(not t.op and t.value and _covers(written, t.value) for seg in cmd.segments for t in seg.tokens[1:])


def _cheap(seg: Segment, sources: list[str]) -> bool:
    if seg.program != "bigbatch":
        return seg.program in UTILITIES and seg.program not in ("python", "python3")
    if seg.args is None:
        return True  # --help / --version, or a parse error reported by test_documented_command_is_valid
    if seg.key == "bench peak":
        return True
    return seg.key in ("prepare", "baseline") and bool(sources) and not any(s.startswith(_BUILTIN) for s in sources)


def _classify_speed(cmds: list[Command]) -> None:
    """fast = every program cheap and nothing read that a slow command of the same document wrote."""
    slow_writes: list[str] = []
    for cmd in cmds:
        if cmd.skip or cmd.problem:
            continue
        rw = [reads_writes(s) for s in cmd.segments]
        cmd.fast = (all(_cheap(s, src) for s, (_, _, src) in zip(cmd.segments, rw))
                    and not any(_mentions(cmd, w) for w in slow_writes))
        if not cmd.fast:
            slow_writes += [w for _, writes, _ in rw for w in writes]
            slow_writes += [t.value for s in cmd.segments if s.program != "bigbatch" for t in s.tokens[1:]
                            if "/" in t.value or _FILE_SUFFIX.search(t.value)]


COMMANDS = [cmd for doc in DOCS for cmd in doc_commands(doc)]


def _param(cmd: Command):
    marks = [pytest.mark.skip(reason=cmd.skip)] if cmd.skip else [] if cmd.fast else [pytest.mark.slow]
    return pytest.param(cmd, id=cmd.id, marks=marks)


# --------------------------------------------------------------------------- speeding a command up


def _model_rules(seg: Segment, workdir: Path | None) -> list:
    """SMALL_MODEL (+ SHORT_TEXT for a text task) for a command that builds a model from a config, none for a run
    that starts from weights (train.init_from: their model). The config is the --set overrides over the YAML
    file, or over the run's config.yaml when the run directory exists (a resume)."""
    import yaml

    sets, values = _sets(seg.args), {}
    configs = [ROOT / seg.args.config] if seg.args.config else []
    if workdir is not None and getattr(seg.args, "run_dir", None):
        configs.append(workdir / seg.args.run_dir / "config.yaml")
    for path in configs:
        if path.suffix in (".yaml", ".yml") and path.is_file():
            loaded = yaml.safe_load(path.read_text()) or {}
            values = {"task": loaded.get("task"), "train.init_from": (loaded.get("train") or {}).get("init_from")}
    values.update((k, v) for k, v in sets.items() if k in ("task", "train.init_from"))
    if values.get("train.init_from") not in (None, "", "null"):
        return []
    return SMALL_MODEL + (SHORT_TEXT if (values.get("task") or "lm") in ("lm", "classify", "translate") else [])


def speed_up(cmd: Command, workdir: Path | None = None) -> str:
    """The command line with FAST's flags in each bigbatch segment (raw text kept, edits spliced in); a train
    command keeps the model of the weights it starts from (train.init_from)."""
    edits: list[tuple[int, int, str]] = []  # (start, end, new text) in cmd.text
    for seg in cmd.segments:
        if seg.program != "bigbatch" or seg.args is None or seg.key not in FAST:
            continue
        argv = seg.tokens[seg.argv_at :]
        appended = []
        rules = FAST[seg.key] + (_model_rules(seg, workdir) if seg.key in MODEL_FROM_CONFIG else [])
        for rule in rules:
            if rule[0] == "--set":
                key, cap = rule[1], rule[2]
                hits = [k for k, t in enumerate(argv[1:], 1) if argv[k - 1].value == "--set"
                        and t.value.startswith(key + "=")]
                if hits:
                    t = argv[hits[-1]]
                    if _lower(t.value.split("=", 1)[1], cap):
                        edits.append((t.start, t.end, shlex.quote(f"{key}={cap}")))
                else:
                    appended.append(f"--set {key}={cap}")
            elif len(rule) == 1:
                if rule[0] not in [t.value for t in argv]:
                    appended.append(rule[0])
            else:
                flag, cap = rule[0], rule[1]
                k = next((k for k, t in enumerate(argv) if t.value == flag or t.value.startswith(flag + "=")), None)
                if k is None:
                    if len(rule) < 3:
                        appended.append(f"{flag} {cap}")
                elif "=" in argv[k].value:
                    if _lower(argv[k].value.split("=", 1)[1], cap):
                        edits.append((argv[k].start, argv[k].end, f"{flag}={cap}"))
                elif k + 1 < len(argv) and _lower(argv[k + 1].value, cap):
                    edits.append((argv[k + 1].start, argv[k + 1].end, str(cap)))
        if appended:
            end = seg.tokens[-1].end
            edits.append((end, end, " " + " ".join(appended)))
    text = cmd.text
    for start, end, new in sorted(edits, reverse=True):
        text = text[:start] + new + text[end:]
    return text


def _lower(value: str, cap) -> bool:
    """Whether the documented value should be lowered to the cap (null / a larger number)."""
    try:
        return value.strip().lower() in ("null", "none", "~", "") or float(value) > cap
    except ValueError:
        return False


# --------------------------------------------------------------------------- running a document in order


@dataclass
class Result:
    rc: int | None  # None: not run (slow, in a session that runs no slow test)
    ran: str = ""
    stdout: str = ""
    stderr: str = ""


class DocRunner:
    """A document's commands in document order in one directory; each runs once, when a test first needs it or
    a later command of the same document."""

    def __init__(self, commands: list[Command], workdir: Path, user_data: Path, run_slow: bool):
        self.commands, self.workdir, self.run_slow = commands, workdir, run_slow
        self.results: dict[str, Result] = {}
        self.cwd, self.state = workdir, workdir.parent / (workdir.name + "-state")
        self.state.mkdir()
        for name in COPIED:
            shutil.copytree(ROOT / name, workdir / name, ignore=shutil.ignore_patterns("out", "__pycache__"))
        for name in USER_DATA:
            (workdir / name).symlink_to(user_data / name)
        env = dict(os.environ)
        env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
        env["PET_MASTER_PORT"] = str(29500 + os.getpid() % 1000)  # torchrun by hand: not another test's port
        env.pop("PYTEST_CURRENT_TEST", None)
        (self.state / "env").write_text("".join(f"export {k}={shlex.quote(v)}\n" for k, v in env.items()
                                                if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", k)))

    def result(self, cmd: Command) -> Result:
        for c in self.commands:
            if c.id not in self.results:
                self.results[c.id] = self._run(c)
            if c is cmd:
                return self.results[c.id]
        raise KeyError(cmd.id)

    def failed_before(self, cmd: Command) -> list[str]:
        ids = [c.id for c in self.commands]
        return [i for i in ids[: ids.index(cmd.id)] if self.results.get(i) and self.results[i].rc not in (0, None)]

    def _run(self, cmd: Command) -> Result:
        if cmd.skip or cmd.problem or (not cmd.fast and not self.run_slow):
            return Result(None)
        ran = speed_up(cmd, self.cwd)
        cwd_file, env_file = self.state / "cwd", self.state / "env"
        script = (f"set -o pipefail\nsource {shlex.quote(str(env_file))}\ncd {shlex.quote(str(self.cwd))}\n"
                  f"{ran}\n__rc=$?\npwd > {shlex.quote(str(cwd_file))}\n"
                  f"export -p > {shlex.quote(str(env_file))}.new && mv {shlex.quote(str(env_file))}.new "
                  f"{shlex.quote(str(env_file))}\nexit $__rc\n")
        proc = subprocess.Popen(["bash", "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")}, start_new_session=True)
        try:
            out, err = proc.communicate(timeout=TIMEOUT_S)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # the command's own processes too (torchrun's ranks)
            out, err = proc.communicate()
            err += f"\n(killed after {TIMEOUT_S} s)"
        if cwd_file.exists():
            self.cwd = Path(cwd_file.read_text().strip() or self.cwd)
        return Result(proc.returncode, ran, out, err)


@pytest.fixture(scope="session")
def doc_runners(request, tmp_path_factory, user_data):
    run_slow = any(item.get_closest_marker("slow") for item in request.session.items)
    runners = {}

    def get(doc: Path) -> DocRunner:
        if doc not in runners:
            cmds = [c for c in COMMANDS if c.doc == doc]
            runners[doc] = DocRunner(cmds, tmp_path_factory.mktemp(doc.stem.lower()), user_data, run_slow)
        return runners[doc]

    return get


def _tail(text: str, n=3000) -> str:
    text = text.strip()
    return text if len(text) <= n else "..." + text[-n:]


def _train_steps_ok(cmd: Command, res: Result, workdir: Path) -> str | None:
    """A trained run's summary.json shows at most MAX_STEPS steps: the override did shorten it."""
    for seg in cmd.segments:
        if seg.program != "bigbatch" or seg.key != "train":
            continue
        if seg.args.run_dir:
            run = workdir / seg.args.run_dir
        else:  # runs/TIMESTAMP (or --resume): the newest run
            runs = sorted((workdir / "runs").glob("*/summary.json"), key=lambda p: p.stat().st_mtime)
            run = runs[-1].parent if runs else workdir / "runs" / "?"
        summary = run / "summary.json"
        if not summary.exists():
            return f"no {summary.relative_to(workdir)} after the run"
        step = json.loads(summary.read_text()).get("step", 0)
        if step > MAX_STEPS:
            return f"{summary.relative_to(workdir)}: step {step} > {MAX_STEPS}: the override did not shorten the run"
    return None


# --------------------------------------------------------------------------- tests


@pytest.mark.parametrize("cmd", [_param(c) for c in COMMANDS])
def test_documented_command_runs(cmd: Command, doc_runners):
    if cmd.problem:
        pytest.fail(f"{cmd.id}: `{cmd.text}`: {cmd.problem}")
    runner = doc_runners(cmd.doc)
    res = runner.result(cmd)
    assert res.rc is not None, f"{cmd.id} was not run"
    earlier = runner.failed_before(cmd)
    if res.rc != 0:
        pytest.fail(f"{cmd.id}: exit {res.rc}\ndocumented: {cmd.text}\nran:        {res.ran}\n"
                    + (f"(earlier failures in this document: {', '.join(earlier)})\n" if earlier else "")
                    + f"stderr tail:\n{_tail(res.stderr) or _tail(res.stdout)}", pytrace=False)
    problem = _train_steps_ok(cmd, res, runner.workdir) if runner.cwd == runner.workdir else None
    assert problem is None, f"{cmd.id}: {problem}"


def _exists(path: str, user_data: Path, written: list[str]) -> bool:
    if any(_covers(w, path) for w in written):
        return True
    if os.path.isabs(path):
        return bool(glob.glob(path))
    first = _norm(path).split("/")[0]
    if first in COPIED:
        return bool(glob.glob(str(ROOT / path)))
    return bool(glob.glob(str(user_data / path)))


@pytest.mark.parametrize("cmd", [pytest.param(c, id=c.id) for c in COMMANDS if not c.skip])
def test_documented_command_is_valid(cmd: Command, user_data):
    """The real parser accepts it, its configs load with its --set overrides, and what it reads exists or is
    written by an earlier command of the same document."""
    from bigbatch.config import load_config
    from bigbatch.errors import UserError

    if cmd.problem:
        pytest.fail(f"{cmd.id}: `{cmd.text}`: {cmd.problem}")
    earlier = [c for c in COMMANDS if c.doc == cmd.doc and c.line < cmd.line and not c.skip and not c.problem]
    written = [w for c in earlier for s in c.segments for w in reads_writes(s)[1]]
    written += [t.value for c in earlier for s in c.segments if s.program != "bigbatch" for t in s.tokens[1:]]
    problems = []
    for seg in cmd.segments:
        if seg.program != "bigbatch":
            continue
        if seg.error:
            problems.append(f"bigbatch {' '.join(seg.argv)}: {seg.error}")
            continue
        if seg.args is None:
            continue  # --help, --version
        reads, _, _ = reads_writes(seg)
        for path in reads:
            if not _exists(path, user_data, written):
                problems.append(f"reads {path}, which is not in the repo, not user data (USER_DATA) and not written "
                                f"by an earlier command of {cmd.doc.name} (name it with --run-dir / --out there)")
        config = getattr(seg.args, "config", None) or ""
        if hasattr(seg.args, "set"):  # a YAML config of the repo with the overrides (a run directory: them alone)
            path = ROOT / config if config.endswith((".yaml", ".yml")) else None
            if path is None or path.is_file():
                try:
                    load_config(path, seg.args.set)
                except UserError as e:
                    problems.append(f"config: {e}")
    assert not problems, f"{cmd.id}: `{cmd.text}`:\n  " + "\n  ".join(problems)


def test_docs_have_commands():
    assert len(COMMANDS) >= 20, [c.id for c in COMMANDS]
    assert any(c.fast and not c.skip for c in COMMANDS), "no command runs in the default (fast) test run"


_LOOKS_LIKE_A_COMMAND = re.compile(r"^\s*(\$ |bigbatch |torchrun |python3? \S+\.py|make |pip install )")


def test_unmarked_blocks_hold_no_commands():
    """An unmarked block is output, not run: one that holds a command line needs a language tag (```bash) to be
    tested, or ```text to say it is output."""
    found = []
    for doc in DOCS:
        for lang, first, lines, _ in fenced_blocks(doc):
            if lang == "":
                found += [f"{doc.relative_to(ROOT)}:{first + k}: {x.strip()}" for k, x in enumerate(lines)
                          if _LOOKS_LIKE_A_COMMAND.match(x)]
    assert not found, "command lines in unmarked code blocks (give the block a language):\n" + "\n".join(found)


def test_harness_reads_shell_lines_as_bash_does():
    cmd = Command(ROOT / "README.md", 1, "FOO=1 bigbatch train --set 'train.max_steps=200' --run-dir runs/a "
                                        "2>err.txt && bigbatch eval runs/a | tail -1")
    analyse(cmd)
    assert [s.program for s in cmd.segments] == ["bigbatch", "bigbatch", "tail"]
    assert cmd.segments[0].argv == ["train", "--set", "train.max_steps=200", "--run-dir", "runs/a"]
    ran = speed_up(cmd)
    first, second = ran.split(" && ")
    assert first.startswith(f"FOO=1 bigbatch train --set train.max_steps={MAX_STEPS} --run-dir runs/a --set ")
    assert first.endswith(" --set data.seq_len=32 2>err.txt") and " --no-progress --set model.d_model=32 " in first
    assert second == "bigbatch eval runs/a --max-examples 100 | tail -1"
    assert list(block_commands("console", 10, ["$ bigbatch bench peak  # FLOP/s", "cpu fp32 ...", "$ ls \\",
                                                "> runs"])) == [(10, "bigbatch bench peak"), (12, "ls runs")]
    assert list(block_commands("bash", 5, ["# a comment", "bigbatch eval r \\", "   --split test   # why", ""])) \
        == [(6, "bigbatch eval r --split test")]
