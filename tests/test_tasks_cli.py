"""Classification and translation through the real command line: prepare on the fly, train, eval, predict."""

import json
import shutil

import numpy as np
import pytest

from helpers import run_cli as cli
from helpers import write_jsonl


@pytest.fixture(scope="module")
def classify_run(tmp_path_factory):
    """A task a model can learn: does the sentence mention a fruit or a tool?"""
    d = tmp_path_factory.mktemp("cls")
    rng = np.random.default_rng(0)
    fruit, tool = ["apple", "pear", "plum", "cherry", "mango"], ["hammer", "saw", "drill", "wrench", "chisel"]
    filler = "the a my your this old new red big small".split()
    rows = []
    for _ in range(1500):
        label = rng.choice(["fruit", "tool"])
        words = list(rng.choice(filler, size=rng.integers(2, 10))) + [rng.choice(fruit if label == "fruit" else tool)]
        rng.shuffle(words)
        rows.append({"sentence": " ".join(words), "topic": str(label)})
    write_jsonl(d / "data.jsonl", rows)
    run = d / "run"
    proc = cli("train", "--run-dir", run, "--no-progress", "--json",
               "--set", "task=classify", "--set", f"data.source={d / 'data.jsonl'}",
               "--set", "data.text_field=sentence", "--set", "data.label_field=topic",
               "--set", "model.d_model=64", "--set", "model.n_heads=4", "--set", "model.n_layers=2",
               "--set", "model.max_len=64", "--set", "train.max_steps=400", "--set", "train.micro_batch_tokens=512",
               "--set", "train.eval_every=0", "--set", "train.save_every=0", "--set", "optim.lr=3e-3",
               "--set", "optim.warmup_steps=10")
    return run, json.loads(proc.stdout)


def test_classification_learns_and_reports(classify_run):
    run, summary = classify_run
    assert summary["valid_accuracy"] > 0.9 and summary["valid_macro_f1"] > 0.9
    assert json.loads((run / "labels.json").read_text()) in (["fruit", "tool"], ["tool", "fruit"])
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert all(0 <= r["padding_fraction"] < 0.5 for r in rows if "split" not in r)


@pytest.mark.slow
def test_classify_and_eval_commands(classify_run):
    run, summary = classify_run
    out = cli("classify", run, "--json", "my old apple", "the big hammer").stdout.splitlines()
    assert [json.loads(x)["label"] for x in out] == ["fruit", "tool"]
    assert [json.loads(x)["text"] for x in out] == ["my old apple", "the big hammer"]
    out = cli("classify", run, stdin="a red plum\nsmall saw\n").stdout.splitlines()
    assert [x.split("\t")[0] for x in out] == ["fruit", "tool"]
    ev = json.loads(cli("eval", run, "--json").stdout)
    assert ev["accuracy"] == pytest.approx(summary["valid_accuracy"])
    assert json.loads(cli("eval", run, "--split", "test", "--json").stdout)["accuracy"] > 0.9


@pytest.mark.slow
def test_a_checkpoint_copied_out_of_its_run_answers_the_same(classify_run, tmp_path):
    """A checkpoint directory carries its tokenizer and class names; one that lacks them is refused."""
    run, _ = classify_run
    best = run / "checkpoints" / (run / "checkpoints" / "best").read_text().strip()
    assert {"tokenizer.json", "labels.json"} <= {p.name for p in best.iterdir()}
    shipped = tmp_path / "shipped"
    shutil.copytree(best, shipped)
    args = ["--json", "my old apple", "the big hammer", "a small plum"]
    assert cli("classify", shipped, *args).stdout == cli("classify", run, *args).stdout
    for name in ("tokenizer.json", "labels.json"):  # as a checkpoint of an earlier version, outside its run
        old = tmp_path / f"old-{name}"
        shutil.copytree(best, old)
        (old / name).unlink()
        sums = json.loads((old / "checksums.json").read_text())
        del sums[name]
        (old / "checksums.json").write_text(json.dumps(sums))
        proc = cli("classify", old, "an apple", check=False)
        assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
        assert f"no {name}" in proc.stderr


@pytest.mark.slow
def test_translation_end_to_end(tmp_path):
    """Learn to reverse the word order from JSONL with custom field names."""
    rng = np.random.default_rng(1)
    words = "cat dog sun moon tree rock fish bird star leaf".split()
    rows = [{"en": " ".join(p), "xx": " ".join(p[::-1])} for p in (rng.choice(words, size=rng.integers(4, 8))
                                                                     for _ in range(3000))]
    write_jsonl(tmp_path / "pairs.jsonl", rows)
    run = tmp_path / "run"
    proc = cli("train", "--run-dir", run, "--no-progress", "--json", "--set", "task=translate",
               "--set", f"data.source={tmp_path / 'pairs.jsonl'}", "--set", "data.src_field=en",
               "--set", "data.tgt_field=xx", "--set", "data.tokenizer=bpe", "--set", "data.vocab_size=300",
               "--set", "model.d_model=64", "--set", "model.n_heads=4", "--set", "model.n_layers=2",
               "--set", "model.max_len=64", "--set", "train.max_steps=500", "--set", "train.micro_batch_tokens=1024",
               "--set", "train.eval_every=0", "--set", "train.save_every=0", "--set", "optim.lr=2e-3",
               "--set", "optim.warmup_steps=30", "--set", "train.baseline=false")
    summary = json.loads(proc.stdout)
    assert summary["valid_bleu"] > 50, summary
    assert (run / "tokenizer.json").exists()
    out = cli("translate", run, "cat dog sun moon", "--beam", "2").stdout.strip()
    assert out == "moon sun dog cat"
    shutil.copytree(run / "checkpoints" / "step_00000500", tmp_path / "shipped")
    assert cli("translate", tmp_path / "shipped", "cat dog sun moon", "--beam", "2").stdout.strip() == out
    ev = json.loads(cli("eval", run, "--json", "--beam", "2").stdout)
    assert ev["bleu"] > 50 and ev["chrf"] > 50 and ev["examples"] == summary["valid_examples"]
    assert ev["baseline"]["method"] in ("copy_source", "word_dictionary") and ev["bleu"] > ev["baseline"]["bleu"]


def test_wrong_task_for_command(classify_run):
    run, _ = classify_run
    proc = cli("translate", run, "x", check=False)
    assert proc.returncode == 2 and "needs a task=translate run" in proc.stderr


@pytest.mark.slow
def test_attention_heatmaps_from_the_command_line(classify_run, tmp_path):
    run, _ = classify_run
    out = tmp_path / "a.png"
    proc = cli("attention", run, "my red apple", "--layer", "-1", "--out", out)
    assert out.stat().st_size > 1000 and out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "encoder attention, layer 1, head all" in proc.stdout
    one = cli("attention", run, "my red apple", "--head", "3", "--out", tmp_path / "h.png")
    assert "head 3" in one.stdout
    for bad, message in ((["--layer", "7"], "--layer 7: the encoder attention has layers 0..1"),
                         (["--head", "9"], "--head 9: this layer has heads 0..3"),
                         (["--stack", "cross"], "--stack cross: this model has encoder")):
        proc = cli("attention", run, "apple", *bad, "--out", tmp_path / "x.png", check=False)
        assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr
