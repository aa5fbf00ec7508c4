"""Data parallel training with real processes: 2 ranks on gloo through `bigbatch train --nproc 2`
(torchrun), compared with one process on the same global batch."""

import os
import shutil
import signal
import subprocess
import sys
import threading
import time

import pytest
import torch
from helpers import ROOT, TINY, run_cli, train_rows, write_jsonl
from safetensors.torch import load_file

import bigbatch
from bigbatch.config import load_config
from bigbatch.data.pipeline import build_data, shard_dir_for
from bigbatch.nn.models import build_model
from bigbatch.objectives import OBJECTIVES
from bigbatch.train.loop import train
from bigbatch.train.noise import NoiseScale
from bigbatch.train.setup import resolve_config

QUIET = ["train.eval_every=0", "train.sample_tokens=0", "train.log_every=1", "train.baseline=false"]


def sets(*pairs):
    return [x for p in pairs for x in ("--set", p)]


def two_ranks(run_dir, overrides, config=TINY, check=True):
    return run_cli("train", config, "--nproc", 2, "--run-dir", run_dir, "--no-progress", *sets(*overrides),
                   check=check)


def weights(run_dir, step):
    return load_file(str(run_dir / "checkpoints" / f"step_{step:08d}" / "model.safetensors"))


def assert_same_weights(a, b, atol):
    assert a.keys() == b.keys()
    worst = max((a[k] - b[k]).abs().max().item() for k in a)
    assert worst <= atol, worst


@pytest.fixture(scope="module")
def one_process(tmp_path_factory):
    """2 SGD steps, global batch 8 rows = 4 micro-batches of 2 in one process."""
    overrides = QUIET + ["train.max_steps=2", "train.global_batch_size=8", "train.micro_batch_size=2",
                         "optim.name=sgd", "optim.lr=0.5", "optim.warmup_steps=0", "train.grad_clip=0",
                         "train.save_every=1", "train.keep_last=2", "train.peak_flops=1e12"]
    run_dir = tmp_path_factory.mktemp("one") / "run"
    train(load_config(TINY, overrides), run_dir, progress=False)
    return run_dir, overrides


@pytest.mark.parametrize("parallel", ["ddp", pytest.param("fsdp", marks=pytest.mark.slow),
                                      pytest.param("fsdp-keep-gathered", marks=pytest.mark.slow)])
def test_two_ranks_equal_one_process(one_process, parallel, tmp_path):
    """2 ranks x 2 micro-batches of 2 rows == 1 process x 4 micro-batches: same weights after each step."""
    ref_dir, overrides = one_process
    extra = ["train.parallel=fsdp", "train.fsdp_reshard=false"] if parallel == "fsdp-keep-gathered" \
        else [f"train.parallel={parallel}"]
    two_ranks(tmp_path / "two", overrides + extra)
    for step in (1, 2):
        assert_same_weights(weights(ref_dir, step), weights(tmp_path / "two", step), atol=1e-6)
    ref, got = train_rows(ref_dir), train_rows(tmp_path / "two")
    assert [r["tokens"] for r in got] == [r["tokens"] for r in ref]
    for a, b in zip(ref, got):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-6)
        assert b["grad_norm"] == pytest.approx(a["grad_norm"], rel=1e-5)
        # MFU is per device: the 2 ranks' summed tokens/s over 2 devices' peak
        assert b["mfu"] / b["tokens_per_s"] == pytest.approx(a["mfu"] / a["tokens_per_s"] / 2, rel=1e-9)


@pytest.mark.slow
def test_two_nodes_by_the_documented_torchrun_lines(one_process, tmp_path):
    """docs/distributed.md's two-machine example, both "machines" on this one: one torchrun per node
    (--nnodes 2 --node-rank 0/1, master address and port), each node's local rank 0 preparing the data
    into the same cache at once (they take turns on a lock). Same weights as one process."""
    import socket

    ref_dir, overrides = one_process
    source = tmp_path / "corpus.txt"  # data no run has prepared yet
    source.write_text((ROOT / "bigbatch" / "train" / "loop.py").read_text() * 40)
    overrides = overrides + [f"data.source={source}", "data.text_per_line=true"]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    nodes = [subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--node-rank", str(node),
                               "--nproc-per-node", "1", "--master-addr", "127.0.0.1", "--master-port", str(port),
                               "-m", "bigbatch", "train", str(TINY), "--run-dir", str(tmp_path / "run"),
                               "--no-progress", *sets(*overrides)],
                              cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for node in (0, 1)]
    outputs = [n.communicate(timeout=300)[0] for n in nodes]
    assert [n.returncode for n in nodes] == [0, 0], outputs[0][-2000:] + outputs[1][-2000:]
    assert "ranks 2 (ddp)" in outputs[0]
    one = tmp_path / "one"
    train(load_config(TINY, overrides), one, progress=False)
    assert_same_weights(weights(one, 2), weights(tmp_path / "run", 2), atol=1e-6)


@pytest.mark.slow
def test_ddp_noise_scale_uses_per_rank_and_all_reduced_gradients(one_process, tmp_path):
    """Under DDP, |G_small|² is each rank's own gradient (B/2 targets) and |G_big|² the all-reduced one."""
    _, overrides = one_process
    run_dir = tmp_path / "ddp"
    two_ranks(run_dir, overrides + ["train.max_steps=1"])
    logged = train_rows(run_dir)[0]["noise_scale"]

    cfg = load_config(TINY, overrides)
    grads, counts = [], []
    for rank in range(2):
        data = build_data(cfg, 2, rank, 2, progress=False)
        cfg = resolve_config(cfg, data)
        torch.manual_seed(cfg.train.seed)
        model = build_model(cfg.task, cfg.model)
        loss, n = 0.0, 0
        for _ in range(2):  # this rank's two micro-batches
            s, k, _ = OBJECTIVES["lm"](model, data.train.next_batch())
            loss, n = loss + s, n + int(k)
        loss.backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
        counts.append(n)
    total = sum(counts)
    local_sq = [float((g / n).square().sum()) for g, n in zip(grads, counts)]
    global_sq = float((sum(grads) / total).square().sum())
    expected = NoiseScale()
    expected.update(sum(local_sq) / 2, total / 2, global_sq, total)
    assert logged == pytest.approx(expected.value, rel=1e-4)


