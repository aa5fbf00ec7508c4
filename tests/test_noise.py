"""The gradient noise scale estimator on a problem whose noise is known in closed form."""

import torch

from bigbatch.train.noise import NoiseScale


def test_noise_scale_on_linear_regression():
    """y = x·w* + ε with x ~ N(0, I_d), ε ~ N(0, σ²); loss ½(x·w − y)² at w = w* + δ.

    Per-example gradient g = (x·δ − ε) x, so G = E[g] = δ and tr(Σ) = E|g|² − |G|² = (d + 1)|δ|² + dσ²,
    hence B_simple = ((d + 1)|δ|² + dσ²) / |δ|².
    """
    torch.manual_seed(0)
    d, sigma = 20, 1.5
    w_star = torch.randn(d, dtype=torch.float64)
    delta = 0.3 * torch.randn(d, dtype=torch.float64)
    true = ((d + 1) * delta.square().sum() + d * sigma**2) / delta.square().sum()
    w = (w_star + delta).requires_grad_(True)
    est = NoiseScale(ema=0.99)
    b_small, b_big = 16, 128
    for _ in range(3000):
        x = torch.randn(b_big, d, dtype=torch.float64)
        y = x @ w_star + sigma * torch.randn(b_big, dtype=torch.float64)
        per_example = 0.5 * (x @ w - y).square()
        g_small, = torch.autograd.grad(per_example[:b_small].mean(), w, retain_graph=True)
        g_big, = torch.autograd.grad(per_example.mean(), w)
        est.update(g_small.square().sum().item(), b_small, g_big.square().sum().item(), b_big)
    assert abs(est.value - true.item()) / true.item() < 0.25, (est.value, true.item())


def test_degenerate_inputs_are_ignored():
    est = NoiseScale()
    est.update(1.0, 8, 0.5, 8)  # equal batch sizes carry no information
    est.update(float("nan"), 8, 0.5, 64)
    assert est.value is None and est.updates == 0
