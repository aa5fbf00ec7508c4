"""The recurrent baselines (model.arch lstm | gru): padding invariance, cached decoding equal to teacher forcing,
beam search through the shared decoder, and training through the same loop from the command line."""

import json

import numpy as np
import pytest
import torch

from bigbatch.config import Config, ModelConfig
from bigbatch.errors import UserError
from bigbatch.nn.generate import translate
from bigbatch.nn.models import build_model, flops_per_token
from bigbatch.nn.rnn import RNNClassifier, RNNSeq2Seq
from helpers import run_cli as cli
from helpers import write_jsonl


@pytest.mark.parametrize("arch,pool", [("lstm", "mean"), ("gru", "mean"), ("lstm", "last")])
def test_classifier_ignores_padding(arch, pool):
    torch.manual_seed(0)
    m = RNNClassifier(vocab_size=20, d_model=16, n_layers=2, num_classes=3, arch=arch, pad_id=0, pool=pool).eval()
    a, b = torch.tensor([[5, 6, 7, 8, 9]]), torch.tensor([[3, 4]])
    batch = torch.tensor([[5, 6, 7, 8, 9], [3, 4, 0, 0, 0]])
    out = m(batch, batch != 0)
    assert torch.allclose(out[0], m(a)[0], atol=1e-5) and torch.allclose(out[1], m(b)[0], atol=1e-5)


def test_last_pooling_takes_the_final_state_of_each_direction():
    torch.manual_seed(0)
    m = RNNClassifier(vocab_size=20, d_model=16, n_layers=1, num_classes=3, arch="lstm", pool="last").eval()
    ids, mask = torch.tensor([[5, 6, 7, 0]]), torch.tensor([[True, True, True, False]])
    with torch.no_grad():
        _, (h, _) = m.rnn(m.embed(ids[:, :3]))  # h: (directions, B, hidden), final states of the unpadded row
        expected = m.head(torch.cat([h[0], h[1]], dim=-1))
        assert torch.allclose(m(ids, mask), expected, atol=1e-5)
    with pytest.raises(ValueError, match="model.pool=cls"):
        RNNClassifier(vocab_size=20, d_model=16, num_classes=3, arch="lstm", pool="cls")


@pytest.mark.parametrize("arch", ["lstm", "gru"])
def test_seq2seq_cached_steps_equal_teacher_forcing(arch):
    torch.manual_seed(0)
    m = RNNSeq2Seq(vocab_size=30, d_model=16, n_layers=2, arch=arch, pad_id=0).eval()
    src = torch.tensor([[4, 5, 6, 7], [8, 9, 0, 0]])
    tgt = torch.tensor([[1, 10, 11, 12, 13], [1, 14, 15, 16, 17]])
    mask = src != 0
    full = m(src, tgt, mask)
    cache = m.new_cache(m.encode(src, mask), mask, 16)
    steps = torch.cat([m.decode(tgt[:, t : t + 1], cache=cache) for t in range(tgt.size(1))], dim=1)
    assert torch.allclose(full, steps, atol=1e-5) and cache.length == 5
    # a padded source gives the same output as the source alone
    alone = m(src[1:, :2], tgt[1:], mask[1:, :2])
    assert torch.allclose(full[1], alone[0], atol=1e-5)
    greedy = translate(m, src, 1, 2, max_new_tokens=6, src_mask=mask)
    beam = translate(m, src, 1, 2, max_new_tokens=6, beam=3, src_mask=mask)
    assert len(greedy) == len(beam) == 2 and all(len(x) <= 6 for x in greedy + beam)


@pytest.mark.parametrize("arch", ["lstm", "gru"])
def test_cache_reorder_moves_decoder_states_with_their_rows(arch):
    """Beam search reorders the cache between steps: after reorder([1, 0]) the next step must equal teacher
    forcing of the swapped rows; and beam search of two sources together equals each alone."""
    torch.manual_seed(1)
    m = RNNSeq2Seq(vocab_size=12, d_model=8, n_layers=2, arch=arch, pad_id=0).eval()
    src = torch.tensor([[3, 4, 5], [6, 7, 0]])
    mask = src != 0
    tgt = torch.tensor([[1, 8, 9, 10], [1, 11, 3, 4]])
    with torch.no_grad():
        cache = m.new_cache(m.encode(src, mask), mask, 8)
        m.decode(tgt[:, :3], cache=cache)
        cache.reorder(torch.tensor([1, 0]))
        step = m.decode(tgt.flip(0)[:, 3:4], cache=cache)
        full = m(src.flip(0), tgt.flip(0), mask.flip(0))[:, 3:4]
        assert torch.allclose(step, full, atol=1e-5)
        together = translate(m, src, 1, 2, max_new_tokens=5, beam=3, src_mask=mask)
        alone = [translate(m, src[i : i + 1, : int(mask[i].sum())], 1, 2, max_new_tokens=5, beam=3)[0] for i in range(2)]
        assert together == alone


