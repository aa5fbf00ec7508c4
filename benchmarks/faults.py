"""Counted fault injection against the real command line; writes docs/reliability.md.

    python benchmarks/faults.py                                 # every category, default counts (~20 min, 2 CPUs)
    python benchmarks/faults.py --only crash,corrupt --kills 10  # a subset, other counts
    python benchmarks/faults.py --doc-only                      # rewrite the doc from the stored results

Categories: crash (SIGKILL of `bigbatch train` and of `bigbatch prepare` at seeded random moments, some inside
checkpoint writes), disk (ENOSPC in a checkpoint write: a small tmpfs where mount is allowed, and injected
at each file of the checkpoint), corrupt (flipped bits and truncation in shards and checkpoint files), numeric
(NaN in the loss or the gradient), dist (a rank of `--nproc 2` killed mid-step), and the hostile-input summary
of benchmarks/fuzz.py when benchmarks/out/fuzz.json exists.

Every trial runs `bigbatch` in a subprocess (tiny config, one thread, shard cache under benchmarks/out/faults);
in-process faults (injected ENOSPC, NaN) run this file as a driver (``--driver``) that patches one function and
calls bigbatch.cli.main. Results accumulate per category in benchmarks/out/faults/results.json, so a subset
rerun keeps the other categories' numbers in the doc.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import functools
import hashlib
import itertools
import json
import os
import platform
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # bigbatch from this tree, also in the --driver subprocesses
TINY = ROOT / "configs" / "tiny_lm.yaml"
OUT = ROOT / "benchmarks" / "out" / "faults"
WORK = OUT / "work"
DOC = ROOT / "docs" / "reliability.md"
FUZZ = ROOT / "benchmarks" / "out" / "fuzz.json"
CATEGORIES = ["crash", "prepare", "disk", "corrupt", "numeric", "dist"]
QUIET = ["train.eval_every=0", "train.sample_tokens=0", "train.log_every=1", "train.baseline=false"]
RUN60 = QUIET + ["train.max_steps=60", "train.save_every=5"]  # the crash / disk-full run
RUN15 = QUIET + ["train.max_steps=15", "train.save_every=5", "train.keep_last=5"]  # the corruption base
SHARD_TOKENS = "data.shard_tokens=200000"
CKPT_FILES = ["model.safetensors", "state/__0_0.distcp", "state/.metadata", "trainer.json", "checksums.json",
              "config.yaml"]
COMPARED = ("step", "tokens", "loss", "lr", "grad_norm")


# ---------------------------------------------------------------------------------------------- processes


def env() -> dict:
    return dict(os.environ, OMP_NUM_THREADS="1", BIGBATCH_CACHE=str(OUT / "cache"), TOKENIZERS_PARALLELISM="false")


def cli(*args) -> list[str]:
    return [sys.executable, "-m", "bigbatch", *map(str, args)]


def sets(overrides) -> list[str]:
    return [x for o in overrides for x in ("--set", o)]


def train_cmd(run_dir, overrides, nproc: int | None = None) -> list[str]:
    return cli("train", TINY, "--run-dir", run_dir, "--no-progress", *(["--nproc", nproc] if nproc else []),
               *sets(overrides))


def run(cmd, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=ROOT, env=env(), capture_output=True, text=True, timeout=timeout)


def spawn(cmd, log: Path) -> subprocess.Popen:
    """In its own session (so whatever it forks can be found and cleaned up), output to ``log``."""
    return subprocess.Popen(cmd, cwd=ROOT, env=env(), stdout=open(log, "w"), stderr=subprocess.STDOUT,
                            start_new_session=True)


def _stat(pid) -> list[str] | None:
    try:
        return open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def session_members(sid: int) -> list[int]:
    """Live processes of the session ``sid`` (one this script started)."""
    return [int(p) for p in os.listdir("/proc") if p.isdigit() and (s := _stat(p)) and int(s[3]) == sid and s[0] != "Z"]


def children(pid: int) -> list[int]:
    return sorted(int(p) for p in os.listdir("/proc") if p.isdigit() and (s := _stat(p)) and int(s[1]) == pid)


def reap_session(proc: subprocess.Popen, grace: float = 2.0) -> int:
    """After the main process died: how many of its forked processes outlived it by ``grace`` s; those are killed
    (by pid: they are this script's)."""
    deadline = time.time() + grace
    while (left := session_members(proc.pid)) and time.time() < deadline:
        time.sleep(0.05)
    for pid in left:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return len(left)


def after(delay: float, sign=lambda: True):
    """A ``ready`` for kill_when: true ``delay`` s after ``sign()`` first held (polled)."""
    seen = []

    def ready() -> bool:
        if not seen and sign():
            seen.append(time.monotonic())
        return bool(seen) and time.monotonic() - seen[0] >= delay

    return ready


def any_exists(*paths: Path) -> bool:
    return any(p.exists() for p in paths)


def has_rows(path: Path) -> bool:
    return path.exists() and path.stat().st_size > 0


def kill_when(proc: subprocess.Popen, ready, poll: float = 0.0005) -> bool:
    """SIGKILL ``proc`` as soon as ``ready()``; False when it ended first."""
    while proc.poll() is None:
        if ready():
            proc.kill()
            proc.wait()
            return True
        time.sleep(poll)
    return False


def clean_error(proc, code: int = 2) -> tuple[bool, str]:
    """(exit ``code``, no traceback, exactly one `bigbatch: ...` error line and it is the last), that line."""
    lines = [x for x in proc.stderr.strip().splitlines() if x.strip()]
    last = lines[-1] if lines else ""
    errors = [x for x in lines if x.startswith("bigbatch: error") or x.startswith("bigbatch: training stopped")]
    return (proc.returncode == code and "Traceback" not in proc.stderr and len(errors) == 1 and errors[0] == last,
            last)


def fresh(path: Path) -> Path:
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


# ---------------------------------------------------------------------------------------------- run directories


def train_rows(run_dir: Path) -> list[dict]:
    path = Path(run_dir) / "metrics.jsonl"
    rows = []
    for line in (path.read_text().splitlines() if path.exists() else []):
        with contextlib.suppress(ValueError):
            rows.append(json.loads(line))
    return [r for r in rows if "split" not in r]


def last_step(run_dir: Path) -> int:
    return max((r["step"] for r in train_rows(run_dir)), default=0)


def same_rows(a: list[dict], b: list[dict], after: int = 0) -> bool:
    pick = lambda rows: [tuple(r.get(k) for k in COMPARED) for r in rows if r["step"] > after]  # noqa: E731
    return pick(a) == pick(b)


def max_rel_diff(a: list[dict], b: list[dict], after: int = 0) -> float:
    ref = {r["step"]: r["loss"] for r in a}
    got = {r["step"]: r["loss"] for r in b if r["step"] > after}
    if set(got) != {s for s in ref if s > after}:
        return float("inf")
    return max((abs(got[s] - ref[s]) / abs(ref[s]) for s in got), default=0.0)


def weights_diff(a: Path, b: Path) -> float:
    """Largest absolute difference of two model.safetensors (inf when either is missing or the names differ)."""
    from safetensors.torch import load_file

    if not (a.exists() and b.exists()):
        return float("inf")
    x, y = load_file(str(a)), load_file(str(b))
    if x.keys() != y.keys():
        return float("inf")
    return max(float((x[k].double() - y[k].double()).abs().max()) for k in x)


def resumed_from(stderr: str) -> int:
    m = re.search(r"resuming .* from \S+ \(step (\d+),", stderr)
    return int(m.group(1)) if m else 0


def ckpt_ok(run_dir: Path, which: str = "latest") -> tuple[bool, str]:
    """The checkpoint ``which`` names verifies against its checksums and loads (bigbatch.load); its name."""
    import torch

    from bigbatch.errors import UserError
    from bigbatch.train.checkpoint import load_model, resolve_checkpoint

    try:
        ckpt = resolve_checkpoint(run_dir, which)
        model, _ = load_model(run_dir, checkpoint=which)  # verifies every file first
    except (UserError, OSError) as e:
        return False, str(e)
    return all(bool(torch.isfinite(p).all()) for p in model.parameters()), ckpt.name


def reference(name: str, overrides, nproc: int | None = None) -> Path:
    """An uninterrupted run (made once, kept under benchmarks/out/faults/work)."""
    ref = WORK / f"ref-{name}"
    if (ref / "summary.json").exists():
        return ref
    fresh(ref)
    proc = run(train_cmd(ref, overrides, nproc))
    if proc.returncode != 0:
        raise SystemExit(f"reference run {name} failed:\n{proc.stderr[-3000:]}")
    return ref


def timed(cmd, log: Path, first_sign, last_sign=lambda: False) -> dict:
    """Run ``cmd`` uninterrupted: seconds after its start when ``first_sign()`` and ``last_sign()`` first held, and
    when it ended."""
    t0, first, last = time.monotonic(), None, None
    proc = spawn(cmd, log)
    while proc.poll() is None:
        if first is None and first_sign():
            first = time.monotonic() - t0
        if last is None and last_sign():
            last = time.monotonic() - t0
        time.sleep(0.002)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{log.read_text()[-3000:]}")
    end = time.monotonic() - t0
    first = first if first is not None else end / 2
    return {"first": first, "last": last if last is not None else end, "end": end}


def names(pointer: Path, value: str) -> bool:
    try:
        return pointer.read_text().strip() == value
    except OSError:
        return False


# ---------------------------------------------------------------------------------------------- 1. crash


def cat_crash(args, rng) -> dict:
    """SIGKILL `bigbatch train` (60 steps, a checkpoint every 5) at random moments, then resume."""
    ref = WORK / "ref-crash-timed"
    times = json.loads((ref / "times.json").read_text()) if (ref / "times.json").exists() else {}
    if "last" not in times:
        run(train_cmd(fresh(WORK / "warm"), QUIET + ["train.max_steps=1"]))  # the shard cache, outside the timing
        fresh(ref)
        times = timed(train_cmd(ref, RUN60), WORK / "ref.log", functools.partial(has_rows, ref / "metrics.jsonl"),
                      functools.partial(names, ref / "checkpoints" / "latest", "step_00000060"))
        (ref / "times.json").write_text(json.dumps(times))
    ref_rows, ref_w = train_rows(ref), ref / "checkpoints" / "step_00000060" / "model.safetensors"
    n_any, n_ckpt = round(args.kills * 0.2), round(args.kills * 0.3)
    kinds = ["any"] * n_any + ["checkpoint"] * n_ckpt + ["training"] * (args.kills - n_any - n_ckpt)
    rng.shuffle(kinds)
    rows = []
    for i, kind in enumerate(kinds):
        for attempt in range(1, 6):
            run_dir = fresh(WORK / f"crash-{i}")
            ckdir = run_dir / "checkpoints"
            if kind == "any":  # from the start, start-up included
                ready = after(rng.uniform(0, times["end"]))
            elif kind == "training":  # from the first metrics row, until the last checkpoint
                ready = after(rng.uniform(0, times["last"] - times["first"]),
                              functools.partial(has_rows, run_dir / "metrics.jsonl"))
            else:  # inside the write of checkpoint k: from the moment its temporary directory appears
                ready = after(rng.uniform(0, 0.01), (ckdir / f".tmp-step_{rng.randrange(5, 61, 5):08d}").exists)
            proc, t0 = spawn(train_cmd(run_dir, RUN60), WORK / f"crash-{i}-{attempt}.log"), time.monotonic()
            if kill_when(proc, ready):
                break
            reap_session(proc)
        else:
            rows.append({"i": i, "kind": kind, "landed": False})
            continue
        killed_at = time.monotonic() - t0
        orphans = reap_session(proc)
        trained = last_step(run_dir)
        in_write = sorted(p.name for p in ckdir.glob(".tmp-step_*")) if ckdir.is_dir() else []
        complete = sorted(p.name for p in ckdir.glob("step_*")) if ckdir.is_dir() else []
        latest = (ckdir / "latest").read_text().strip() if (ckdir / "latest").exists() else None
        resume = run(train_cmd(run_dir, RUN60))
        start = resumed_from(resume.stderr)
        exact = resume.returncode == 0 and same_rows(ref_rows, train_rows(run_dir)) and \
            weights_diff(ref_w, ckdir / "step_00000060" / "model.safetensors") == 0.0
        row = {"i": i, "kind": kind, "landed": True, "attempts": attempt, "killed_at_s": round(killed_at, 3),
               "trained": trained, "in_write": in_write, "latest_lags": bool(complete and latest != complete[-1]),
               "resumed_ok": resume.returncode == 0, "resumed_from": start, "lost": trained - start,
               "exact": exact, "orphans": orphans,
               "notes": [x for x in resume.stderr.splitlines() if x.startswith("note:")][:2]}
        if resume.returncode != 0:
            row["error"] = resume.stderr.strip().splitlines()[-1:] if resume.stderr.strip() else []
        rows.append(row)
        print(f"  crash {i + 1}/{len(kinds)} [{kind}] killed at {killed_at:.2f}s after step {trained}"
              f"{' inside ' + in_write[0] if in_write else ''}; resumed from {start}: "
              f"{'exact' if exact else 'NOT EXACT ' + str(row.get('error', ''))}", flush=True)
        if exact:
            shutil.rmtree(run_dir, ignore_errors=True)
    landed = [r for r in rows if r["landed"]]
    return {"rows": rows, "save_every": 5, "max_steps": 60, "reference_s": round(times["end"], 2), "summary": {
        "kills": len(landed), "inside_checkpoint_write": sum(bool(r["in_write"]) for r in landed),
        "resumed": sum(r["resumed_ok"] for r in landed), "exact": sum(r["exact"] for r in landed),
        "lost_max": max((r["lost"] for r in landed), default=0),
        "lost_mean": round(sum(r["lost"] for r in landed) / max(len(landed), 1), 2),
        "orphans": sum(r["orphans"] for r in landed)}}


# ---------------------------------------------------------------------------------------------- 1b. prepare


def make_source(path: Path, mb: float = 4.0) -> Path:
    """A seeded synthetic JSONL corpus (Zipf-distributed made-up words), the same on every machine."""
    if path.exists():
        return path
    r = random.Random(1234)
    vocab = ["".join(r.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(r.randint(2, 9))) for _ in range(5000)]
    weights = [1 / (i + 1) for i in range(len(vocab))]
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".tmp"), "w") as f:
        while f.tell() < mb * 1e6:
            f.write(json.dumps({"text": " ".join(r.choices(vocab, weights, k=r.randint(10, 80))) + "."}) + "\n")
    os.replace(path.with_suffix(".tmp"), path)
    return path


