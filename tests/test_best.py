"""checkpoints/best, early stopping and honest evaluation, through the real command line."""

import json
import re

import pytest

from helpers import classify_rows, run_cli, write_jsonl


def _train(tmp_path, name, *sets):
    data = write_jsonl(tmp_path / "d.jsonl", classify_rows(1200, seed=3))
    args = ["train", "--run-dir", tmp_path / name, "--no-progress", "--json", "--set", "task=classify",
            "--set", f"data.source={data}", "--set", "model.d_model=32", "--set", "model.n_layers=1",
            "--set", "train.baseline=false", "--set", "train.log_every=5"]
    for s in sets:
        args += ["--set", s]
    return json.loads(run_cli(*args).stdout)


def _valid_rows(run):
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if r.get("split") == "valid"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("best")
    summary = _train(tmp, "run", "train.max_steps=60", "train.eval_every=6", "train.keep_last=1",
                     "train.eval_examples=40", "optim.lr=3e-3")
    return tmp / "run", summary


def test_best_names_the_best_evaluation_and_survives_pruning(run):
    run_dir, summary = run
    every = _valid_rows(run_dir)
    rows = [r for r in every if not r.get("full")]
    assert [r["step"] for r in rows] == list(range(6, 61, 6))  # 9 periodic + the final model on the same sample
    assert len({r["examples"] for r in rows}) == 1 and 25 <= rows[0]["examples"] <= 60  # one fixed sample of ~40
    full = [r for r in every if r.get("full")]
    assert len(full) == 1 and full[0]["examples"] > rows[0]["examples"]  # the final report reads the whole split
    best = max(rows, key=lambda r: (r["accuracy"], -r["step"]))  # the first of the highest
    name = (run_dir / "checkpoints" / "best").read_text().strip()
    assert name == f"step_{best['step']:08d}" and (run_dir / "checkpoints" / name / "model.safetensors").exists()
    assert summary["best_step"] == best["step"] and summary["best_value"] == best["accuracy"]
    kept = {p.name for p in (run_dir / "checkpoints").glob("step_*")}
    assert kept == {name, "step_00000060"}  # keep_last=1 prunes all but the latest and the best


@pytest.mark.slow
def test_eval_uses_best_and_scores_every_example(run):
    run_dir, _ = run
    full = [r for r in _valid_rows(run_dir) if r.get("full")][0]
    ev = json.loads(run_cli("eval", run_dir, "--json", "--no-baseline").stdout)
    assert ev["checkpoint"] == (run_dir / "checkpoints" / "best").read_text().strip()
    assert ev["examples"] == full["examples"]  # every example of the split
    last = json.loads(run_cli("eval", run_dir, "--json", "--no-baseline", "--checkpoint", "latest").stdout)
    assert last["checkpoint"] == "step_00000060" and last["accuracy"] == pytest.approx(full["accuracy"])
    manifest_dir = run_dir  # the test split: every example, or a seeded sample with --max-examples
    test = json.loads(run_cli("eval", manifest_dir, "--split", "test", "--json", "--no-baseline").stdout)
    sample = json.loads(run_cli("eval", run_dir, "--split", "test", "--json", "--no-baseline",
                                "--max-examples", "20").stdout)
    assert 5 <= sample["examples"] < test["examples"]
    again = json.loads(run_cli("eval", run_dir, "--split", "test", "--json", "--no-baseline",
                               "--max-examples", "20").stdout)
    assert again == sample  # seeded
    bad = run_cli("eval", run_dir, "--checkpoint", "step_7", check=False)
    assert bad.returncode == 2 and "no such checkpoint" in bad.stderr


@pytest.mark.slow
def test_patience_stops_a_run_that_does_not_improve(tmp_path):
    summary = _train(tmp_path, "flat", "train.max_steps=200", "train.eval_every=4", "train.patience=2",
                     "optim.lr=1e-9", "optim.warmup_steps=0")
    assert summary["early_stopped"] and summary["step"] == 12  # best at 4, no better at 8 and 12
    assert summary["best_step"] == 4


