"""Task-aware defaults: unset keys resolved from the task, the data and the budget; explicit keys kept."""

import dataclasses
import json

import pytest

from bigbatch.config import load_config
from bigbatch.data.pipeline import resolve_before_data, vocab_for
from bigbatch.errors import UserError
from bigbatch.train.defaults import DataStats, choose_model, fill_unset_from, resolve_from_data
from bigbatch.train.optim import lr_factor

from helpers import run_cli, write_jsonl

STATS = DataStats(n_examples=40_000, n_tokens=4_000_000, length_p99=180, n_labels=20)


def test_vocabulary_grows_with_the_corpus():
    assert vocab_for(1_000_000) == 4032  # 4000 rounded up to a multiple of 64
    assert vocab_for(10_000_000) == 8000
    assert vocab_for(100_000_000) == 16000
    assert vocab_for(10) == 2048 and vocab_for(10**12) == 32000
    # translation: half, 2k at 2 MB (the output layer is the largest matrix of a small translator)
    assert vocab_for(2_000_000, "translate") == 2048 and vocab_for(20_000_000, "translate") == 4032
    assert vocab_for(200_000_000, "translate") == 8000 and vocab_for(10, "translate") == 2048


def test_tokenizer_by_task_and_source(tmp_path):
    (tmp_path / "a.txt").write_text("hello world\n" * 100)
    cls = resolve_before_data(load_config(None, ["task=classify", f"data.source={tmp_path / 'a.txt'}"]))[0]
    assert cls.data.tokenizer == "bpe" and cls.data.vocab_size == vocab_for(1200)
    code = resolve_before_data(load_config(None, ["data.source=builtin:python-stdlib"]))[0]
    assert code.data.tokenizer == "bpe"  # bytes only when asked
    asked = resolve_before_data(load_config(None, ["data.source=builtin:python-stdlib", "data.tokenizer=byte"]))[0]
    assert asked.data.tokenizer == "byte"
    given = resolve_before_data(load_config(None, ["task=classify", f"data.source={tmp_path / 'a.txt'}",
                                                   "data.tokenizer=unigram", "data.vocab_size=500"]))[0]
    assert (given.data.tokenizer, given.data.vocab_size) == ("unigram", 500)


def _resolved(*sets, stats=STATS):
    cfg = load_config(None, ["task=classify", "data.tokenizer=bpe", "data.vocab_size=8000", *sets])
    return resolve_from_data(cfg, stats, peak_flops=5e10)


def test_classification_defaults_from_the_data():
    cfg, notes = _resolved()
    assert cfg.model.max_len == 184  # the 99th percentile, rounded up to 8
    t = cfg.train
    assert t.global_batch_tokens % t.micro_batch_tokens == 0 and t.micro_batch_tokens >= cfg.model.max_len + 1
    assert t.global_batch_tokens == 4096  # ~1000 steps per epoch of 4M tokens
    assert t.epochs is not None and t.max_steps == pytest.approx(t.epochs * 4e6 * 1.15 / 4096, rel=0.01)
    assert t.label_smoothing == 0.1 and cfg.model.dropout == 0.0  # 8 passes: too few for dropout to pay
    assert cfg.optim.schedule == "wsd" and cfg.optim.lr is not None and cfg.model.d_model % cfg.model.n_heads == 0
    assert any(n.startswith("model.d_model=") for n in notes) and any("label_smoothing" in n for n in notes)


def test_dropout_follows_the_passes_over_the_data():
    many, notes = _resolved("train.epochs=40")
    assert many.model.dropout == 0.1 and any("40 passes" in n for n in notes)
    few, _ = _resolved("train.epochs=5")
    assert few.model.dropout == 0.0
    # a time budget: passes from this device's estimated tokens/s (5e10 FLOP/s) x the seconds
    short, _ = _resolved("train.max_time_s=60")
    long, _ = _resolved("train.max_time_s=60000", "model.d_model=128", "model.n_layers=2")
    assert short.model.dropout == 0.0 and long.model.dropout == 0.1


def test_explicit_keys_are_kept():
    cfg, notes = _resolved("model.d_model=96", "model.n_heads=3", "model.dropout=0", "optim.lr=3e-3",
                           "train.max_steps=77", "train.global_batch_tokens=8192", "optim.schedule=cosine")
    assert (cfg.model.d_model, cfg.model.n_heads, cfg.model.dropout) == (96, 3, 0.0)
    assert (cfg.optim.lr, cfg.train.max_steps, cfg.train.global_batch_tokens) == (3e-3, 77, 8192)
    assert cfg.optim.schedule == "cosine" and cfg.train.epochs is None
    assert not any(n.startswith(("optim.lr", "train.max_steps")) for n in notes)


def test_time_budget_sizes_the_model_and_the_cadence():
    small, _ = _resolved("train.max_time_s=60")
    large, _ = _resolved("train.max_time_s=60000")
    assert small.model.d_model * small.model.n_layers < large.model.d_model * large.model.n_layers
    assert small.train.max_steps is None and small.train.epochs is None  # the clock bounds the run
    assert small.train.eval_every_s == 6.0
    # more budget never picks a smaller model
    sizes = [choose_model("classify", None, s, 5e10, 8000)[:2] for s in (10, 100, 1000, 10000, 100000)]
    assert [d * n for d, n in sizes] == sorted(d * n for d, n in sizes)


