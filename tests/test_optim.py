"""Optimisers and schedules against direct transcriptions of their definitions."""

import math

import numpy as np
import pytest
import torch

from bigbatch.config import OptimConfig
from bigbatch.errors import UserError
from bigbatch.train.optim import LAMB, build_scheduler, lr_factor


def lamb_numpy(ws, grads, lr, beta1, beta2, eps, wd):
    """You et al. 2019, Algorithm 2, one tensor at a time, in float64 numpy."""
    ws = [w.copy() for w in ws]
    m = [np.zeros_like(w) for w in ws]
    v = [np.zeros_like(w) for w in ws]
    for t, gs in enumerate(grads, start=1):
        for i, (w, g) in enumerate(zip(ws, gs)):
            m[i] = beta1 * m[i] + (1 - beta1) * g
            v[i] = beta2 * v[i] + (1 - beta2) * g * g
            m_hat, v_hat = m[i] / (1 - beta1**t), v[i] / (1 - beta2**t)
            r = m_hat / (np.sqrt(v_hat) + eps)
            u = r + wd * w
            wn, un = np.linalg.norm(w), np.linalg.norm(u)
            trust = wn / un if wn > 0 and un > 0 else 1.0
            ws[i] = w - lr * trust * u
    return ws


def test_lamb_matches_the_paper():
    rng = np.random.default_rng(0)
    ws = [rng.normal(size=(5, 3)), rng.normal(size=(7,)), np.zeros((2, 2))]  # a zero tensor: trust 1
    grads = [[rng.normal(size=w.shape) for w in ws] for _ in range(6)]
    params = [torch.tensor(w, requires_grad=True) for w in ws]
    opt = LAMB(params, lr=0.01, betas=(0.9, 0.99), eps=1e-6, weight_decay=0.05)
    for gs in grads:
        for p, g in zip(params, gs):
            p.grad = torch.tensor(g)
        opt.step()
    expected = lamb_numpy(ws, grads, 0.01, 0.9, 0.99, 1e-6, 0.05)
    for p, e in zip(params, expected):
        np.testing.assert_allclose(p.detach().numpy(), e, rtol=1e-12, atol=1e-14)


def test_lamb_groups_choose_weight_decay():
    w = torch.ones(4, requires_grad=True)
    b = torch.ones(4, requires_grad=True)
    opt = LAMB([{"params": [w], "weight_decay": 0.5}, {"params": [b], "weight_decay": 0.0}], lr=0.1)
    w.grad, b.grad = torch.zeros(4), torch.zeros(4)
    opt.step()
    assert torch.allclose(b, torch.ones(4))  # no gradient, no decay: unchanged
    assert torch.allclose(w, torch.full((4,), 0.9))  # u = λw, trust = ‖w‖/‖λw‖ = 2: w - 0.1·2·0.5 = 0.9


@pytest.mark.parametrize("schedule", ["constant", "linear", "cosine", "inverse_sqrt", "wsd"])
def test_schedules(schedule):
    cfg = OptimConfig(warmup_steps=10, schedule=schedule, min_lr_ratio=0.1, decay_fraction=0.2)
    f = [lr_factor(s, cfg, 100) for s in range(100)]
    assert f[0] == pytest.approx(0.1) and f[9] == pytest.approx(1.0)  # linear warm-up to the peak
    expected_last = {"constant": 1.0, "linear": 0.1 + 0.9 / 90, "cosine": 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 89 / 90)),
                     "inverse_sqrt": math.sqrt(10 / 100), "wsd": 1 - 0.9 * 19 / 20}
    assert f[99] == pytest.approx(expected_last[schedule])
    if schedule == "wsd":
        assert f[79] == 1.0 and f[81] < 1.0


def test_warmup_longer_than_training_is_refused():
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    with pytest.raises(UserError, match="optim.warmup_steps=100 must be smaller than train.max_steps=50"):
        build_scheduler(opt, OptimConfig(warmup_steps=100), 50)


@pytest.mark.parametrize("name,rule,lr,warmup", [
    ("adamw", "auto", 2e-3 * 4, 25),   # sqrt for Adam: k = 16 -> x4
    ("lamb", "sqrt", 2e-3 * 4, 25),
    ("sgd", "auto", 2e-3 * 16, 25),    # linear for SGD
    ("adamw", "linear", 2e-3 * 16, 25),
    ("adamw", "none", 2e-3, 400),
])
def test_batch_size_scaling_rules(name, rule, lr, warmup):
    from bigbatch.train.optim import scale_for_batch

    cfg = OptimConfig(name=name, lr=2e-3, warmup_steps=400, scale_rule=rule, reference_batch=64)
    scaled, note = scale_for_batch(cfg, 1024)
    assert scaled.lr == pytest.approx(lr) and scaled.warmup_steps == warmup
    assert scaled.base_lr == 2e-3 and scaled.base_warmup_steps == 400
    assert scale_for_batch(scaled, 1024)[0] == scaled  # a saved, resolved config resolves to itself
    assert (note != "") == (rule != "none")


def test_no_reference_batch_means_no_scaling():
    from bigbatch.train.optim import scale_for_batch

    scaled, note = scale_for_batch(OptimConfig(lr=1e-3), 4096)
    assert scaled.lr == 1e-3 and note == ""


def test_batch_size_warmup_ramps_to_the_full_batch():
    from bigbatch.train.loop import micro_batches_at

    assert [micro_batches_at(s, 8, 4) for s in range(6)] == [2, 4, 6, 8, 8, 8]
    assert [micro_batches_at(s, 8, 0) for s in range(3)] == [8, 8, 8]
    assert micro_batches_at(0, 3, 100) == 1
