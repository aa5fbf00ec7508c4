"""train.batch_schedule: ramp and adaptive batches, their lr, exact resume, bad input."""

import dataclasses
import json
import shutil

import pytest

from bigbatch.config import load_config
from bigbatch.errors import UserError
from bigbatch.train.batch_schedule import BatchSchedule
from bigbatch.train.loop import train

from helpers import TINY, run_cli, train_rows

def sets(*pairs):
    return [x for p in pairs for x in ("--set", p)]


QUIET = ["train.eval_every=0", "train.sample_tokens=0", "train.log_every=1", "train.baseline=false"]


def schedule(*overrides, micro=1, accum=16, ranks=1):
    return BatchSchedule(load_config(TINY, list(overrides)), micro, accum, ranks, 1, "rows")


def test_ramp_grows_linearly_over_tokens_in_whole_micro_batches():
    s = schedule("train.batch_schedule=ramp", "train.batch_start=4", "train.batch_ramp_tokens=1000", micro=2, accum=8)
    # 4 -> 16 rows over 1000 tokens, micro-batches of 2 rows: 2 -> 8 micro-batches, rounded up
    assert [s.micro_batches(0, t) for t in (0, 1, 100, 500, 999, 1000, 5000)] == [2, 3, 3, 5, 8, 8, 8]
    assert s.units == 16


def test_adaptive_follows_the_noise_scale_clamped_and_only_grows():
    s = schedule("train.batch_schedule=adaptive", "train.batch_min=2", "train.batch_max=12",
                 "train.batch_noise_factor=0.5", "train.batch_adapt_every=5")
    assert s.units == 2
    # 64 targets a micro-batch: 0.5 x 600 / 64 = 4.7 -> 5 micro-batches
    assert s.adapt(4, 600.0, 128, 2) is None and s.units == 2  # not a decision step
    assert s.adapt(5, 600.0, 128, 2, updates=19) is None  # too few measurements yet
    assert s.adapt(5, 600.0, 128, 2) and s.units == 4  # at most doubling
    assert s.adapt(10, 600.0, 256, 4) and s.units == 5
    assert s.adapt(15, 100.0, 320, 5) is None and s.units == 5  # a smaller estimate does not shrink it
    assert s.adapt(20, 1e6, 320, 5) and s.units == 10 and s.adapt(25, 1e6, 640, 10) and s.units == 12  # batch_max
    assert s.lr_factor(2) == pytest.approx(6 ** 0.5)  # sqrt rule from the reference batch
    shrinking = schedule("train.batch_schedule=adaptive", "train.batch_min=2", "train.batch_max=12",
                         "train.batch_shrink=true", "train.batch_adapt_every=1")
    shrinking.adapt(1, 2000.0, 128, 2)
    shrinking.adapt(2, 2000.0, 256, 4)
    assert shrinking.units == 8
    shrinking.adapt(3, 10.0, 512, 8)
    assert shrinking.units == 4


def test_sgd_follows_the_batch_linearly():
    s = schedule("train.batch_schedule=adaptive", "train.batch_min=2", "optim.name=sgd", "train.batch_adapt_every=1")
    s.adapt(1, 64.0 * 8, 64, 1)
    s.adapt(2, 64.0 * 8, 128, 2)
    assert s.units == 4 and s.lr_factor(2) == pytest.approx(2.0)  # 0.5 x 512 / 64 = 4


@pytest.mark.parametrize("overrides, message", [
    (["train.batch_schedule=adaptive", "train.batch_min=8", "train.batch_max=4"], "batch_min=8 is larger"),
    (["train.batch_schedule=ramp"], "needs train.batch_ramp_tokens"),
    (["train.batch_min=2"], "applies to train.batch_schedule=ramp or adaptive"),
    (["train.batch_schedule=adaptive", "train.batch_warmup_steps=4"], "batch_warmup_steps=4 is a fixed"),
    (["train.batch_schedule=adaptive", "train.batch_noise_factor=0"], "batch_noise_factor"),
])
def test_contradictory_batch_keys_are_refused(overrides, message):
    with pytest.raises(UserError, match=message):
        load_config(TINY, overrides)


def test_a_batch_that_is_not_whole_micro_batches_exits_2_in_one_line(tmp_path):
    proc = run_cli("train", TINY, "--run-dir", tmp_path / "r", "--no-progress",
                   *sets("train.batch_schedule=adaptive", "train.batch_min=3", "train.micro_batch_size=2"), check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].endswith(
        "train.batch_start=3 rows is not a whole number of micro-batches of 2 rows (micro-batch x 1 ranks); "
        "set train.micro_batch_size to a divisor of it")


ADAPTIVE = QUIET + ["train.max_steps=30", "train.batch_schedule=adaptive", "train.global_batch_size=16",
                    "train.batch_min=2", "train.micro_batch_size=1", "train.batch_adapt_every=3",
                    "train.save_every=24", "train.keep_last=5", "train.batch_noise_factor=100"]


@pytest.fixture(scope="module")
def adaptive_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("adaptive") / "run"
    train(load_config(TINY, ADAPTIVE), run_dir, progress=False)
    return run_dir


def test_adaptive_run_grows_its_batch_and_its_lr(adaptive_run):
    rows = train_rows(adaptive_run)
    batches = [r["global_batch"] for r in rows]
    assert batches[0] == 2 and batches[-1] > batches[0] and batches == sorted(batches)
    assert all(b % 1 == 0 and 2 <= b <= 16 for b in batches)
    # each step reads its batch: tokens grow by global_batch x seq_len
    assert all(b["tokens"] - a["tokens"] == b["global_batch"] * 64 for a, b in zip(rows, rows[1:]))
    cfg = load_config(adaptive_run / "config.yaml")
    constant = [r for r in rows if r["step"] > cfg.train.max_steps * 0.1]  # past the warm-up
    assert any(r["noise_scale"] for r in rows if "noise_scale" in r)
    assert max(r["lr"] for r in constant) > cfg.optim.lr  # the sqrt rule raised it with the batch


def test_adaptive_run_resumes_exactly_after_its_batch_changed(adaptive_run, tmp_path):
    rows = train_rows(adaptive_run)
    assert rows[23]["global_batch"] != rows[0]["global_batch"]  # the checkpoint at step 24 is after a change
    resumed = tmp_path / "resumed"
    shutil.copytree(adaptive_run, resumed)
    shutil.rmtree(resumed / "checkpoints" / "step_00000030")
    (resumed / "checkpoints" / "latest").write_text("step_00000024\n")
    trainer = json.loads((resumed / "checkpoints" / "step_00000024" / "trainer.json").read_text())
    assert trainer["batch"]["units"] == rows[24]["global_batch"]  # the batch of the next step
    train(load_config(TINY, ADAPTIVE), resumed, progress=False)
    again = train_rows(resumed)
    keys = ("loss", "global_batch", "lr", "tokens", "noise_scale")
    assert [[r.get(k) for k in keys] for r in again] == [[r.get(k) for k in keys] for r in rows]


@pytest.mark.slow
def test_fixed_schedule_is_unchanged_by_the_new_keys(tmp_path):
    cfg = load_config(TINY, QUIET + ["train.max_steps=6"])
    assert dataclasses.replace(cfg).train.batch_schedule == "fixed"
    train(cfg, tmp_path / "r", progress=False)
    assert [r["global_batch"] for r in train_rows(tmp_path / "r")] == [8] * 6