def test_single_class_and_too_small_data_are_refused():
    with pytest.raises(UserError, match="label column 'label' has 1 distinct value"):
        _resolved(stats=dataclasses.replace(STATS, n_labels=1))


def test_resume_takes_the_runs_resolved_values():
    saved, _ = _resolved("train.max_time_s=60")
    again = fill_unset_from(saved, load_config(None, ["task=classify", "train.max_time_s=60", "model.dropout=0.3"]))
    assert (again.model.d_model, again.model.n_layers, again.train.global_batch_tokens) == \
        (saved.model.d_model, saved.model.n_layers, saved.train.global_batch_tokens)
    assert again.model.dropout == 0.3  # what the user sets still wins (and the model check then refuses it)


def test_schedule_follows_the_runs_progress():
    cfg = load_config(None, ["optim.schedule=wsd", "optim.min_lr_ratio=0.0"]).optim
    assert lr_factor(0, cfg, progress=0.0) == pytest.approx(0.01)  # warm-up over the first 3%
    assert lr_factor(5, cfg, progress=0.015) == pytest.approx(0.5)
    assert lr_factor(50, cfg, progress=0.5) == 1.0
    assert lr_factor(90, cfg, progress=0.9) == pytest.approx(0.5)  # decay over the last 20%
    assert lr_factor(99, cfg, progress=1.0) == pytest.approx(0.0)


def test_single_label_column_is_one_line_exit_2(tmp_path):
    data = write_jsonl(tmp_path / "one.jsonl", [{"text": f"row {i}", "label": "same"} for i in range(200)])
    proc = run_cli("train", "--set", "task=classify", "--set", f"data.source={data}", "--run-dir", tmp_path / "r",
                   check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("bigbatch: error: ")
    assert "has 1 distinct value(s)" in proc.stderr


@pytest.mark.slow
def test_time_bounded_run_ends_annealed_and_keeps_its_budget_on_resume(tmp_path):
    """A run bounded only by train.max_time_s decays its lr to the floor by the end; run again in the same
    directory it finds the budget spent and trains no further step."""
    rows = [{"t": f"{w} {v}", "y": w} for w in ("red", "blue") for v in range(300)]
    data = write_jsonl(tmp_path / "d.jsonl", rows)
    args = ["train", "--run-dir", tmp_path / "run", "--no-progress", "--json", "--set", "task=classify",
            "--set", f"data.source={data}", "--set", "data.text_field=t", "--set", "data.label_field=y",
            "--set", "train.max_time_s=4", "--set", "train.log_every=1", "--set", "train.baseline=false",
            "--set", "optim.min_lr_ratio=0"]
    first = json.loads(run_cli(*args).stdout)
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    lrs = [r["lr"] for r in rows if "lr" in r]
    assert max(lrs) > 10 * lrs[-1]  # annealed: the last lr is far below the peak
    periodic = [r for r in rows if r.get("split") == "valid" and not r.get("full")]
    assert 6 <= len(periodic) <= 11  # train.eval_every_s = max_time_s / 10: about ten evaluations by the clock
    assert 4 <= first["train_seconds"] < 8
    second = json.loads(run_cli(*args).stdout)
    assert second["step"] == first["step"]  # the budget was spent: resumed, no further step


@pytest.mark.slow
def test_resume_without_a_config_uses_the_runs_own(tmp_path):
    """`bigbatch train --run-dir X` (no CONFIG) resumes X with X's config.yaml, not the embedded default."""
    from helpers import TINY

    quiet = ["--set", "train.eval_every=0", "--set", "train.sample_tokens=0", "--no-progress"]
    run_cli("train", TINY, "--run-dir", tmp_path / "r", "--set", "train.max_steps=8", *quiet)
    proc = run_cli("train", "--run-dir", tmp_path / "r", "--set", "train.max_steps=10", "--json", *quiet)
    assert json.loads(proc.stdout)["step"] == 10 and "resuming" in proc.stderr


def test_resume_with_a_new_lr_or_epochs_takes_them():
    from bigbatch.train.optim import scale_for_batch

    saved, _ = _resolved()
    saved = dataclasses.replace(saved, optim=scale_for_batch(saved.optim, 4096)[0])  # as config.yaml holds it
    again = fill_unset_from(saved, load_config(None, ["task=classify", "optim.lr=5e-4", "train.epochs=1"]))
    assert scale_for_batch(again.optim, 4096)[0].lr == 5e-4
    assert again.train.epochs == 1 and again.train.max_steps is None  # re-derived from the new epochs
    cfg, _ = resolve_from_data(again, STATS)
    assert cfg.train.max_steps == pytest.approx(4e6 * 1.15 / cfg.train.global_batch_tokens, rel=0.01)


@pytest.mark.slow
def test_a_run_stopped_before_its_first_checkpoint_keeps_its_config(tmp_path):
    """config.yaml is written before the data is prepared: a run that dies there restarts as itself."""
    bad = tmp_path / "d.jsonl"
    bad.write_text('{"body": "no label here"}\n')
    run_dir = tmp_path / "r"
    first = run_cli("train", "--run-dir", run_dir, "--set", "task=classify", "--set", f"data.source={bad}", check=False)
    again = run_cli("train", "--run-dir", run_dir, check=False)  # the same config, not the embedded default LM
    assert first.returncode == again.returncode == 2
    assert "missing field 'text'" in again.stderr and "python-stdlib" not in again.stderr
    assert load_config(run_dir / "config.yaml").task == "classify"