def test_tracker_keeps_the_best_and_counts_patience():
    from bigbatch.train.validation import BestTracker

    t = BestTracker("accuracy")
    marks = [t.update(step, {"accuracy": a}) for step, a in enumerate([0.5, 0.6, 0.55, 0.6, 0.7, float("nan")])]
    assert marks == [True, True, False, False, True, False]
    assert (t.value, t.step, t.since) == (0.7, 4, 1) and t.patience_spent(1) and not t.patience_spent(2)
    loss = BestTracker("loss")
    assert [loss.update(s, {"loss": v}) for s, v in enumerate([2.0, 1.5, 1.7])] == [True, True, False]


def test_baseline_is_reported_beside_the_model(run):
    run_dir, summary = run
    ev = json.loads(run_cli("eval", run_dir, "--split", "test", "--json").stdout)
    base = ev["baseline"]
    assert base["method"] == "tfidf_logreg" and base["split"] == "test" and 0 < base["accuracy"] <= 1
    assert base["eval_examples"] == ev["examples"]  # the same test examples


@pytest.mark.slow
def test_a_finished_run_trains_nothing_again_and_keeps_its_summary(tmp_path):
    first = _train(tmp_path, "done", "train.max_steps=8", "train.eval_every=4", "train.eval_examples=20")
    run_dir = tmp_path / "done"
    rows, summary = (run_dir / "metrics.jsonl").read_text(), (run_dir / "summary.json").read_text()
    again = run_cli("train", "--run-dir", run_dir, "--no-progress", "--json")
    assert "had already finished at step 8: nothing to train" in again.stderr
    assert json.loads(again.stdout)["step"] == first["step"] == 8
    assert (run_dir / "metrics.jsonl").read_text() == rows  # no second full evaluation row
    assert (run_dir / "summary.json").read_text() == summary and "NaN" not in summary
    more = run_cli("train", "--run-dir", run_dir, "--no-progress", "--json", "--set", "train.max_steps=10")
    assert json.loads(more.stdout)["step"] == 10 and "nothing to train" not in more.stderr  # a larger budget trains
    assert json.loads((run_dir / "summary.json").read_text())["step"] == 10


@pytest.mark.slow
def test_dropout_of_a_time_budget_with_the_model_given_is_estimated(tmp_path):
    """The device is measured for the dropout rule too, not only to size the model."""
    data = write_jsonl(tmp_path / "d.jsonl", classify_rows(300, seed=4))
    proc = run_cli("train", "--run-dir", tmp_path / "r", "--no-progress", "--set", "task=classify", "--set",
                   f"data.source={data}", "--set", "model.d_model=32", "--set", "model.n_layers=1", "--set",
                   "train.max_time_s=2", "--set", "train.baseline=false")
    note = next(n for n in proc.stderr.split("; ") if n.startswith("model.dropout="))
    assert "passes over the training data" in note


def test_a_run_that_stops_inside_its_fixed_warmup_says_so(tmp_path):
    data = write_jsonl(tmp_path / "d.jsonl", classify_rows(300, seed=5))
    proc = run_cli("train", "--run-dir", tmp_path / "r", "--no-progress", "--set", "task=classify", "--set",
                   f"data.source={data}", "--set", "model.d_model=32", "--set", "model.n_layers=1", "--set",
                   "train.max_time_s=2", "--set", "optim.warmup_steps=100000", "--set", "train.baseline=false")
    assert "inside its 100000 warm-up steps (optim.warmup_steps)" in proc.stderr


def test_periodic_validation_is_printed_without_a_progress_bar(tmp_path):
    data = write_jsonl(tmp_path / "d.jsonl", classify_rows(300, seed=6))
    proc = run_cli("train", "--run-dir", tmp_path / "r", "--no-progress", "--set", "task=classify", "--set",
                   f"data.source={data}", "--set", "model.d_model=32", "--set", "model.n_layers=1", "--set",
                   "train.max_steps=6", "--set", "train.eval_every=3", "--set", "train.baseline=false",
                   "--set", "data.tokenizer=bpe", "--set", "data.vocab_size=4000")
    assert re.search(r"^valid at step 3: loss \d+\.\d{4}, accuracy \d\.\d{4}", proc.stderr, re.M)
    # the tokenizer learned fewer ids than asked, and the data line says so
    assert re.search(r"tokenizer bpe \(\d+ ids, of data.vocab_size=4000: the training text gave no more\)", proc.stderr)