PREPARE_SETUPS = {"byte, 2 workers": ["--workers", 2], "byte, 1 worker": ["--workers", 1],
                  "bpe, 2 workers": ["--workers", 2, "--tokenizer", "bpe", "--set", "data.vocab_size=2000"]}


def prepare_cmd(src: Path, out: Path, setup: str) -> list[str]:
    return cli("prepare", "--source", src, "--out", out, *PREPARE_SETUPS[setup], "--set", SHARD_TOKENS)


def shards_of(out: Path) -> dict:
    m = json.loads((out / "manifest.json").read_text())
    tok = (out / "tokenizer.json").read_bytes() if (out / "tokenizer.json").exists() else b""
    return {"splits": m["splits"], "fingerprint": m["fingerprint"], "tokenizer": hashlib.sha256(tok).hexdigest()}


def cat_prepare(args, rng) -> dict:
    """SIGKILL `bigbatch prepare` at random moments; rerunning it must give the uninterrupted run's shards."""
    from bigbatch.data.shards import verify_shards
    from bigbatch.errors import UserError

    src = make_source(OUT / "prepare-source.jsonl")
    refs, times = {}, {}
    for setup in PREPARE_SETUPS:
        out = WORK / f"ref-prepare-{setup.replace(', ', '-').replace(' ', '')}"
        shutil.rmtree(out, ignore_errors=True)
        times[setup] = timed(prepare_cmd(src, out, setup), WORK / "ref-prepare.log", out.exists,
                             (out / "manifest.json").exists)
        refs[setup] = shards_of(out)
    setups = [list(PREPARE_SETUPS)[i % len(PREPARE_SETUPS)] for i in range(args.prepare_kills)]
    moments = {"byte, 2 workers": itertools.cycle(["working", "working", "any"]),
               "byte, 1 worker": itertools.cycle(["working", "any", "working"]),
               "bpe, 2 workers": itertools.cycle(["tokenizer", "working", "tokenizer", "any"])}
    rows = []
    for i, setup in enumerate(setups):
        kind = next(moments[setup])
        for attempt in range(1, 6):
            out = WORK / f"prepare-{i}"
            shutil.rmtree(out, ignore_errors=True)
            if kind == "any":  # from the start, start-up included
                ready = after(rng.uniform(0, times[setup]["end"]))
            elif kind == "tokenizer":  # the moment the trained tokenizer's file appears (or its temporary file)
                ready = after(0, functools.partial(any_exists, out / "tokenizer.json",
                                                   out / ".tokenizer.tmp" / "tokenizer.json"))
            else:  # from the moment the output directory appears until the manifest would
                ready = after(rng.uniform(0, times[setup]["last"] - times[setup]["first"]), out.exists)
            proc, t0 = spawn(prepare_cmd(src, out, setup), WORK / f"prepare-{i}-{attempt}.log"), time.monotonic()
            if kill_when(proc, ready):
                break
            reap_session(proc)
        else:
            rows.append({"i": i, "setup": setup, "kind": kind, "landed": False})
            continue
        killed_at, orphans = time.monotonic() - t0, reap_session(proc)
        progress = json.loads((out / "progress.json").read_text()) if (out / "progress.json").exists() else {}
        done_chunks = sum(s.get("chunks", 0) for s in progress.get("streams", {}).values())
        again = run(prepare_cmd(src, out, setup))
        same, verified = False, False
        if again.returncode == 0:
            same = shards_of(out) == refs[setup]
            with contextlib.suppress(UserError):
                verified = verify_shards(out) > 0
        row = {"i": i, "setup": setup, "kind": kind, "landed": True, "attempts": attempt,
               "killed_at_s": round(killed_at, 3), "chunks_done_before_kill": done_chunks, "orphans": orphans,
               "rerun_ok": again.returncode == 0, "identical": same, "verified": verified}
        if again.returncode != 0:
            row["error"] = again.stderr.strip().splitlines()[-1:]
        rows.append(row)
        print(f"  prepare {i + 1}/{len(setups)} [{setup}, {kind}] killed at {killed_at:.2f}s ({done_chunks} chunks "
              f"done, {orphans} orphaned workers); rerun: "
              f"{'identical' if same and verified else 'DIFFERENT ' + str(row.get('error', ''))}", flush=True)
        if same and verified:
            shutil.rmtree(out, ignore_errors=True)
    landed = [r for r in rows if r["landed"]]
    return {"rows": rows, "summary": {
        "kills": len(landed), "rerun_ok": sum(r["rerun_ok"] for r in landed),
        "identical": sum(r["identical"] and r["verified"] for r in landed),
        "after_some_shards": sum(r["chunks_done_before_kill"] > 0 for r in landed),
        "orphans": sum(r["orphans"] for r in landed)}}


