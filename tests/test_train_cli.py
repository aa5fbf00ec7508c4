"""The real command line on real (builtin) data with a tiny model: run dir, resume, signals, errors."""

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import bigbatch
from bigbatch.config import load_config
from bigbatch.train.checkpoint import latest_checkpoint
from bigbatch.train.loop import train

from helpers import ROOT, TINY, run_cli, train_rows


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("runs") / "tiny"
    proc = run_cli("train", TINY, "--run-dir", run_dir, "--json", "--no-progress")
    return run_dir, json.loads(proc.stdout), proc.stderr


def test_train_writes_the_run_directory(tiny_run):
    run_dir, summary, stderr = tiny_run
    for name in ("config.yaml", "metrics.jsonl", "summary.json", "plots/loss.png", "plots/lr.png",
                 "plots/throughput.png", "checkpoints/latest"):
        assert (run_dir / name).exists(), name
    assert list((run_dir / "tb").glob("events.out.tfevents.*"))
    ckpt = latest_checkpoint(run_dir)
    assert ckpt.name == "step_00000100"
    assert sorted(p.name for p in ckpt.iterdir()) == sorted(
        ["model.safetensors", "state", "trainer.json", "config.yaml", "checksums.json"])  # byte LM: no tokenizer.json
    assert len(list((run_dir / "checkpoints").glob("step_*"))) == 2  # keep_last
    rows = train_rows(run_dir)
    assert [r["step"] for r in rows] == list(range(1, 101))
    assert all(r["loss"] > 0 and r["tokens_per_s"] > 0 and r["mfu"] is None for r in rows)
    assert rows[-1]["loss"] < rows[0]["loss"]
    valid = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if '"split"' in x]
    assert [(r["step"], r.get("full", False)) for r in valid] == [(50, False), (100, False), (100, True)]
    assert summary["valid_bits_per_byte"] < summary["unigram_bits_per_byte"]  # 100 tiny steps already beat it
    assert "bits/byte" in stderr and "unigram baseline" in stderr and "sample (prompt " in stderr
    saved = load_config(run_dir / "config.yaml")
    assert saved.model.vocab_size == 259 and saved.optim.base_lr == saved.optim.lr


@pytest.mark.slow
def test_load_generate_eval_plot(tiny_run, tmp_path):
    run_dir, summary, _ = tiny_run
    model, cfg = bigbatch.load(run_dir)
    assert not model.training and cfg.task == "lm"
    out = run_cli("generate", run_dir, "--prompt", "def ", "--max-new-tokens", "30", "--temperature", "0")
    assert out.stdout.startswith("def ")
    ev = json.loads(run_cli("eval", run_dir, "--json").stdout)
    assert ev["loss"] == pytest.approx(summary["valid_loss"], rel=1e-4)
    png = tmp_path / "p.png"
    run_cli("plot", run_dir, "--out", png)
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_resume_continues_the_identical_loss_sequence(tiny_run, tmp_path):
    """2N steps in one go == N steps, resume from the checkpoint, N more steps."""
    run_dir, _, _ = tiny_run
    resumed = tmp_path / "resumed"
    shutil.copytree(run_dir, resumed)
    shutil.rmtree(resumed / "checkpoints" / "step_00000100")
    (resumed / "checkpoints" / "latest").write_text("step_00000050\n")
    cfg = load_config(TINY)
    train(cfg, resumed, progress=False)
    assert [r["loss"] for r in train_rows(resumed)] == [r["loss"] for r in train_rows(run_dir)]
    a, b = bigbatch.load(run_dir)[0].state_dict(), bigbatch.load(resumed)[0].state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_resume_refuses_a_different_model(tiny_run, tmp_path):
    run_dir, _, _ = tiny_run
    other = tmp_path / "other"
    shutil.copytree(run_dir, other)
    proc = run_cli("train", TINY, "--run-dir", other, "--set", "model.d_model=64", check=False)
    assert proc.returncode == 2
    assert "cannot resume" in proc.stderr and "model.d_model: 32 -> 64" in proc.stderr


def test_corrupt_checkpoint_is_named(tiny_run, tmp_path):
    run_dir, _, _ = tiny_run
    broken = tmp_path / "broken"
    shutil.copytree(run_dir, broken)
    ckpt = latest_checkpoint(broken)
    with open(ckpt / "model.safetensors", "r+b") as f:
        f.seek(200)
        f.write(b"\x00\x01\x02")
    proc = run_cli("generate", broken, "--prompt", "x", check=False)
    assert proc.returncode == 2 and "model.safetensors: checksum mismatch" in proc.stderr


