"""What benchmarks/faults.py found, kept as fast tests: a full disk during a checkpoint write stops with one
line and keeps the previous checkpoint; a skipped step with a finite loss (NaN gradient) still plots; a fresh
start over the metrics of an attempt that died before its first checkpoint does not append to them."""

import contextlib
import errno
import json
import os
import pathlib
import shutil

import pytest
import safetensors
import torch
from torch.distributed.checkpoint import filesystem

import bigbatch
from bigbatch.config import load_config
from bigbatch.errors import UserError
from bigbatch.train import checkpoint
from bigbatch.train.loop import train
from bigbatch.train.metrics import write_run_plots

from helpers import TINY, train_rows

QUIET = ["train.eval_every=0", "train.sample_tokens=0", "train.baseline=false", "train.log_every=1",
         "optim.warmup_steps=1"]


@pytest.fixture(scope="module")
def saved_run(tmp_path_factory):
    """4 steps with checkpoints at 2 and 4."""
    run_dir = tmp_path_factory.mktemp("faults") / "run"
    train(load_config(TINY, QUIET + ["train.max_steps=4", "train.save_every=2", "train.keep_last=5"]), run_dir,
          progress=False)
    return run_dir


def no_space(path):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))


def fill_disk(monkeypatch, where: str) -> None:
    """The write of ``where`` in a step_00000006 checkpoint fails as a full disk makes it fail."""
    if where == "dcp":
        real = filesystem.FileSystem.create_stream

        @contextlib.contextmanager
        def create_stream(self, path, mode):
            with real(self, path, mode) as stream:
                if "step_00000006" in str(path) and "w" in mode:
                    stream.write(b"\0" * 100)
                    no_space(path)
                yield stream

        monkeypatch.setattr(filesystem.FileSystem, "create_stream", create_stream)
    elif where == "safetensors":
        def st_save_model(model, filename, *args, **kwargs):  # what safetensors (Rust) raises on ENOSPC
            raise safetensors.SafetensorError("Error while serializing: I/O error: No space left on device "
                                              "(os error 28)")

        monkeypatch.setattr(checkpoint, "st_save_model", st_save_model)
    else:
        real_write = pathlib.Path.write_text

        def write_text(self, data, *args, **kwargs):
            if self.name == where and "step_00000006" in str(self):
                real_write(self, data[:10], *args, **kwargs)
                no_space(self)
            return real_write(self, data, *args, **kwargs)

        monkeypatch.setattr(pathlib.Path, "write_text", write_text)


@pytest.mark.parametrize("where", ["dcp", "safetensors", "trainer.json", "checksums.json"])
def test_a_full_disk_names_the_directory_and_keeps_the_previous_checkpoint(saved_run, tmp_path, monkeypatch, where):
    run = shutil.copytree(saved_run, tmp_path / "run")
    model, cfg = bigbatch.load(run, checkpoint="latest")
    optimizer = torch.optim.AdamW(model.parameters())
    fill_disk(monkeypatch, where)
    with pytest.raises(UserError) as e:
        checkpoint.save_checkpoint(run / "checkpoints", 6, model, optimizer, {"step": 6}, cfg, keep_last=5)
    monkeypatch.undo()
    message = str(e.value)
    assert "checkpoints/step_00000006: no space left on device" in message
    assert "needs about" in message and "(the size of step_00000004)" in message
    assert "step_00000004 is intact" in message and "\n" not in message
    assert not list((run / "checkpoints").glob(".tmp-step_*"))  # the partial directory is gone
    assert checkpoint.find_resumable(run).name == "step_00000004"
    assert checkpoint.read_trainer_state(run / "checkpoints" / "step_00000004")["step"] == 4


def test_other_checkpoint_errors_are_not_called_a_full_disk(saved_run, tmp_path, monkeypatch):
    run = shutil.copytree(saved_run, tmp_path / "run")
    model, cfg = bigbatch.load(run, checkpoint="latest")

    def broken(model, filename, *args, **kwargs):
        raise OSError(errno.EIO, "I/O error")

    monkeypatch.setattr(checkpoint, "st_save_model", broken)
    with pytest.raises(OSError, match="I/O error"):
        checkpoint.save_checkpoint(run / "checkpoints", 6, model, torch.optim.AdamW(model.parameters()), {"step": 6},
                                   cfg)


def test_a_skipped_step_with_a_finite_loss_plots(saved_run, tmp_path):
    """A NaN gradient with a finite loss logs a skipped row that has a loss but no lr: the plots leave it out."""
    run = shutil.copytree(saved_run, tmp_path / "run")
    rows = (run / "metrics.jsonl").read_text().splitlines()
    skipped = {"step": 3, "skipped": True, "loss": 3.5, "grad_norm": None, "data": ["x.bin tokens 0..64"]}
    rows.insert(2, json.dumps(skipped))
    (run / "metrics.jsonl").write_text("\n".join(rows) + "\n")
    for png in write_run_plots(run):
        assert png.read_bytes()[:4] == b"\x89PNG"


def test_a_fresh_start_drops_the_metrics_of_an_attempt_without_a_checkpoint(tmp_path):
    """An attempt killed before its first checkpoint left metrics rows; the next start begins at step 1 again and
    must not append a second step 1."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "loss": 99.0}) + "\n" for s in (1, 2, 3)))
    train(load_config(TINY, QUIET + ["train.max_steps=2", "train.save_every=0"]), run, progress=False)
    rows = train_rows(run)
    assert [r["step"] for r in rows] == [1, 2] and all(r["loss"] != 99.0 for r in rows)


def test_a_prepare_killed_while_saving_its_tokenizer_prepares_again(tmp_path, monkeypatch):
    """The trained tokenizer is saved aside and renamed: a half-written tokenizer.json is never left for the
    next run to trust (which then refused it: "not a valid tokenizer.json")."""
    from bigbatch.data import prepare as prep
    from bigbatch.data import tokenizer as tokenizers

    from helpers import sentences, write_jsonl

    source = write_jsonl(tmp_path / "d.jsonl", [{"text": s} for s in sentences(300)])
    spec = prep.PrepareSpec(source=str(source), tokenizer="bpe", vocab_size=300, workers=1, shard_tokens=2000)

    def dying(self, directory):
        (pathlib.Path(directory) / "tokenizer.json").write_text('{"version": "1.0", "trunc')
        raise KeyboardInterrupt  # the process dies in the middle of the write

    monkeypatch.setattr(tokenizers.HFTokenizer, "save", dying)
    with pytest.raises(KeyboardInterrupt):
        prep.prepare(spec, tmp_path / "out", progress=False)
    monkeypatch.undo()
    out = prep.prepare(spec, tmp_path / "out", progress=False)
    assert (out / "manifest.json").exists() and not (out / ".tokenizer.tmp").exists()
    assert tokenizers.load_tokenizer_file(out / "tokenizer.json").vocab_size <= 300
