"""Runs are never lost and checkpoints never run code: re-saves, a missing or corrupt `latest`, planted
pickles, the fp16 scaler across a resume, short smoke runs."""

import io
import json
import os
import pickle
import shutil

import pytest
import torch

import bigbatch
from bigbatch.config import load_config
from bigbatch.distributed import precision as precision_module
from bigbatch.errors import UserError
from bigbatch.train import checkpoint
from bigbatch.train.checkpoint import find_resumable, read_trainer_state
from bigbatch.train.loop import train

from helpers import TINY, run_cli, train_rows

QUIET = ["train.eval_every=0", "train.sample_tokens=0", "train.baseline=false", "train.log_every=1"]


@pytest.fixture(scope="module")
def saved_run(tmp_path_factory):
    """12 steps with checkpoints at 4, 8, 12 (all kept)."""
    run_dir = tmp_path_factory.mktemp("trust") / "run"
    train(load_config(TINY, QUIET + ["train.max_steps=12", "train.save_every=4", "train.keep_last=5"]), run_dir,
          progress=False)
    return run_dir


def copy_run(run_dir, to):
    shutil.copytree(run_dir, to)
    return to


def test_trainer_state_is_json(saved_run):
    ckpt = saved_run / "checkpoints" / "step_00000012"
    assert not (ckpt / "trainer.pt").exists()
    state = json.loads((ckpt / "trainer.json").read_text())
    assert state["step"] == 12 and isinstance(state["rng"][0]["torch"], str)


def test_a_missing_latest_falls_back_to_the_newest_that_verifies(saved_run, tmp_path, capsys):
    run = copy_run(saved_run, tmp_path / "run")
    (run / "checkpoints" / "latest").unlink()
    assert find_resumable(run).name == "step_00000012"
    assert "latest is missing" in capsys.readouterr().err


def test_a_corrupt_latest_falls_back_and_the_resume_continues(saved_run, tmp_path, capsys):
    run = copy_run(saved_run, tmp_path / "run")
    with open(run / "checkpoints" / "step_00000012" / "model.safetensors", "r+b") as f:
        f.seek(300)
        f.write(b"\xff\xfe\xfd")
    assert find_resumable(run).name == "step_00000008"
    assert "step_00000012/model.safetensors: checksum mismatch" in capsys.readouterr().err
    train(load_config(TINY, QUIET + ["train.max_steps=12", "train.save_every=4", "train.keep_last=5"]), run,
          progress=False)
    # steps 9..12 trained again from step 8 give the same losses as the first time
    assert [r["loss"] for r in train_rows(run)] == [r["loss"] for r in train_rows(saved_run)]


def test_a_run_dir_whose_checkpoints_all_fail_is_refused_not_restarted(saved_run, tmp_path):
    run = copy_run(saved_run, tmp_path / "run")
    for ckpt in (run / "checkpoints").glob("step_*"):
        (ckpt / "config.yaml").write_text("tampered\n")
    proc = run_cli("train", "--run-dir", run, "--no-progress", check=False)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert "no checkpoint verifies" in proc.stderr and "step_00000004/config.yaml" in proc.stderr
    assert not (run / "checkpoints" / "step_00000001").exists()


def test_a_crash_while_replacing_a_checkpoint_keeps_the_old_one(saved_run, tmp_path, monkeypatch):
    """Re-saving step 12: the old step_12 is set aside, then the process dies before the new one is renamed
    in. `latest` names a directory that is gone; the set-aside copy is found, verified and resumed."""
    run = copy_run(saved_run, tmp_path / "run")
    real_replace = os.replace

    def dying_replace(src, dst):
        if str(src).endswith(".tmp-step_00000012"):
            raise OSError("killed")
        return real_replace(src, dst)

    monkeypatch.setattr(checkpoint.os, "replace", dying_replace)
    model, _ = bigbatch.load(run, checkpoint="latest")
    opt = torch.optim.AdamW(model.parameters())
    with pytest.raises(OSError, match="killed"):
        checkpoint.save_checkpoint(run / "checkpoints", 12, model, opt, {"step": 12}, load_config(TINY))
    monkeypatch.undo()
    assert not (run / "checkpoints" / "step_00000012").exists()
    found = find_resumable(run)
    assert found.name == ".replaced-step_00000012"
    assert read_trainer_state(found)["step"] == 12