def test_classification_across_ranks_is_exactly_normalised(tmp_path):
    """Ragged, padded, token-budget batches: 2 ranks == 1 process, because the target count is all-reduced."""
    from helpers import classify_rows

    data = write_jsonl(tmp_path / "d.jsonl", classify_rows(600, seed=4))
    overrides = QUIET + ["task=classify", f"data.source={data}", "model.d_model=32", "model.n_heads=2",
                         "model.n_layers=1", "model.max_len=64", "model.dropout=0", "train.micro_batch_tokens=256",
                         "train.global_batch_tokens=1024", "train.max_steps=2", "optim.name=sgd", "optim.lr=0.5",
                         "optim.warmup_steps=0", "train.grad_clip=0"]
    config = tmp_path / "c.yaml"
    config.write_text("task: classify\n")
    train(load_config(config, overrides), tmp_path / "one", progress=False)
    two_ranks(tmp_path / "two", overrides, config=config)
    assert_same_weights(weights(tmp_path / "one", 2), weights(tmp_path / "two", 2), atol=1e-6)
    for a, b in zip(train_rows(tmp_path / "one"), train_rows(tmp_path / "two")):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-6)


@pytest.mark.slow
def test_fsdp_checkpoint_resumes_on_one_and_on_two_ranks(tmp_path):
    """A sharded checkpoint written by 2 ranks continues with the same losses on 2 ranks and on 1."""
    overrides = QUIET + ["train.max_steps=6", "train.save_every=3", "train.keep_last=5", "optim.warmup_steps=2",
                         "train.global_batch_size=8", "train.micro_batch_size=2"]
    full = tmp_path / "full"
    two_ranks(full, overrides + ["train.parallel=fsdp"])
    assert (full / "checkpoints" / "step_00000003" / "state" / ".metadata").exists()
    reference = {r["step"]: r["loss"] for r in train_rows(full)}

    def rewound(name):
        run = tmp_path / name
        shutil.copytree(full, run)
        shutil.rmtree(run / "checkpoints" / "step_00000006")
        (run / "checkpoints" / "latest").write_text("step_00000003\n")
        return run

    on_two, on_one = rewound("two"), rewound("one")
    two_ranks(on_two, overrides + ["train.parallel=fsdp"])
    train(load_config(TINY, overrides), on_one, progress=False)  # one process, no sharding
    for run in (on_two, on_one):
        got = {r["step"]: r["loss"] for r in train_rows(run)}
        assert sorted(got) == [1, 2, 3, 4, 5, 6]
        for step in (4, 5, 6):
            assert got[step] == pytest.approx(reference[step], rel=1e-5), (run.name, step)
    # the consolidated weights are those a one-process run would load
    assert_same_weights(weights(on_one, 6), weights(full, 6), atol=1e-5)
    model, _ = bigbatch.load(full)  # what eval / generate read, whatever the world size
    saved, state = weights(full, 6), model.state_dict()
    assert all(torch.equal(state[k], saved[k]) for k in saved)


def children(pid: int) -> list[int]:
    """Process ids whose parent is ``pid`` (from /proc)."""
    out = []
    for entry in os.listdir("/proc"):
        try:
            stat = open(f"/proc/{entry}/stat").read()
        except (OSError, ValueError):
            continue
        if entry.isdigit() and int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            out.append(int(entry))
    return sorted(out)


@pytest.mark.slow
def test_a_killed_rank_ends_the_job_with_its_rank_named(tmp_path):
    run_dir = tmp_path / "kill"
    proc = subprocess.Popen([sys.executable, "-m", "bigbatch", "train", str(TINY), "--nproc", "2", "--run-dir",
                             str(run_dir), "--no-progress", *sets("train.max_steps=1000000", "train.save_every=0",
                                                                  "train.dist_timeout_s=60")],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    metrics = run_dir / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and not (metrics.exists() and metrics.read_text().count("\n") >= 3):
        time.sleep(0.2)
    pids = children(proc.pid)  # torchrun's: the two ranks
    assert len(pids) == 2, pids
    victim = pids[-1]
    env = dict(x.split("=", 1) for x in open(f"/proc/{victim}/environ").read().split("\0") if "=" in x)
    start = time.time()
    os.kill(victim, signal.SIGKILL)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode != 0
    assert time.time() - start < 60
    assert f"rank      : {env['RANK']}" in out and "Signal 9 (SIGKILL)" in out, out[-3000:]


def test_other_ranks_wait_for_the_prepared_manifest(tmp_path):
    """A rank that does not prepare waits on the manifest file (no collective timeout), then opens it."""
    source = tmp_path / "t.txt"
    source.write_text("hello world\n" * 5000)
    cfg = load_config(TINY, [f"data.source={source}", f"data.shard_dir={tmp_path / 'shards'}"])
    found = {}
    waiter = threading.Thread(target=lambda: found.setdefault("dir", shard_dir_for(cfg, False, preparer=False)))
    waiter.start()
    time.sleep(1.5)
    assert waiter.is_alive()  # nothing prepared yet: still waiting
    prepared = shard_dir_for(cfg, False, preparer=True)
    waiter.join(timeout=30)
    assert found["dir"] == prepared