def test_rnn_arch_is_for_classify_and_translate_only():
    with pytest.raises(UserError, match="model.arch=lstm is a baseline for task classify or translate"):
        Config(task="lm", model=ModelConfig(arch="lstm"))
    m = build_model("classify", ModelConfig(arch="gru", vocab_size=50, d_model=32, n_layers=1, num_classes=2))
    assert isinstance(m, RNNClassifier)
    # 3 gates x (input + hidden) x hidden per direction, 2 directions: every weight counted at 6 FLOPs a token
    rnn_weights = 2 * 3 * (32 * 16 + 16 * 16)
    assert flops_per_token(m, 8) == pytest.approx(6 * (rnn_weights + 32 * 2))


@pytest.mark.slow
def test_lstm_classifier_trains_from_the_command_line(tmp_path):
    rng = np.random.default_rng(0)
    rows = []
    for _ in range(800):
        label = str(rng.choice(["fruit", "tool"]))
        word = rng.choice(["apple", "pear", "plum"] if label == "fruit" else ["hammer", "saw", "drill"])
        filler = list(rng.choice("the a my old new red big".split(), size=rng.integers(2, 8)))
        filler.insert(int(rng.integers(0, len(filler) + 1)), word)
        rows.append({"text": " ".join(filler), "label": label})
    write_jsonl(tmp_path / "d.jsonl", rows)
    run = tmp_path / "run"
    out = cli("train", "--run-dir", run, "--no-progress", "--json", "--set", "task=classify",
              "--set", f"data.source={tmp_path / 'd.jsonl'}", "--set", "model.arch=lstm", "--set", "model.d_model=32",
              "--set", "model.n_layers=1", "--set", "train.max_steps=120", "--set", "train.micro_batch_size=32",
              "--set", "optim.lr=1e-2", "--set", "train.eval_every=0", "--set", "train.baseline=false")
    summary = json.loads(out.stdout)
    assert summary["valid_accuracy"] > 0.9
    assert json.loads(cli("classify", run, "--json", "my red apple").stdout)["label"] == "fruit"


def test_transformer_last_pooling_ignores_padding_and_images_refuse_it():
    from bigbatch.nn.models import TextClassifier, ViT, last_positions

    torch.manual_seed(0)
    m = TextClassifier(vocab_size=20, d_model=16, n_heads=2, n_layers=1, num_classes=3, pool="last").eval()
    batch = torch.tensor([[5, 6, 7, 8], [3, 4, 0, 0]])
    mask = batch != 0
    out = m(batch, mask)
    assert torch.allclose(out[1], m(batch[1:, :2])[0], atol=1e-5)
    with torch.no_grad():
        h = m.encoder(m.embed(batch), key_mask=mask)
        assert torch.allclose(out, m.head(h[torch.arange(2), torch.tensor([3, 1])]), atol=1e-6)
        assert not torch.allclose(out[0], m.head(h[0].mean(dim=0)), atol=1e-3)  # not the mean
    assert last_positions(torch.tensor([[1.0, 1, 0], [0, 0, 0], [0, 1, 1]]), 3, "cpu").tolist() == [1, 0, 2]
    with pytest.raises(ValueError, match="model.pool=last"):
        ViT(image_size=8, patch_size=4, channels=1, num_classes=3, d_model=16, n_heads=2, n_layers=1, pool="last")
    with pytest.raises(UserError, match="model.pool=last"):
        Config(task="vision", model=ModelConfig(pool="last"))
    with pytest.raises(UserError, match="model.pool=cls"):
        Config(task="classify", model=ModelConfig(arch="gru", pool="cls"))


def test_training_and_evaluation_flush_subnormal_floats_and_restore_the_mode():
    """Subnormal arithmetic is many times slower on x86; fading LSTM gradients live there. The caller's own
    floating-point mode comes back afterwards (hypothesis, for one, refuses to run with subnormals flushed)."""
    from bigbatch.evaluate.run import evaluate_run
    from bigbatch.train.loop import train
    from bigbatch.train.setup import subnormals_flushed

    tiny = torch.tensor([1e-39])
    if not torch.set_flush_denormal(False):
        pytest.skip("this CPU cannot flush subnormals")
    assert (tiny * 1.0).item() != 0.0
    with subnormals_flushed():
        assert (tiny * 1.0).item() == 0.0
    assert (tiny * 1.0).item() != 0.0
    assert all(getattr(f, "__wrapped__", None) for f in (train, evaluate_run))  # both run inside it