def test_sigterm_checkpoints_and_exits(tmp_path):
    run_dir = tmp_path / "term"
    proc = subprocess.Popen([sys.executable, "-m", "bigbatch", "train", str(TINY), "--run-dir", str(run_dir),
                             "--set", "train.max_steps=100000", "--set", "train.save_every=0", "--no-progress"],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = run_dir / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and not (metrics.exists() and metrics.read_text().count("\n") >= 3):
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "stopped by signal" in err
    ckpt = latest_checkpoint(run_dir)
    step = json.loads((ckpt / "trainer.json").read_text())["step"]
    assert step >= 3 and ckpt.name == f"step_{step:08d}"
    bigbatch.load(run_dir)


@pytest.mark.parametrize("args,message", [
    (["train", "--set", "train.max_step=3"], "did you mean 'train.max_steps'"),
    (["train", "--set", "optim.schedule=exp"], "optim.schedule='exp' is invalid: expected one of auto, constant"),
    (["train", "missing.yaml"], "cannot read config missing.yaml"),
    (["train", "--set", "data.source=/nonexistent/*.txt"], "no such file"),
    (["train", "--set", "data.source=builtin:nope"], "builtin:nope is unknown"),
    (["train", "--set", "train.max_steps=700", "--set", "optim.warmup_steps=2000"],
     "optim.warmup_steps=2000 must be smaller than train.max_steps=700"),
    (["train", "--set", "train.global_batch_size=10", "--set", "train.micro_batch_size=4"], "not a whole number"),
    (["train", "--set", "data.seq_len=512"], "data.seq_len=512 is longer than model.max_len=256"),
    (["generate", "/nonexistent/run", "--prompt", "x"], "no such run or checkpoint directory"),
])
def test_bad_input_is_one_line_and_exit_2(args, message, tmp_path):
    proc = run_cli(*args, "--run-dir", tmp_path / "r", check=False) if args[0] == "train" else run_cli(*args, check=False)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr


def test_text_files_as_source(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    for i in range(40):
        (data / f"doc{i}.txt").write_text(f"document {i}: " + "the quick brown fox jumps over the lazy dog. " * 20)
    summary = train(load_config(TINY, [f"data.source={data}/*.txt", "train.max_steps=8", "train.eval_every=0",
                                       "train.save_every=0", "train.sample_tokens=0"]), tmp_path / "run", progress=False)
    assert summary["step"] == 8
    assert os.path.exists(tmp_path / "run" / "checkpoints" / "step_00000008")


def test_accumulation_in_the_loop_matches_one_batch(tmp_path):
    """Global batch 8 as 2 micro-batches of 4 follows the same loss curve as one batch of 8."""
    base = ["train.max_steps=6", "train.eval_every=0", "train.save_every=0", "train.sample_tokens=0",
            "train.global_batch_size=8"]
    train(load_config(TINY, base), tmp_path / "one", progress=False)
    train(load_config(TINY, base + ["train.micro_batch_size=4"]), tmp_path / "two", progress=False)
    one, two = [r["loss"] for r in train_rows(tmp_path / "one")], [r["loss"] for r in train_rows(tmp_path / "two")]
    assert one == pytest.approx(two, rel=1e-5, abs=1e-5)


def test_bf16_autocast_trains(tmp_path):
    summary = train(load_config(TINY, ["train.precision=bf16", "train.max_steps=30", "train.eval_every=0",
                                       "train.sample_tokens=0"]), tmp_path / "bf16", progress=False)
    rows = train_rows(tmp_path / "bf16")
    assert all(r["loss"] == r["loss"] for r in rows) and rows[-1]["loss"] < rows[0]["loss"]
    assert summary["valid_loss"] < 5.0


def test_non_finite_steps_are_skipped_then_stop(tmp_path, monkeypatch):
    from bigbatch import objectives
    from bigbatch.errors import TrainingError

    real = objectives.lm_objective
    calls = {"n": 0}

    def flaky(model, batch, **kw):
        calls["n"] += 1
        if calls["n"] == 4:
            calls["batch"] = batch["input_ids"].clone()
        loss_sum, n, logs = real(model, batch, **kw)
        # call 1 is the start-up probe at the worst-case shape; calls 4 and 5 are steps 3 and 4
        return (loss_sum * float("nan") if calls["n"] in (4, 5) else loss_sum), n, logs

    monkeypatch.setitem(objectives.OBJECTIVES, "lm", flaky)
    base = ["train.max_steps=8", "train.eval_every=0", "train.save_every=0", "train.sample_tokens=0"]
    train(load_config(TINY, base), tmp_path / "flaky", progress=False)
    rows = [json.loads(x) for x in (tmp_path / "flaky" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if r.get("skipped")] == [3, 4]
    skipped = [r for r in rows if r.get("skipped")]
    # each names the 8 rows (global batch 8) it read: shard file and token range, different rows per step
    assert all(len(r["data"]) == 8 and all(".bin tokens " in x for x in r["data"]) for r in skipped)
    assert set(skipped[0]["data"]).isdisjoint(skipped[1]["data"])
    read = []
    for where in skipped[0]["data"]:  # the named token ranges are exactly the rows of the bad batch
        path, span = where.split(" tokens ")
        a, b = map(int, span.split(".."))
        dtype = json.loads((Path(path).parent.parent / "manifest.json").read_text())["dtype"]
        read.append(np.fromfile(path, dtype=dtype)[a : b + 1].tolist())
    assert sorted(read) == sorted(calls["batch"].tolist())
    assert all(r["loss"] == r["loss"] for r in rows if not r.get("skipped") and "split" not in r)

    monkeypatch.setitem(objectives.OBJECTIVES, "lm",
                        lambda m, b, **kw: (lambda s, n, lg: (s * float("nan"), n, lg))(*real(m, b, **kw)))
    with pytest.raises(TrainingError, match="not finite for 3 steps in a row"):
        train(load_config(TINY, base + ["train.max_bad_steps=3"]), tmp_path / "diverged", progress=False)


@pytest.mark.slow
def test_noise_scale_command(tmp_path):
    out = run_cli("noise-scale", TINY, "--steps", "30", "--json")
    result = json.loads(out.stdout)
    assert result["noise_scale"] > 0 and result["unit"] == "tokens"
    assert result["recommended_batch"] % 64 == 0 and result["recommended_setting"].startswith("train.global_batch_tokens=")
    assert result["adaptive_unit"] == "rows" and result["adaptive_batch"] == math.ceil(0.5 * result["noise_scale"] / 64)


def test_crash_during_checkpoint_write_keeps_the_previous(tmp_path, monkeypatch):
    """A failure half-way through writing a checkpoint leaves `latest` on the last complete one."""
    from bigbatch.train import checkpoint

    run_dir = tmp_path / "crash"
    cfg = load_config(TINY, ["train.max_steps=20", "train.save_every=10", "train.eval_every=0", "train.sample_tokens=0"])
    real_save, calls = checkpoint.st_save_model, {"n": 0}

    def dying_save(model, path, *a, **kw):
        calls["n"] += 1
        if calls["n"] == 2:  # model.safetensors of the second checkpoint (step 20), after its sharded state
            raise OSError("disk vanished")
        return real_save(model, path, *a, **kw)

    monkeypatch.setattr(checkpoint, "st_save_model", dying_save)
    with pytest.raises(OSError):
        train(cfg, run_dir, progress=False)
    monkeypatch.setattr(checkpoint, "st_save_model", real_save)
    assert latest_checkpoint(run_dir).name == "step_00000010"
    bigbatch.load(run_dir)
    assert not (run_dir / "checkpoints" / "step_00000020").exists()


def test_auto_micro_batch_and_batch_warmup(tmp_path):
    summary = train(load_config(TINY, ["train.micro_batch_size=auto", "train.global_batch_size=32",
                                       "train.memory_budget_gb=0.004", "train.batch_warmup_steps=4",
                                       "train.max_steps=8", "train.eval_every=0", "train.sample_tokens=0"]),
                    tmp_path / "auto", progress=False)
    saved = load_config(tmp_path / "auto" / "config.yaml")
    assert isinstance(saved.train.micro_batch_size, int) and 1 <= saved.train.micro_batch_size < 32
    assert 32 % saved.train.micro_batch_size == 0
    rows = train_rows(tmp_path / "auto")
    tokens = [b["tokens"] - a["tokens"] for a, b in zip([{"tokens": 0}] + rows, rows)]
    assert tokens[0] < tokens[-1] == 32 * 64  # the first steps use fewer micro-batches
    assert summary["step"] == 8


@pytest.mark.slow
def test_bench_commands():
    peak = json.loads(run_cli("bench", "peak", "--json").stdout)
    assert peak["peak_flops"] > 1e8
    result = json.loads(run_cli("bench", "throughput", TINY, "--steps", "8", "--json").stdout)
    assert result["tokens_per_s"] > 0 and 0 < result["mfu"] < 1.5
