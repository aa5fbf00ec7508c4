"""Models: shapes, masks, positions, decoding with the cache, beam search, and that the stack learns."""

import itertools
import math

import pytest
import torch
import torch.nn.functional as F
from helpers import BOS, EOS, PAD, reverse_batch

from bigbatch.config import OptimConfig
from bigbatch.nn import CausalLM, Seq2Seq, TextClassifier, count_parameters, flops_per_token, generate, translate
from bigbatch.nn.generate import beam_search, sample_next
from bigbatch.nn.layers import RotaryEmbedding, sinusoids
from bigbatch.objectives import translate_objective
from bigbatch.train.optim import build_scheduler

SMALL = dict(d_model=32, n_heads=4, n_layers=2, max_len=32)


@pytest.mark.parametrize("pos", ["learned", "sinusoidal", "rope"])
@pytest.mark.parametrize("norm,norm_first", [("layernorm", True), ("rmsnorm", True), ("layernorm", False)])
def test_cached_decoding_equals_uncached(pos, norm, norm_first):
    torch.manual_seed(0)
    model = CausalLM(vocab_size=50, pos=pos, norm=norm, norm_first=norm_first, **SMALL).eval()
    prompt = torch.randint(0, 50, (3, 5))
    ids, logits = generate(model, prompt, 12, temperature=0, return_logits=True)
    ids2, logits2 = generate(model, prompt, 12, temperature=0, use_cache=False, return_logits=True)
    assert torch.equal(ids, ids2)
    torch.testing.assert_close(logits, logits2, atol=1e-5, rtol=1e-5)
    # and the step logits equal one full forward pass over the generated sequence
    full = model(ids[:, :-1])[:, 4:]
    torch.testing.assert_close(logits, full, atol=1e-5, rtol=1e-5)


def test_generation_slides_past_max_len():
    model = CausalLM(vocab_size=20, **SMALL).eval()
    out = generate(model, torch.randint(0, 20, (1, 30)), 10, temperature=0)
    assert out.shape == (1, 40)


def test_causal_lm_right_padding_does_not_change_real_positions():
    torch.manual_seed(1)
    model = CausalLM(vocab_size=30, **SMALL).eval()
    x = torch.randint(0, 30, (1, 6))
    padded = torch.cat([x, torch.zeros(1, 3, dtype=torch.long)], dim=1)
    mask = torch.tensor([[1] * 6 + [0] * 3])
    torch.testing.assert_close(model(padded, attention_mask=mask)[:, :6], model(x), atol=1e-5, rtol=1e-5)


def test_causal_lm_is_causal():
    model = CausalLM(vocab_size=30, **SMALL).eval()
    x = torch.randint(0, 30, (2, 10))
    y = x.clone()
    y[:, 6:] = (y[:, 6:] + 1) % 30
    torch.testing.assert_close(model(x)[:, :6], model(y)[:, :6])


def test_classifier_ignores_padding():
    torch.manual_seed(2)
    for pool in ("mean", "cls"):
        model = TextClassifier(vocab_size=30, num_classes=3, pool=pool, pad_id=0, **SMALL).eval()
        x = torch.randint(1, 30, (1, 7))
        padded = torch.cat([x, torch.zeros(1, 4, dtype=torch.long)], dim=1)
        out = model(padded)
        assert out.shape == (1, 3)
        torch.testing.assert_close(out, model(x), atol=1e-5, rtol=1e-5)


def test_seq2seq_source_padding_and_cached_decoding():
    torch.manual_seed(3)
    model = Seq2Seq(vocab_size=20, pad_id=PAD, **SMALL).eval()
    src = torch.randint(3, 20, (2, 6))
    src_padded = torch.cat([src, torch.full((2, 3), PAD)], dim=1)
    tgt = torch.randint(3, 20, (2, 5))
    torch.testing.assert_close(model(src_padded, tgt), model(src, tgt), atol=1e-5, rtol=1e-5)
    # step-by-step decoding through the cache equals teacher forcing over the same tokens
    memory = model.encode(src)
    cache = model.new_cache(memory, None, 16)
    steps = [model.decode(tgt[:, t : t + 1], cache=cache) for t in range(tgt.size(1))]
    torch.testing.assert_close(torch.cat(steps, dim=1), model(src, tgt), atol=1e-5, rtol=1e-5)


def test_beam_search_finds_the_most_probable_sequence():
    """On a tiny model, beam search with a wide beam equals exhaustive search over all outputs."""
    torch.manual_seed(4)
    V, T = 4, 3  # tokens 0..3, eos = 3; sequences of at most T tokens
    model = CausalLM(vocab_size=V, **SMALL).eval()
    prompt = torch.tensor([[0, 1]])

    def logp(seq):
        ids = torch.tensor([prompt[0].tolist() + seq])
        lp = F.log_softmax(model(ids)[0, 1:], dim=-1)
        return sum(lp[i, t].item() for i, t in enumerate(seq))

    candidates = [list(s) + [3] for n in range(T) for s in itertools.product(range(3), repeat=n)]
    candidates += [list(s) for s in itertools.product(range(3), repeat=T)]
    best = max(candidates, key=lambda s: logp(s) / len(s) ** 0.0)
    beam = 64
    cache = model.new_cache(beam, 16)
    model(prompt[:, :-1].repeat(beam, 1), cache=cache)
    step = lambda tok, c: model(tok, cache=c)[:, -1]  # noqa: E731
    found = beam_search(step, cache, prompt[:, -1], beam, T, eos_id=3, length_penalty=0.0)[0]
    assert found == [t for t in best if t != 3]