# ---------------------------------------------------------------------------------------------- 2. disk full


def can_mount(path: Path) -> str | None:
    """None when a tmpfs mounts at ``path`` (then unmounted), else why not."""
    path.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(path)], capture_output=True, text=True)
    if proc.returncode != 0:
        return (proc.stderr.strip() or f"mount exit {proc.returncode}").splitlines()[0]
    subprocess.run(["umount", str(path)], check=True)
    return None


def disk_trial(run_dir: Path, cmd, ref: Path, remount=None) -> dict:
    """Run ``cmd`` (expected to hit a full disk at a checkpoint); check the stop, the previous checkpoint and the
    resume after the space comes back (``remount``)."""
    proc = run(cmd)
    clean, line = clean_error(proc)
    ckdir = run_dir / "checkpoints"
    m = re.search(r"checkpoints/(step_\d+): no space left", line)
    leftovers = sorted(p.name for p in ckdir.glob(".tmp-step_*"))
    previous_ok, previous = ckpt_ok(run_dir) if (ckdir / "latest").exists() else (True, None)
    trained = last_step(run_dir)
    if remount:
        remount()
    resume = run(train_cmd(run_dir, RUN60))
    start = resumed_from(resume.stderr)
    exact = resume.returncode == 0 and same_rows(train_rows(ref), train_rows(run_dir)) and weights_diff(
        ref / "checkpoints" / "step_00000060" / "model.safetensors",
        ckdir / "step_00000060" / "model.safetensors") == 0.0
    return {"exit": proc.returncode, "clean": clean, "message": line[:400], "failed_at": m.group(1) if m else None,
            "names_size": bool(re.search(r"needs (about|more than the) [\d.]+ MB", line)), "tmp_left": leftovers,
            "previous": previous, "previous_loads": previous_ok, "trained": trained, "resumed_from": start,
            "lost": trained - start, "resumed_exact": exact,
            "cause": "unexpected pos (torch.save zip writer)" if "unexpected pos" in line else
            "safetensors (os error 28)" if "os error 28" in line else "OSError ENOSPC" if "Errno 28" in line else "?"}


def cat_disk(args, rng) -> dict:
    ref = reference("60", RUN60)
    ckpt_bytes = sum(p.stat().st_size for p in (ref / "checkpoints" / "step_00000060").rglob("*") if p.is_file())
    rows, why_not = [], can_mount(WORK / "mount-probe")
    if why_not is None:
        fractions = [0.6] + [1.15 + (3.7 * k / max(args.disk_sizes - 2, 1)) for k in range(args.disk_sizes - 1)]
        for k, f in enumerate(fractions[: args.disk_sizes]):
            run_dir = fresh(WORK / f"disk-tmpfs-{k}")
            ckdir, size_k = run_dir / "checkpoints", int(ckpt_bytes * f / 1024 / 4 + 1) * 4
            ckdir.mkdir()
            subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_k}k", "tmpfs", str(ckdir)], check=True)
            try:
                row = disk_trial(run_dir, train_cmd(run_dir, RUN60 + ["train.keep_last=100"]), ref, remount=functools.partial(
                    subprocess.run, ["mount", "-o", "remount,size=64m", str(ckdir)], check=True))
            finally:
                subprocess.run(["umount", str(ckdir)])
            rows.append({"how": f"tmpfs of {size_k} KB ({f:.2f} checkpoints)", **row})
            print(f"  disk tmpfs {size_k} KB: exit {row['exit']} at {row['failed_at']} ({row['cause']}); previous "
                  f"{row['previous']} loads: {row['previous_loads']}; resume exact: {row['resumed_exact']}", flush=True)
    for where in ["dcp", "safetensors", "trainer.json", "checksums.json", "latest"]:
        run_dir = fresh(WORK / f"disk-inject-{where.replace('.', '-')}")
        cmd = [sys.executable, __file__, "--driver", "enospc", "--where", where, "--at-step", "15", "--",
               *train_cmd(run_dir, RUN60)[3:]]
        row = disk_trial(run_dir, cmd, ref)
        rows.append({"how": f"injected ENOSPC: {where}", **row})
        print(f"  disk injected at {where}: exit {row['exit']} clean {row['clean']}; previous {row['previous']} "
              f"loads: {row['previous_loads']}; resume exact: {row['resumed_exact']}", flush=True)
    ok = lambda r: r["clean"] and r["names_size"] and r["failed_at"] and not r["tmp_left"] and r["previous_loads"]  # noqa
    return {"rows": rows, "tmpfs": why_not or "mounted", "checkpoint_bytes": ckpt_bytes, "summary": {
        "trials": len(rows), "clean_stop": sum(bool(ok(r)) for r in rows),
        "resumed_exact": sum(r["resumed_exact"] for r in rows), "lost_max": max((r["lost"] for r in rows), default=0)}}