def test_a_resave_leaves_one_complete_checkpoint(saved_run, tmp_path):
    run = copy_run(saved_run, tmp_path / "run")
    model, cfg = bigbatch.load(run, checkpoint="latest")
    state = read_trainer_state(run / "checkpoints" / "step_00000012")
    checkpoint.save_checkpoint(run / "checkpoints", 12, model, torch.optim.AdamW(model.parameters()), state, cfg,
                               keep_last=5)
    names = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert names == ["best", "latest", "step_00000004", "step_00000008", "step_00000012"]
    checkpoint.verify(run / "checkpoints" / "step_00000012")


class Payload:
    def __init__(self, marker="/nonexistent/bigbatch-pwned"):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def plant(path, marker):
    if path.suffix == ".pt":
        torch.save(Payload(marker), path)  # as torch would write it
    else:
        path.write_bytes(pickle.dumps(Payload(marker)))
    sums_file = path.parent / "checksums.json"
    while not sums_file.exists():
        sums_file = sums_file.parent.parent / "checksums.json"
    sums = json.loads(sums_file.read_text())
    sums[str(path.relative_to(sums_file.parent))] = checkpoint.sha256_file(path)  # the attacker rewrites these too
    sums_file.write_text(json.dumps(sums))


@pytest.mark.parametrize("target", ["trainer.pt", "state/.metadata"])
def test_a_planted_pickle_is_refused_with_one_line(saved_run, tmp_path, target):
    run = copy_run(saved_run, tmp_path / "run")
    ckpt = run / "checkpoints" / "step_00000012"
    if target == "trainer.pt":  # a checkpoint of the earlier format, whose trainer state was a torch pickle
        (ckpt / "trainer.json").unlink()
        sums = json.loads((ckpt / "checksums.json").read_text())
        del sums["trainer.json"]
        (ckpt / "checksums.json").write_text(json.dumps(sums))
    marker = tmp_path / "pwned"
    plant(ckpt / target, marker)
    proc = run_cli("train", "--run-dir", run, "--no-progress", "--set", "train.max_steps=14", check=False)
    last = proc.stderr.strip().splitlines()[-1]
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and last.startswith("bigbatch: error:"), proc.stderr
    assert f"{target}: refused" in last and "system" in last
    assert not marker.exists()


def test_dcp_metadata_naming_files_outside_its_directory_is_refused(saved_run, tmp_path):
    run = copy_run(saved_run, tmp_path / "run")
    state_dir = run / "checkpoints" / "step_00000012" / "state"
    with open(state_dir / ".metadata", "rb") as f:
        metadata = checkpoint._MetadataUnpickler(f).load()
    for info in metadata.storage_data.values():
        info.relative_path = "../../../../../../etc/passwd"
    (state_dir / ".metadata").write_bytes(pickle.dumps(metadata))
    with pytest.raises(UserError, match="outside its directory"):
        checkpoint._SafeReader(str(state_dir)).read_metadata()
    (state_dir / ".metadata").write_bytes(pickle.dumps([1, 2]))
    with pytest.raises(UserError, match="not checkpoint metadata"):
        checkpoint._SafeReader(str(state_dir)).read_metadata()


def test_pruning_never_deletes_the_checkpoint_just_written(saved_run, tmp_path):
    """Steps 8 and 12 fail verification: the run resumes from 4, sets them aside, and its new step-6
    checkpoint survives pruning (keep_last=2), though higher-numbered directories existed."""
    run = copy_run(saved_run, tmp_path / "run")
    for step in (8, 12):
        (run / "checkpoints" / f"step_{step:08d}" / "trainer.json").write_text("{}")
    train(load_config(TINY, QUIET + ["train.max_steps=6", "train.save_every=4", "train.keep_last=2"]), run,
          progress=False)
    names = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert names == [".corrupt-step_00000008", ".corrupt-step_00000012", "best", "latest", "step_00000004",
                     "step_00000006"], names
    assert find_resumable(run).name == "step_00000006"


def test_a_run_directory_in_use_is_refused(saved_run, tmp_path):
    run = copy_run(saved_run, tmp_path / "run")
    with checkpoint.run_dir_lock(run):
        proc = run_cli("train", "--run-dir", run, "--no-progress", "--set", "train.max_steps=14", check=False)
    assert proc.returncode == 2 and "is in use by another bigbatch process (pid " in proc.stderr, proc.stderr
    assert sorted(p.name for p in (run / "checkpoints").glob("step_*")) == sorted(
        p.name for p in (saved_run / "checkpoints").glob("step_*"))