def test_sampling_filters():
    logits = torch.tensor([[1.0, 3.0, 2.0, 0.0]])
    g = torch.Generator().manual_seed(0)
    assert sample_next(logits, 0).item() == 1
    assert all(sample_next(logits, 1.0, top_k=1, generator=g).item() == 1 for _ in range(20))
    assert all(sample_next(logits, 1.0, top_p=0.01, generator=g).item() == 1 for _ in range(20))
    draws = {sample_next(logits, 1.0, top_k=2, generator=g).item() for _ in range(200)}
    assert draws == {1, 2}
    # top_p = 0.9: p = softmax([1, 3, 2, 0]) = [.087, .644, .237, .032]; 1 and 2 hold .881 < .9, so 0 stays
    draws = {sample_next(logits, 1.0, top_p=0.9, generator=g).item() for _ in range(400)}
    assert draws == {0, 1, 2}


def test_rotary_depends_only_on_relative_position():
    rope = RotaryEmbedding(8, 64)
    q, k = torch.randn(1, 1, 1, 8), torch.randn(1, 1, 1, 8)
    dots = [(rope(q, offset=a) * rope(k, offset=a + 5)).sum().item() for a in (0, 7, 30)]
    assert max(dots) - min(dots) < 1e-4
    torch.testing.assert_close(rope(q, offset=3).norm(), q.norm())


def test_sinusoids_match_the_paper():
    table = sinusoids(50, 16)
    p, i = 7, 3
    assert table[p, 2 * i].item() == pytest.approx(math.sin(p / 10000 ** (2 * i / 16)), abs=1e-6)
    assert table[p, 2 * i + 1].item() == pytest.approx(math.cos(p / 10000 ** (2 * i / 16)), abs=1e-6)


def test_parameter_count_and_flops():
    d, L, V, T = 32, 2, 50, 16
    model = CausalLM(vocab_size=V, d_model=d, n_heads=4, n_layers=L, max_len=T)
    per_block = (3 * d * d + 3 * d) + (d * d + d) + (4 * d * d + 4 * d) + (4 * d * d + d) + 4 * d  # attn, mlp, 2 norms
    expected = V * d + T * d + L * per_block + 2 * d  # tied head counted once; final norm
    assert count_parameters(model) == expected
    assert count_parameters(model, non_embedding=True) == expected - V * d - T * d
    matmul_weights = L * 12 * d * d + V * d
    assert flops_per_token(model, T) == 6 * matmul_weights + 12 * L * d * T


@pytest.mark.slow
def test_encoder_decoder_learns_to_reverse():
    """A few hundred steps on ragged, padded sequences: > 95% exact match with greedy and beam decoding."""
    torch.manual_seed(0)
    model = Seq2Seq(vocab_size=13, d_model=64, n_heads=4, n_layers=2, d_ff=128, max_len=16, pad_id=PAD)
    steps = 400
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.0)
    sched = build_scheduler(opt, OptimConfig(warmup_steps=30, schedule="cosine", min_lr_ratio=0.0), steps)
    g = torch.Generator().manual_seed(0)
    for _ in range(steps):
        loss_sum, n, _ = translate_objective(model, reverse_batch(64, g))
        (loss_sum / n).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad()
    model.eval()
    test = reverse_batch(200, torch.Generator().manual_seed(123))
    want = [test["src_ids"][i, :n].flip(0).tolist() for i, n in enumerate(test["lengths"].tolist())]
    for beam in (1, 4):
        out = translate(model, test["src_ids"], BOS, EOS, max_new_tokens=12, beam=beam)
        exact = sum(o == w for o, w in zip(out, want)) / len(want)
        assert exact > 0.95, (beam, exact)


def test_fast_cpu_dropout_keeps_the_expectation_and_routes_the_gradient():
    from bigbatch.nn.layers import Dropout, dropout

    torch.manual_seed(0)
    x = torch.ones(1000, 1001, requires_grad=True)  # an odd size: the 16-bit words do not divide it
    y = dropout(x, 0.1)
    dropped = (y == 0).float().mean().item()
    assert abs(dropped - 0.1) < 0.002
    assert abs(y.mean().item() - 1.0) < 0.003
    kept = y[y != 0]
    assert torch.equal(kept, torch.full_like(kept, 65536 / (65536 - 6554)))
    pairs = ((y[:, :-1] == 0) & (y[:, 1:] == 0)).float().mean().item()  # neighbours (often one 64-bit draw)
    assert abs(pairs - 0.01) < 0.001  # independent: p squared
    assert not torch.equal(dropout(x, 0.1) == 0, dropout(x, 0.1) == 0)  # a fresh mask every call
    y.sum().backward()
    assert torch.equal(x.grad, (y != 0).float() * (65536 / (65536 - 6554)))
    module = Dropout(0.3).eval()
    assert module(x) is x  # evaluation: identity
    assert torch.equal(dropout(x, 0.0), x) and torch.equal(dropout(x, 1.0), torch.zeros_like(x))
    torch.manual_seed(1)
    a = dropout(torch.ones(64, 3), 0.5)
    torch.manual_seed(1)
    assert torch.equal(a, dropout(torch.ones(64, 3), 0.5))  # follows torch's seed: resume stays exact
    torch.manual_seed(2)
    assert not torch.equal(a, dropout(torch.ones(64, 3), 0.5))
    assert dropout(torch.ones(8, 8), 0.999999).isfinite().all()  # p rounds to 1: torch's dropout, no 1 / 0