def driver_enospc(where: str, at_step: int, argv: list[str]) -> int:
    """`bigbatch` with one write of checkpoint ``at_step`` failing with ENOSPC after part of its bytes landed."""
    import errno
    import pathlib

    import safetensors
    from torch.distributed.checkpoint import filesystem

    from bigbatch import cli
    from bigbatch.train import checkpoint

    tag = f"step_{at_step:08d}"

    def no_space(path):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    if where == "dcp":
        real_stream = filesystem.FileSystem.create_stream

        @contextlib.contextmanager
        def create_stream(self, path, mode):
            with real_stream(self, path, mode) as stream:
                if tag in str(path) and "w" in mode:
                    stream.write(b"\0" * 4096)
                    no_space(path)
                yield stream

        filesystem.FileSystem.create_stream = create_stream
    elif where == "safetensors":
        real_save = checkpoint.st_save_model

        def st_save_model(model, filename, *a, **kw):
            if tag in str(filename):
                pathlib.Path(filename).write_bytes(b"\0" * 4096)
                raise safetensors.SafetensorError("Error while serializing: I/O error: No space left on device "
                                                  "(os error 28)")
            return real_save(model, filename, *a, **kw)

        checkpoint.st_save_model = st_save_model
    else:
        real_write = pathlib.Path.write_text

        def write_text(self, data, *a, **kw):
            hit = (tag in str(self) and self.name == where) if where != "latest" else \
                (self.name.startswith(".latest.tmp") and tag in data)
            if hit:
                real_write(self, data[: len(data) // 2], *a, **kw)
                no_space(self)
            return real_write(self, data, *a, **kw)

        pathlib.Path.write_text = write_text
    return cli.main(argv)


# ---------------------------------------------------------------------------------------------- 3. corruption


def damage(path: Path, mode: str, rng) -> str:
    """Flip one bit (same size) or truncate; returns what was done."""
    data = bytearray(path.read_bytes())
    if mode == "flip":
        at, bit = rng.randrange(len(data)), rng.randrange(8)
        data[at] ^= 1 << bit
        path.write_bytes(bytes(data))
        return f"bit {bit} of byte {at}/{len(data)}"
    keep = rng.randrange(len(data))
    path.write_bytes(bytes(data[:keep]))
    return f"truncated to {keep}/{len(data)} bytes"


def cat_corrupt(args, rng) -> dict:
    ref = reference("15", RUN15)
    ref_rows, ref_w = train_rows(ref), ref / "checkpoints" / "step_00000015" / "model.safetensors"
    modes = ["flip"] * args.flips + ["truncate"] * args.truncs
    rows = []
    for name in CKPT_FILES:
        for j, mode in enumerate(modes):
            run_dir = WORK / f"corrupt-{name.replace('/', '-')}-{j}"
            shutil.rmtree(run_dir, ignore_errors=True)
            shutil.copytree(ref, run_dir)
            did = damage(run_dir / "checkpoints" / "step_00000015" / name, mode, rng)
            load = run(cli("generate", run_dir, "--checkpoint", "latest", "--prompt", "x", "--max-new-tokens", 1))
            load_clean, load_line = clean_error(load)
            resume = run(train_cmd(run_dir, RUN15))
            note = next((x for x in resume.stderr.splitlines() if x.startswith("note: resuming from")), "")
            fell_back = resume.returncode == 0 and resumed_from(resume.stderr) == 10 and "step_00000010" in note
            exact = fell_back and same_rows(ref_rows, train_rows(run_dir)) and weights_diff(
                ref_w, run_dir / "checkpoints" / "step_00000015" / "model.safetensors") == 0.0
            where = f"step_00000015/{name}"
            row = {"file": name, "mode": mode, "damage": did, "load_clean": load_clean,
                   "load_names_file": where in load_line, "load_message": load_line[:300], "fell_back": fell_back,
                   "note_names_file": where in note, "note": note[:300], "resumed_exact": exact,
                   "silent": load.returncode == 0 or (resume.returncode == 0 and not fell_back)}
            rows.append(row)
            print(f"  corrupt {name} ({did}): load exit {load.returncode} clean {load_clean} named "
                  f"{row['load_names_file']}; resume fell back {fell_back} exact {exact}", flush=True)
            if exact and load_clean:
                shutil.rmtree(run_dir, ignore_errors=True)
    return {"rows": rows, "shards": shard_corruption(args, rng), "summary": {
        "tried": len(rows), "detected_named": sum(r["load_clean"] and r["load_names_file"] for r in rows),
        "detected": sum(r["load_clean"] for r in rows), "fell_back_exact": sum(r["resumed_exact"] for r in rows),
        "silent": sum(r["silent"] for r in rows)}}


def shard_corruption(args, rng) -> dict:
    """Truncation of a shard file must stop training at open naming it; a same-size flip is for --verify."""
    src = make_source(OUT / "prepare-source.jsonl")
    base = WORK / "shard-base"
    data = [f"data.source={src}", SHARD_TOKENS]
    if not (base / "manifest.json").exists():
        shutil.rmtree(base, ignore_errors=True)
        proc = run(cli("prepare", TINY, "--out", base, *sets(data)))
        if proc.returncode:
            raise SystemExit(proc.stderr[-2000:])
    rows = []
    for name in ["train/main-00000.bin", "train/main-00000.idx.npy"]:
        for j, mode in enumerate(["flip"] * args.flips + ["truncate"] * args.truncs):
            shards = WORK / f"shards-{j}"
            shutil.rmtree(shards, ignore_errors=True)
            shutil.copytree(base, shards)
            did = damage(shards / name, mode, rng)
            opened = run(train_cmd(fresh(WORK / "shard-run"), QUIET + data + [
                f"data.shard_dir={shards}", "train.max_steps=6", "train.save_every=0"]))
            verify = run(cli("prepare", TINY, "--out", shards, "--verify", *sets(data)))
            open_clean, open_line = clean_error(opened)
            verify_clean, verify_line = clean_error(verify)
            where = f"{shards.name}/{name}"
            row = {"file": name, "mode": mode, "damage": did, "open_detected": open_clean and where in open_line,
                   "open_message": open_line[:300], "verify_detected": verify_clean and where in verify_line,
                   "verify_message": verify_line[:300], "reprepared": "preparing again" in opened.stderr}
            row["silent"] = not row["verify_detected"] or (mode == "truncate" and not row["open_detected"])
            rows.append(row)
            print(f"  corrupt shard {name} ({did}): at open {'detected' if row['open_detected'] else 'not seen'}, "
                  f"--verify {'detected' if row['verify_detected'] else 'MISSED'}", flush=True)
    return {"rows": rows, "summary": {
        "tried": len(rows), "truncations": sum(r["mode"] == "truncate" for r in rows),
        "truncations_at_open": sum(r["mode"] == "truncate" and r["open_detected"] for r in rows),
        "flips": sum(r["mode"] == "flip" for r in rows),
        "flips_at_open": sum(r["mode"] == "flip" and r["open_detected"] for r in rows),
        "verify_detected": sum(r["verify_detected"] for r in rows), "silent": sum(r["silent"] for r in rows)}}


# ---------------------------------------------------------------------------------------------- 4. numeric


def driver_nan(steps: list[int], kind: str, record: str | None, argv: list[str]) -> int:
    """`bigbatch` with the LM objective's loss (forward) or its gradient (backward only) made NaN at ``steps``
    (1-based); the first such batch's input_ids saved to ``record``. Call 1 is the start-up probe, call s+1 step s
    (as in tests/test_train_cli.py::test_non_finite_steps_are_skipped_then_stop)."""
    import numpy as np
    import torch

    from bigbatch import cli, objectives

    class NanGradient(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            return x.clone()

        @staticmethod
        def backward(ctx, grad):
            return grad * float("nan")

    real, calls = objectives.OBJECTIVES["lm"], {"n": 0}

    def faulty(model, batch, **kw):
        calls["n"] += 1
        loss_sum, n, logs = real(model, batch, **kw)
        step = calls["n"] - 1
        if step in steps:
            if record and step == steps[0]:
                np.save(record, batch["input_ids"].cpu().numpy())
            loss_sum = loss_sum * float("nan") if kind == "loss" else NanGradient.apply(loss_sum)
        return loss_sum, n, logs

    objectives.OBJECTIVES["lm"] = faulty
    return cli.main(argv)


def named_rows(data: list[str]) -> list[list[int]]:
    """The token rows a skipped step's "data" entries name ("PATH tokens A..B")."""
    import numpy as np

    out = []
    for where in data:
        path, span = where.split(" tokens ")
        a, b = map(int, span.split(".."))
        dtype = json.loads((Path(path).parent.parent / "manifest.json").read_text())["dtype"]
        out.append(np.fromfile(path, dtype=dtype)[a : b + 1].tolist())
    return out


def cat_numeric(args, rng) -> dict:
    import numpy as np

    rows = []
    plans = [("loss", 1)] * args.nan_trials + [("grad", 1)] * args.nan_trials + [("loss", 5)] * args.stop_trials
    firsts = [rng.choice(range(7, 51)) for _ in plans] if len(plans) > 44 else rng.sample(range(7, 51), len(plans))
    for i, ((kind, streak), first) in enumerate(zip(plans, firsts)):
        run_dir = fresh(WORK / f"numeric-{i}")
        steps = list(range(first, first + streak))
        record = run_dir.parent / f"numeric-{i}.npy"
        cmd = [sys.executable, __file__, "--driver", "nan", "--kind", kind, "--steps", ",".join(map(str, steps)),
               "--record", str(record), "--", *train_cmd(run_dir, RUN60)[3:]]
        proc = run(cmd)
        all_rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
        skipped = [r for r in all_rows if r.get("skipped")]
        printed = [x for x in proc.stderr.splitlines() if "not finite, update skipped" in x]
        data_ok = bool(skipped) and all(len(r.get("data") or []) == 8 for r in skipped)
        if data_ok and record.exists():
            data_ok = sorted(named_rows(skipped[0]["data"])) == sorted(np.load(record).tolist())
        row = {"kind": kind, "nan_steps": steps, "exit": proc.returncode,
               "skipped_logged": [r["step"] for r in skipped] == steps,
               "stderr_names_step_and_data": len(printed) == streak and all(
                   f"step {s}:" in x and ".bin tokens " in x for s, x in zip(steps, printed)),
               "data_is_the_batch": data_ok}
        if streak == 1:
            row["survived"] = proc.returncode == 0 and last_step(run_dir) == 60 and ckpt_ok(run_dir)[0]
        else:
            clean, line = clean_error(proc, code=1)
            good, name = ckpt_ok(run_dir)
            at = int(name.split("_")[1]) if good else None
            again = run(train_cmd(run_dir, RUN60))  # the fault was transient: the run goes on from there
            row.update({"clean_stop": clean and "not finite for 5 steps" in line, "message": line[:300],
                        "checkpoint_loads": good, "checkpoint": name, "checkpoint_step": at,
                        "resumed": again.returncode == 0 and resumed_from(again.stderr) == at})
            row["survived"] = row["clean_stop"] and good and row["resumed"]
        row["survived"] = row["survived"] and row["skipped_logged"] and row["stderr_names_step_and_data"] and data_ok
        rows.append(row)
        print(f"  numeric {i + 1}/{len(plans)}: NaN {kind} at steps {steps}: exit {proc.returncode}, "
              f"{'ok' if row['survived'] else 'FAILED ' + json.dumps(row)}", flush=True)
        if row["survived"]:
            shutil.rmtree(run_dir, ignore_errors=True)
    return {"rows": rows, "summary": {"trials": len(rows), "survived": sum(r["survived"] for r in rows),
                                      "single": sum(len(r["nan_steps"]) == 1 for r in rows),
                                      "streaks": sum(len(r["nan_steps"]) > 1 for r in rows)}}


# ---------------------------------------------------------------------------------------------- 5. distributed


def cat_dist(args, rng) -> dict:
    overrides = QUIET + ["train.max_steps=30", "train.save_every=5", "train.dist_timeout_s=60"]
    ref = reference("dist2", overrides, nproc=2)
    ref_rows, ref_w = train_rows(ref), ref / "checkpoints" / "step_00000030" / "model.safetensors"
    rows, first_rank = [], rng.randrange(2)
    for i in range(args.dist_trials):
        run_dir = fresh(WORK / f"dist-{i}")
        at, victim_rank = rng.randint(6, 25), (i + first_rank) % 2  # both ranks get killed
        log = WORK / f"dist-{i}.log"
        proc = spawn(train_cmd(run_dir, overrides, nproc=2), log)
        ranks = {}
        while proc.poll() is None and last_step(run_dir) < at:
            time.sleep(0.01)
        for pid in children(proc.pid):  # torchrun's children: the ranks
            with contextlib.suppress(OSError):
                environ = dict(x.split("=", 1) for x in open(f"/proc/{pid}/environ").read().split("\0") if "=" in x)
                ranks[int(environ["RANK"])] = pid
        if proc.poll() is not None or victim_rank not in ranks:
            rows.append({"landed": False, "why": f"ranks found: {ranks}"})
            reap_session(proc, 0)
            continue
        trained = last_step(run_dir)
        os.kill(ranks[victim_rank], signal.SIGKILL)
        t_kill = time.monotonic()
        try:
            proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        ended_s = time.monotonic() - t_kill
        orphans = reap_session(proc)
        out = log.read_text()
        named = f"rank      : {victim_rank}" in out and "Signal 9 (SIGKILL)" in out
        one = WORK / f"dist-{i}-one"
        shutil.rmtree(one, ignore_errors=True)
        shutil.copytree(run_dir, one)
        two = run(train_cmd(run_dir, overrides, nproc=2))
        solo = run(train_cmd(one, overrides))
        start2, start1 = resumed_from(two.stderr), resumed_from(solo.stderr)
        row = {"landed": True, "killed_rank": victim_rank, "after_step": trained, "exit": proc.returncode,
               "ended_s": round(ended_s, 2), "rank_named": named, "orphans": orphans,
               "resumed_2": two.returncode == 0, "from_2": start2,
               "exact_2": two.returncode == 0 and same_rows(ref_rows, train_rows(run_dir)),
               "rel_2": max_rel_diff(ref_rows, train_rows(run_dir), start2),
               "weights_2": weights_diff(ref_w, run_dir / "checkpoints" / "step_00000030" / "model.safetensors"),
               "resumed_1": solo.returncode == 0, "from_1": start1,
               "rel_1": max_rel_diff(ref_rows, train_rows(one), start1),
               "weights_1": weights_diff(ref_w, one / "checkpoints" / "step_00000030" / "model.safetensors")}
        row["survived"] = (proc.returncode != 0 and ended_s < 60 and named and row["resumed_2"] and row["resumed_1"]
                           and row["rel_2"] <= 1e-6 and row["rel_1"] <= 1e-4)
        rows.append(row)
        print(f"  dist {i + 1}/{args.dist_trials}: rank {victim_rank} killed after step {trained}; job ended in "
              f"{ended_s:.1f}s, rank named {named}; resumed on 2 from {start2} (max rel diff {row['rel_2']:.1e}), "
              f"on 1 from {start1} ({row['rel_1']:.1e})", flush=True)
        if row["survived"]:
            shutil.rmtree(run_dir, ignore_errors=True)
            shutil.rmtree(one, ignore_errors=True)
    landed = [r for r in rows if r["landed"]]
    return {"rows": rows, "dist_timeout_s": 60, "summary": {
        "kills": len(landed), "ended_in_time_named": sum(r["ended_s"] < 60 and r["rank_named"] for r in landed),
        "resumed_2": sum(r["resumed_2"] and r["rel_2"] <= 1e-6 for r in landed),
        "exact_2": sum(r["exact_2"] for r in landed),
        "resumed_1": sum(r["resumed_1"] and r["rel_1"] <= 1e-4 for r in landed),
        "survived": sum(r["survived"] for r in landed)}}


# ---------------------------------------------------------------------------------------------- the document


def machine() -> str:
    import torch

    cpu = next((x.split(":", 1)[1].strip() for x in open("/proc/cpuinfo") if x.startswith("model name")), "?") \
        if os.path.exists("/proc/cpuinfo") else platform.processor()
    return (f"{cpu}, {len(os.sched_getaffinity(0))} CPU(s) usable, {platform.system()} {platform.release()}, "
            f"Python {platform.python_version()}, torch {torch.__version__}")


def fuzz_table() -> list[str]:
    if not FUZZ.exists():
        return ["Not measured in this document: `python benchmarks/fuzz.py` writes `benchmarks/out/fuzz.json`; run it, "
                "then `python benchmarks/faults.py --doc-only` to include its table here."]
    data = json.loads(FUZZ.read_text())
    rows = data if isinstance(data, list) else next(
        (v for v in data.values() if isinstance(v, list) and v and isinstance(v[0], dict) and "category" in v[0]),
        [{"category": k, **v} for k, v in data.items() if isinstance(v, dict)])
    count = lambda v: len(v) if isinstance(v, list) else v  # noqa: E731
    lines = [f"From `{FUZZ.relative_to(ROOT)}` (written by `python benchmarks/fuzz.py`"
             + (f", {data['date']}" if isinstance(data, dict) and "date" in data else "") + "):", "",
             "| category | cases | ok | clean error | failures |", "|---|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r.get('category', '?')} | {count(r.get('cases', ''))} | {count(r.get('ok', ''))} | "
                     f"{count(r.get('clean_error', ''))} | {count(r.get('failures', ''))} |")
    bad = [(r.get("category"), f) for r in rows if isinstance(r.get("failures"), list) for f in r["failures"][:3]]
    if bad:
        lines += ["", "Failures (first few):", ""] + [f"- {c}: `{str(f)[:200]}`" for c, f in bad]
    return lines


def render(results: dict) -> str:
    def when(cat):
        r = results.get(cat)
        return f" (run {r['date']}, {r['seconds']:.0f} s)" if r else ""

    L = ["# Reliability: counted fault injection", "",
         "Generated by `python benchmarks/faults.py` (this page is its output; edit the script, not the page). "
         "Each fault is applied to the real command line in a subprocess with the tiny config "
         "(`configs/tiny_lm.yaml`, one thread); the numbers below are counts of trials, not claims.", "",
         f"- command: `{results.get('_command', 'python benchmarks/faults.py').strip()}` (categories took "
         f"{sum(r['seconds'] for k, r in results.items() if not k.startswith('_')) / 60:.1f} min in all)",
         f"- written: {results.get('_date', '?')}",
         f"- machine: {results.get('_machine', '?')}", "",
         "## Summary", "",
         "| category | faults tried | survived | data lost |", "|---|---:|---:|---|"]
    c = results.get("crash", {}).get("summary")
    if c:
        L.append(f"| crash: SIGKILL of `bigbatch train` | {c['kills']} | {c['exact']} resumed exactly | at most "
                 f"{c['lost_max']} steps recomputed (mean {c['lost_mean']}; checkpoint every 5); no checkpoint lost |")
    p = results.get("prepare", {}).get("summary")
    if p:
        L.append(f"| crash: SIGKILL of `bigbatch prepare` | {p['kills']} | {p['identical']} identical shards on rerun "
                 f"| {p['kills'] - p['identical']} runs with differing shards |")
    d = results.get("disk", {}).get("summary")
    if d:
        L.append(f"| disk full at a checkpoint write | {d['trials']} | {d['clean_stop']} clean stops, "
                 f"{d['resumed_exact']} exact resumes | at most {d['lost_max']} steps since the last checkpoint |")
    k = results.get("corrupt", {})
    if k:
        s, h = k["summary"], k["shards"]["summary"]
        L.append(f"| corruption of checkpoint files | {s['tried']} | {s['detected']} detected ({s['detected_named']} "
                 f"naming the damaged file); {s['fell_back_exact']} resumes fell back exactly | {s['silent']} "
                 "silent-wrong |")
        L.append(f"| corruption of shard files | {h['tried']} | {h['verify_detected']} detected by `prepare --verify`, "
                 f"{h['truncations_at_open']}/{h['truncations']} truncations at open | {h['silent']} silent-wrong |")
    n = results.get("numeric", {}).get("summary")
    if n:
        L.append(f"| NaN in loss / gradient | {n['trials']} | {n['survived']} | none (skipped steps are logged with "
                 "their data) |")
    t = results.get("dist", {}).get("summary")
    if t:
        L.append(f"| a rank killed (2 processes) | {t['kills']} | {t['survived']} | steps since the last checkpoint |")
    L += ["", "A category without a row has not been run yet: `python benchmarks/faults.py --only CATEGORY`.", ""]
    L += crash_section(results, when) + disk_section(results, when) + corrupt_section(results, when)
    L += numeric_section(results, when) + dist_section(results, when)
    L += ["## 6. Hostile input", ""] + fuzz_table() + ["", TRUST_MODEL]
    return "\n".join(L) + "\n"


def crash_section(results, when) -> list[str]:
    L = []
    c = results.get("crash")
    if c:
        s, rows = c["summary"], [r for r in c["rows"] if r["landed"]]
        by = lambda kind: [r for r in rows if r["kind"] == kind]  # noqa: E731
        L += [f"## 1. Crash at any moment{when('crash')}", "",
              f"`bigbatch train configs/tiny_lm.yaml` (max_steps {c['max_steps']}, save_every {c['save_every']}, "
              f"keep_last 2; {c['reference_s']} s uninterrupted) killed with SIGKILL at seeded random moments, then "
              "resumed with the same command. *Exact* means every metrics.jsonl training row (step, tokens, loss, "
              "lr, grad_norm) and every tensor of the final model.safetensors equal an uninterrupted run's, bit for "
              "bit. *Steps lost* = steps trained before the kill minus the step resumed from.", "",
              "| moment | kills | inside a checkpoint write | resumed | exact | steps lost (max / mean) |",
              "|---|---:|---:|---:|---:|---|"]
        label = {"any": "any time after start (start-up included)", "training": "while training",
                 "checkpoint": "after a `.tmp-step_*` appeared (+0-10 ms)"}
        for kind in ("any", "training", "checkpoint"):
            g = by(kind)
            if g:
                lost = [r["lost"] for r in g]
                L.append(f"| {label[kind]} | {len(g)} | {sum(bool(r['in_write']) for r in g)} | "
                         f"{sum(r['resumed_ok'] for r in g)} | {sum(r['exact'] for r in g)} | {max(lost)} / "
                         f"{sum(lost) / len(lost):.1f} |")
        L.append(f"| **all** | **{s['kills']}** | **{s['inside_checkpoint_write']}** | **{s['resumed']}** | "
                 f"**{s['exact']}** | **{s['lost_max']} / {s['lost_mean']}** |")
        lags = sum(r["latest_lags"] for r in rows)
        L += ["", f"{lags} kill(s) landed after a checkpoint was renamed into place but before `latest` named it; "
              f"{sum(r['orphans'] for r in rows)} process(es) outlived a killed trainer. Failures: "
              + (", ".join(f"#{r['i']} {r.get('error')}" for r in rows if not r["exact"]) or "none") + ".", ""]
    p = results.get("prepare")
    if p:
        s, rows = p["summary"], [r for r in p["rows"] if r["landed"]]
        L += [f"### `bigbatch prepare` killed{when('prepare')}", "",
              "A seeded synthetic 4 MB JSONL corpus (`prepare --source ... --set data.shard_tokens=200000`: about 13 "
              "shards per split) prepared uninterrupted, then killed with SIGKILL at random moments and run again. "
              "*Identical* means the rerun's manifest (every shard's sha256, sizes and counts) and tokenizer equal the "
              "uninterrupted run's and every file re-hashes to its manifest entry.", "",
              "*Moment*: any = from the start (start-up included); working = from when the output directory appears until "
              "the manifest would; tokenizer = the moment the trained tokenizer's file (or its temporary file) appears.",
              "", "| setup | moment | kills | after some shards were written | rerun succeeded | identical |",
              "|---|---|---:|---:|---:|---:|"]
        for setup in PREPARE_SETUPS:
            for kind in ("any", "working", "tokenizer"):
                g = [r for r in rows if r["setup"] == setup and r["kind"] == kind]
                if g:
                    L.append(f"| {setup} | {kind} | {len(g)} | {sum(r['chunks_done_before_kill'] > 0 for r in g)} | "
                             f"{sum(r['rerun_ok'] for r in g)} | {sum(r['identical'] and r['verified'] for r in g)} |")
        L += [f"| **all** | | **{s['kills']}** | **{s['after_some_shards']}** | **{s['rerun_ok']}** | "
              f"**{s['identical']}** |", "",
              f"Worker processes left running after their parent was killed: {s['orphans']} (cleaned up by the "
              "harness). Failures: " + (", ".join(f"#{r['i']} {r.get('error')}" for r in rows
                                                  if not (r["identical"] and r["verified"])) or "none") + ".", ""]
    return L


def disk_section(results, when) -> list[str]:
    d = results.get("disk")
    if not d:
        return []
    L = [f"## 2. Disk full{when('disk')}", "",
         f"A checkpoint write that runs out of space. *tmpfs*: `RUN/checkpoints` is a tmpfs of the given size "
         f"(a checkpoint of this model is {d['checkpoint_bytes'] / 1e3:.0f} KB; keep_last 100 so they pile up); "
         "the real kernel error, wherever it lands. *injected*: one write of the step-15 checkpoint raises what the "
         "library raises on ENOSPC after part of its bytes landed. Then the space comes back (remount at 64 MB) "
         "and the same command resumes. tmpfs: " + d["tmpfs"] + ".", "",
         "| how | exit | one clean line | stopped at | cause seen | temp dir removed | previous checkpoint loads "
         "| resumed exactly |", "|---|---:|---:|---|---|---:|---|---:|"]
    for r in d["rows"]:
        L.append(f"| {r['how']} | {r['exit']} | {'yes' if r['clean'] else 'no'} | {r['failed_at']} | {r['cause']} | "
                 f"{'yes' if not r['tmp_left'] else 'no'} | {r['previous'] or '(none yet)'}: "
                 f"{'yes' if r['previous_loads'] else 'NO'} | {'yes' if r['resumed_exact'] else 'no'} |")
    example = next((r["message"] for r in d["rows"] if r["clean"]), "")
    L += ["", "The message, e.g.:", "", f"    {example}", ""]
    return L


def corrupt_section(results, when) -> list[str]:
    k = results.get("corrupt")
    if not k:
        return []
    L = [f"## 3. Corruption{when('corrupt')}", "",
         "A copy of a 15-step run (checkpoints at 5, 10, 15) with one file of the newest checkpoint damaged: one "
         "flipped bit (same size) or a truncation at a random length. *Load*: `bigbatch generate RUN --checkpoint "
         "latest` must exit 2 with one line naming the file, no traceback. *Resume*: `bigbatch train` must say "
         "which checkpoint it skipped and why, resume from step_00000010 and reproduce the uninterrupted run's "
         "steps 11-15 exactly. *Silent-wrong*: damage that loads or resumes without a word.", "",
         "| file | damage | tried | load: detected, file named | resume: fell back with a note, exact | "
         "silent-wrong |", "|---|---|---:|---:|---:|---:|"]
    for name in CKPT_FILES:
        for mode in ("flip", "truncate"):
            g = [r for r in k["rows"] if r["file"] == name and r["mode"] == mode]
            if g:
                L.append(f"| {name} | {mode} | {len(g)} | {sum(r['load_clean'] and r['load_names_file'] for r in g)} | "
                         f"{sum(r['resumed_exact'] and r['note_names_file'] for r in g)} | "
                         f"{sum(r['silent'] for r in g)} |")
    s = k["summary"]
    L += [f"| **all** | | **{s['tried']}** | **{s['detected_named']}** | **{s['fell_back_exact']}** | "
          f"**{s['silent']}** |", ""]
    unnamed = [r for r in k["rows"] if r["load_clean"] and not r["load_names_file"]]
    if unnamed:
        L += [f"Detected but named another file: {len(unnamed)} (" + "; ".join(
            f"{r['file']}, {r['damage']}: `{r['load_message'].split('step_00000015/')[-1][:80]}`" for r in unnamed)
            + "). A bit flipped inside one of checksums.json's digests reads exactly like damage to the file that "
            "digest covers; the checkpoint is refused either way.", ""]
    L += ["Messages, e.g.:", ""]
    seen = set()
    for r in k["rows"]:
        if r["file"] not in seen:
            seen.add(r["file"])
            L.append(f"    {r['load_message']}")
    h = k["shards"]
    L += ["", "Shard files (the prepared synthetic corpus; training opens them with O(1) checks of sizes and index "
          "headers, `bigbatch prepare --verify` re-hashes every byte):", "",
          "| file | damage | tried | caught when training opens it | caught by `prepare --verify` | silent-wrong |",
          "|---|---|---:|---:|---:|---:|"]
    for name in sorted({r["file"] for r in h["rows"]}):
        for mode in ("flip", "truncate"):
            g = [r for r in h["rows"] if r["file"] == name and r["mode"] == mode]
            if g:
                L.append(f"| {name} | {mode} | {len(g)} | {sum(r['open_detected'] for r in g)} | "
                         f"{sum(r['verify_detected'] for r in g)} | {sum(r['silent'] for r in g)} |")
    L += ["", "A same-size flip in a token file is invisible when training opens the shard (by design: opening "
          "stays O(1) whatever the data size) and training reads the changed tokens; `prepare --verify` finds it. "
          "Silent-wrong counts damage that neither the designated check (open for truncation, `--verify` for "
          "flips) caught.", "", "Messages, e.g.:", ""]
    first = {}
    for r in h["rows"]:  # the designated check's message, one per file and damage
        first.setdefault((r["file"], r["mode"]), r["open_message"] if r["mode"] == "truncate" else r["verify_message"])
    return L + [f"    {m}" for m in first.values()] + [""]


def numeric_section(results, when) -> list[str]:
    n = results.get("numeric")
    if not n:
        return []
    L = [f"## 4. Numerical faults{when('numeric')}", "",
         "In-process: the LM objective patched so that at chosen steps its loss is NaN (forward) or only its "
         "gradient is (backward). One bad step must be skipped and logged (metrics.jsonl row with `skipped`, the "
         "step and `data`: the shard file and token range of each of the batch's rows, checked against the batch "
         "itself) and the run finish; `train.max_bad_steps` (5) in a row must stop the run (exit 1, one line) with "
         "the newest checkpoint verifying, loading with finite weights, and resuming.", "",
         "| fault | steps | exit | skip logged with step + data | data = the batch | outcome |",
         "|---|---|---:|---:|---:|---|"]
    for r in n["rows"]:
        outcome = ("finished 60 steps" if r["survived"] else "FAILED") if len(r["nan_steps"]) == 1 else (
            f"stopped; {r['checkpoint']} loads, resumed from it" if r["survived"] else f"FAILED: {r.get('message')}")
        steps = r["nan_steps"]
        L.append(f"| NaN {r['kind']} | {steps[0]}{'-' + str(steps[-1]) if len(steps) > 1 else ''} | {r['exit']} | "
                 f"{'yes' if r['skipped_logged'] and r['stderr_names_step_and_data'] else 'no'} | "
                 f"{'yes' if r['data_is_the_batch'] else 'no'} | {outcome} |")
    stop = next((r["message"] for r in n["rows"] if "message" in r), None)
    return L + ["", "A checkpoint written during a streak of skipped steps holds the weights of the last applied "
                "step (a skipped step changes neither weights nor optimizer state), so it is a good one."] + (
        ["", "The stop, e.g.:", "", f"    {stop}"] if stop else []) + [""]


def dist_section(results, when) -> list[str]:
    t = results.get("dist")
    if not t:
        return []
    L = [f"## 5. Distributed faults{when('dist')}", "",
         f"`bigbatch train configs/tiny_lm.yaml --nproc 2` (gloo, DDP, 30 steps, a checkpoint every 5, "
         f"train.dist_timeout_s={t['dist_timeout_s']}); one rank SIGKILLed after a random step. The job must end "
         "within the timeout with torchrun naming the rank; then the run resumes from its last checkpoint on 2 "
         "processes (compared with an uninterrupted 2-process run) and, from a copy, on 1 process (same global "
         "batch; the ranks' RNG streams restart from the seed).", "",
         "| killed | after step | job ended in | rank named | resumed on 2 from | max rel. loss diff | "
         "resumed on 1 from | max rel. loss diff |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in t["rows"]:
        if r["landed"]:
            L.append(f"| rank {r['killed_rank']} | {r['after_step']} | {r['ended_s']} s | "
                     f"{'yes' if r['rank_named'] else 'no'} | {r['from_2'] if r['resumed_2'] else 'FAILED'} | "
                     f"{r['rel_2']:.1e}{' (bitwise)' if r['exact_2'] else ''} | "
                     f"{r['from_1'] if r['resumed_1'] else 'FAILED'} | {r['rel_1']:.1e} |")
    return L + [""]


TRUST_MODEL = """## Trust model: what is verified when

| what | when | how | cost |
|---|---|---|---|
| shard files (`*.bin`, `*.idx.npy`) | every open (train, valid, each rank, eval) | both files exist with the byte sizes in manifest.json; the index's `.npy` header holds `n_examples` rows of the index dtype and its last row ends at the shard's last token | O(1) per shard |
| shard files | `bigbatch prepare CONFIG --verify` | sha256 of every byte of both files against manifest.json (taken from the bytes as they were written) | O(data) |
| checkpoint, every file | resume (`find_resumable`), `bigbatch.load`, eval / generate / export / compress | sha256 of each file against checksums.json; a mismatch names the file; resume then falls back to the newest checkpoint that verifies, with a note, and sets the damaged one aside as `.corrupt-step_N` | O(checkpoint) |
| trainer.json | resume | JSON (`json.loads`): scheduler, data position, RNG states (base64), scaler, clocks; nothing in it can run code | |
| state/.metadata (DCP) | resume | a pickle, read by an unpickler that admits only DCP's metadata classes, torch.Size, dtypes and paths | |
| DCP byte entries (optimizer param groups) | resume | `torch.load(weights_only=True)` | |
| model.safetensors | load, eval, generate, export | safetensors: tensors only, no code | |

Never unpickled with arbitrary classes: trainer.json is not a pickle; the DCP `.metadata` pickle goes through the
allow-list unpickler; DCP's byte entries load with `weights_only=True`; weights are safetensors. Checkpoints of
earlier versions with `trainer.pt` load with `weights_only=True` and numpy's array types only.

checksums.json detects damage, not tampering: it sits beside the files it covers, so whoever can rewrite a file can
rewrite its checksum (tests/test_trust.py plants such pickles; they are refused by the unpicklers above, not by the
checksums). A change inside one of checksums.json's digests reads exactly like damage to the file that digest
covers: the checkpoint is refused either way, the message names that file. Shard checksums are checked in full only
by `prepare --verify`: a same-size change of a token file between two verifications is read by training as data.

Writes: shards, manifest, progress file, checkpoints (a `.tmp-step_*` directory renamed into place, then `latest`
rewritten atomically) and run-directory pointers are written to a temporary name and renamed, so a kill at any
moment leaves either the old or the new file (section 1 counts this). A full disk during a checkpoint write stops
the run with one line naming the directory and the space a checkpoint needs, removing the partial directory
(section 2).

## Found and fixed while building these experiments

- A full disk during a checkpoint write ended the run with a traceback (DCP's CheckpointException, safetensors'
  SafetensorError "os error 28", or torch.save's "unexpected pos" from DCP's byte entries) and left the partial
  `.tmp-step_*` directory filling the disk. `save_checkpoint` now removes it and stops with one line (exit 2).
- A kill while `prepare` saved a trained tokenizer left a half-written tokenizer.json that the rerun trusted and
  refused ("not a valid tokenizer.json"): the prepare could not resume (1 of 20 kills in the first run of this
  script). The tokenizer is now saved aside and renamed.
- A skipped step whose loss was finite but whose gradient was not (logged with a loss and no lr) crashed the
  plots at the end of the run (KeyError 'lr', exit 1 after training finished). The plots now leave skipped rows out.
- A run killed before its first checkpoint, started again, appended its metrics.jsonl rows to the dead attempt's
  (steps 1..k twice). A fresh start now drops them, as a resume drops rows after its checkpoint.

tests/test_faults_small.py keeps each of these as a fast test.

## Not covered here

ENOSPC outside checkpoint writes (metrics.jsonl, TensorBoard events, shards while preparing); a kill during a
resume's own start-up (metrics.jsonl is rewritten there in place, not through a temporary file, so such a kill can
shorten the log, not the checkpoints); power loss (fsync ordering is in the code, not tested); FSDP and multi-node
kills; GPUs. Each trial kills one process once.
"""


# ---------------------------------------------------------------------------------------------- main


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--only", default=",".join(CATEGORIES), help=f"comma-separated subset of {','.join(CATEGORIES)}")
    p.add_argument("--kills", type=int, default=50, help="SIGKILLs of bigbatch train (default 50)")
    p.add_argument("--prepare-kills", type=int, default=20, help="SIGKILLs of bigbatch prepare (default 20)")
    p.add_argument("--disk-sizes", type=int, default=6, help="tmpfs sizes tried where mount works (default 6)")
    p.add_argument("--flips", type=int, default=2, help="bit flips per corrupted file (default 2)")
    p.add_argument("--truncs", type=int, default=1, help="truncations per corrupted file (default 1)")
    p.add_argument("--nan-trials", type=int, default=3, help="single NaN loss and NaN gradient trials, each (default 3)")
    p.add_argument("--stop-trials", type=int, default=2, help="max_bad_steps streak trials (default 2)")
    p.add_argument("--dist-trials", type=int, default=3, help="killed-rank trials with 2 processes (default 3)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--doc-only", action="store_true", help="only rewrite docs/reliability.md from the stored results")
    p.add_argument("--no-doc", action="store_true", help="do not write docs/reliability.md")
    p.add_argument("--driver", choices=["enospc", "nan"], help=argparse.SUPPRESS)
    p.add_argument("--where", help=argparse.SUPPRESS)
    p.add_argument("--at-step", type=int, help=argparse.SUPPRESS)
    p.add_argument("--kind", help=argparse.SUPPRESS)
    p.add_argument("--steps", help=argparse.SUPPRESS)
    p.add_argument("--record", help=argparse.SUPPRESS)
    args, rest = p.parse_known_args()
    if args.driver == "enospc":
        return driver_enospc(args.where, args.at_step, rest[1:] if rest[:1] == ["--"] else rest)
    if args.driver == "nan":
        return driver_nan([int(s) for s in args.steps.split(",")], args.kind, args.record,
                          rest[1:] if rest[:1] == ["--"] else rest)
    if rest:
        p.error(f"unrecognized arguments: {' '.join(rest)}")
    os.environ.update(env())  # the in-process checks (verify, load) read the same cache
    store = OUT / "results.json"
    results = json.loads(store.read_text()) if store.exists() else {}
    chosen = [] if args.doc_only else [c.strip() for c in args.only.split(",") if c.strip()]
    unknown = [c for c in chosen if c not in CATEGORIES]
    if unknown:
        p.error(f"--only {unknown[0]}: expected some of {', '.join(CATEGORIES)}")
    if chosen:  # references and trials of earlier invocations (other code, perhaps) are not reused
        shutil.rmtree(WORK, ignore_errors=True)
        WORK.mkdir(parents=True)
    for cat in chosen:
        print(f"== {cat}", flush=True)
        start, rng = time.time(), random.Random(f"{args.seed}-{cat}")
        result = globals()[f"cat_{cat}"](args, rng)
        result.update(date=datetime.datetime.now().strftime("%Y-%m-%d %H:%M"), seconds=time.time() - start)
        results[cat] = result
        print(f"== {cat}: {json.dumps(result['summary'])} ({result['seconds']:.0f} s)", flush=True)
        store.write_text(json.dumps(results, indent=1, default=str))
    if chosen:
        results.update(_command=" ".join(["python benchmarks/faults.py", *sys.argv[1:]]),
                       _date=datetime.datetime.now().strftime("%Y-%m-%d %H:%M"), _machine=machine())
        store.write_text(json.dumps(results, indent=1, default=str))
    if not args.no_doc:
        DOC.write_text(render(results))
        print(f"wrote {DOC.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