def test_shards_missing_their_trained_tokenizer_are_refused(tmp_path):
    from bigbatch.data.pipeline import tokenizer_of

    assert tokenizer_of(tmp_path, "byte").vocab_size == 259
    with pytest.raises(UserError, match="tokenizer.json: missing, and these shards were tokenised with a bpe"):
        tokenizer_of(tmp_path, "bpe")


def test_dcp_byte_entries_load_as_data_only():
    planner = checkpoint._SafePlanner()
    planner.flatten_state_dict, planner.state_dict = False, {}

    class Item:
        class dest_index:
            fqn = "optim.param_groups"

    buf = io.BytesIO()
    torch.save({"lr": 0.1, "betas": (0.9, 0.95)}, buf)
    buf.seek(0)
    planner.load_bytes(Item, buf)
    assert planner.state_dict["optim.param_groups"] == {"lr": 0.1, "betas": (0.9, 0.95)}
    with pytest.raises(UserError, match="refused"):
        planner.load_bytes(Item, io.BytesIO(pickle.dumps(Payload())))


def test_trainer_pt_of_earlier_versions_still_loads(saved_run, tmp_path):
    """Data-only trainer.pt (tensors, numpy RNG arrays) written by earlier versions reads with weights_only."""
    import numpy as np

    run = copy_run(saved_run, tmp_path / "run")
    ckpt = run / "checkpoints" / "step_00000012"
    state = read_trainer_state(ckpt)
    state["rng"] = [{"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": __import__("random").getstate()}]
    torch.save(state, ckpt / "trainer.pt")
    (ckpt / "trainer.json").unlink()
    assert read_trainer_state(ckpt)["step"] == 12


@pytest.fixture
def fp16_on_cpu(monkeypatch):
    """fp16 with its gradient scaler, on this CPU (the product refuses it off CUDA: it is slow there); the
    scale grows every 2 clean steps instead of 2000, so a few steps move it."""
    def init(self, name, device):
        self.name, self.device = name, device
        self.scaler = torch.amp.GradScaler(device.type, enabled=(name == "fp16"), growth_interval=2)

    monkeypatch.setattr(precision_module.Precision, "__init__", init)


@pytest.mark.slow
def test_fp16_resume_is_exact_with_the_scaler_state(fp16_on_cpu, tmp_path):
    """The scaler backs off on the first overflowing steps; a resume must continue from its saved scale."""
    overrides = QUIET + ["train.precision=fp16", "train.save_every=2", "train.keep_last=5"]
    full = tmp_path / "full"
    train(load_config(TINY, overrides + ["train.max_steps=6"]), full, progress=False)
    rows = train_rows(full)
    assert rows[1]["loss_scale"] != 65536  # at the step-2 checkpoint the scale is not a fresh scaler's
    part = copy_run(full, tmp_path / "part")
    for step in (4, 6):
        shutil.rmtree(part / "checkpoints" / f"step_{step:08d}")
    (part / "checkpoints" / "latest").write_text("step_00000002\n")
    train(load_config(TINY, overrides + ["train.max_steps=6"]), part, progress=False)
    got = train_rows(part)
    assert [(r["loss"], r["loss_scale"]) for r in got] == [(r["loss"], r["loss_scale"]) for r in rows]


@pytest.mark.slow  # prepares the default's BPE data
def test_a_smoke_run_shorter_than_the_default_warmup_trains(tmp_path):
    proc = run_cli("train", "--run-dir", tmp_path / "smoke", "--no-progress", "--set", "train.max_steps=5",
                   "--set", "train.baseline=false", "--set", "train.sample_tokens=0")
    assert "optim.warmup: the first 8% of the run (1 of 5 steps)" in proc.stderr
    assert train_rows(tmp_path / "smoke")[-1]["step"] == 5


def test_a_model_too_big_for_memory_is_one_line_before_any_allocation(tmp_path):
    proc = run_cli("train", TINY, "--run-dir", tmp_path / "big", "--no-progress", "--set", "model.d_ff=100000000",
                   check=False)
    last = proc.stderr.strip().splitlines()[-1]
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert "the model has 6,500.0M parameters" in last and "GiB free on cpu" in last
