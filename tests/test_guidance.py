"""Classifier-free guidance with exact conditionals (ddim_lib.guidance), in float64."""
from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.stats as st
import torch

from ddim_lib import GaussianMixture, NoiseSchedule, OracleEps, encode, sample
from ddim_lib.guidance import (GuidedEps, class_mixture, class_prior, conditional_oracles, guided_oracle,
                               mmd2_blocks, mmd2_unbiased, sample_tilted, tilted_cdf_1d, tilted_log_prob)

SCHED = NoiseSchedule.linear(T=200, beta_start=1e-4, beta_end=0.05)
MIX = GaussianMixture([[-1.0, 0.0], [1.0, 1.0], [1.0, -0.5], [-0.5, 1.5]], [0.4, 0.3, 0.4, 0.35],
                      [0.3, 0.2, 0.3, 0.2])
LABELS = [0, 0, 1, 2]


def _t(t, n):
    return torch.full((n,), t, dtype=torch.long)


def test_class_mixture_and_prior():
    c0 = class_mixture(MIX, LABELS, 0)
    torch.testing.assert_close(c0.means, MIX.means[:2])
    torch.testing.assert_close(c0.weights, torch.tensor([0.6, 0.4], dtype=torch.float64))
    assert class_prior(MIX, LABELS, 0) == pytest.approx(0.5, abs=1e-15)
    # Bayes: p(x) = sum_y p(y) p(x | y)
    x = torch.randn(50, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    total = sum(class_prior(MIX, LABELS, y) * class_mixture(MIX, LABELS, y).log_prob(x).exp() for y in (0, 1, 2))
    torch.testing.assert_close(total, MIX.log_prob(x).exp(), rtol=1e-13, atol=0)


def test_guided_eps_formula_and_special_cases():
    cond, uncond = conditional_oracles(MIX, LABELS, SCHED)
    assert sorted(cond) == [0, 1, 2]
    x = 1.5 * torch.randn(40, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    for t in (0, 70, 199):
        ec, eu = cond[1](x, _t(t, 40)), uncond(x, _t(t, 40))
        for w in (0.0, 1.0, 3.0, 6.5, -1.0):
            g = GuidedEps(cond[1], uncond, w)(x, _t(t, 40))
            torch.testing.assert_close(g, (1 + w) * ec - w * eu, rtol=1e-14, atol=1e-14)
        assert torch.equal(GuidedEps(cond[1], uncond, 0)(x, _t(t, 40)), ec)       # w = 0: conditional
        torch.testing.assert_close(GuidedEps(cond[1], uncond, -1)(x, _t(t, 40)), eu, rtol=0, atol=1e-14)
        torch.testing.assert_close(guided_oracle(MIX, LABELS, 1, SCHED, 2.0)(x, _t(t, 40)), 3 * ec - 2 * eu,
                                   rtol=1e-14, atol=1e-14)


@pytest.mark.parametrize("w", [0.0, 1.0, 4.0])
def test_guided_eps_is_the_score_of_the_noised_tilted_law(w):
    """eps_w = -sqrt(1 - abar) grad_x [(1 + w) log q_t(x | y) - w log q_t(x)], by autograd."""
    x = (1.5 * torch.randn(30, 2, generator=torch.Generator().manual_seed(2), dtype=torch.float64)).requires_grad_()
    for t in (5, 100, 190):
        a = SCHED.alpha_bars[t].item()
        logp = (1 + w) * class_mixture(MIX, LABELS, 0).noised(a).log_prob(x) - w * MIX.noised(a).log_prob(x)
        (grad,) = torch.autograd.grad(logp.sum(), x)
        want = -math.sqrt(1 - a) * grad
        got = guided_oracle(MIX, LABELS, 0, SCHED, w)(x.detach(), _t(t, 30))
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


def test_guided_eps_works_with_sample_and_encode():
    g = guided_oracle(MIX, LABELS, 0, SCHED, 2.0)
    x_T = torch.randn(16, 2, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    x0 = sample(g, x_T, SCHED, 20)
    assert x0.shape == (16, 2) and torch.isfinite(x0).all()
    z = encode(g, x0, SCHED, 20)
    assert z.shape == (16, 2) and torch.isfinite(z).all()


def test_tilted_log_prob_at_w0_and_w():
    x = torch.randn(20, 2, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    torch.testing.assert_close(tilted_log_prob(MIX, LABELS, 2, 0.0, x), class_mixture(MIX, LABELS, 2).log_prob(x))
    lp = tilted_log_prob(MIX, LABELS, 2, 2.0, x)
    torch.testing.assert_close(lp, 3 * class_mixture(MIX, LABELS, 2).log_prob(x) - 2 * MIX.log_prob(x))


def test_tilted_cdf_1d_matches_closed_forms():
    mix = GaussianMixture([[-1.5], [0.0], [1.5]], [0.5, 0.7, 0.5], [0.25, 0.25, 0.5])
    labels = [0, 1, 1]
    x = torch.linspace(-4, 4, 41, dtype=torch.float64)
    # w = 0: the class law itself, a single normal for class 0
    np.testing.assert_allclose(tilted_cdf_1d(mix, labels, 0, 0.0, x).numpy(), st.norm.cdf(x.numpy(), -1.5, 0.5),
                               atol=1e-9)
    # w = -1: p(x) itself
    cdf_mix = sum(w * st.norm.cdf(x.numpy(), m, s) for w, m, s in ((0.25, -1.5, 0.5), (0.25, 0.0, 0.7), (0.5, 1.5, 0.5)))
    np.testing.assert_allclose(tilted_cdf_1d(mix, labels, 0, -1.0, x).numpy(), cdf_mix, atol=1e-9)
    # w = 2 against an independent quadrature with scipy
    grid = np.linspace(-10, 10, 400_001)
    dens = st.norm.pdf(grid, -1.5, 0.5) ** 3 / (0.25 * st.norm.pdf(grid, -1.5, 0.5) + 0.25 * st.norm.pdf(grid, 0, 0.7)
                                              + 0.5 * st.norm.pdf(grid, 1.5, 0.5)) ** 2
    from scipy.integrate import cumulative_trapezoid
    cdf = cumulative_trapezoid(dens, grid, initial=0)
    cdf /= cdf[-1]
    np.testing.assert_allclose(tilted_cdf_1d(mix, labels, 0, 2.0, x).numpy(), np.interp(x.numpy(), grid, cdf), atol=1e-8)


def test_sample_tilted_is_exact():
    """Rejection draws against the numerically normalised tilted CDF (1-D), Kolmogorov-Smirnov test."""
    mix = GaussianMixture([[-1.5], [0.0], [1.5]], [0.5, 0.7, 0.5], [0.25, 0.25, 0.5])
    labels = [0, 1, 1]
    g = torch.Generator().manual_seed(5)
    for w in (0.0, 1.0, 4.0):
        draws = sample_tilted(mix, labels, 0, w, 4000, generator=g)[:, 0]
        p = st.kstest(draws.numpy(), lambda v: tilted_cdf_1d(mix, labels, 0, w, torch.as_tensor(v)).numpy()).pvalue
        assert p > 1e-3, (w, p)
    # power: draws of p(x | y) are rejected as draws of the w = 4 law
    plain = class_mixture(mix, labels, 0).sample(4000, generator=g)[:, 0]
    p = st.kstest(plain.numpy(), lambda v: tilted_cdf_1d(mix, labels, 0, 4.0, torch.as_tensor(v)).numpy()).pvalue
    assert p < 1e-6, p


def test_mmd2_unbiased_against_a_direct_double_loop_and_its_mean():
    g = torch.Generator().manual_seed(6)
    x, y = torch.randn(7, 2, generator=g, dtype=torch.float64), torch.randn(9, 2, generator=g, dtype=torch.float64) + 0.3
    h = 0.8

    def k(a, b):
        return math.exp(-float(((a - b) ** 2).sum()) / (2 * h * h))

    xx = sum(k(x[i], x[j]) for i in range(7) for j in range(7) if i != j) / 42
    yy = sum(k(y[i], y[j]) for i in range(9) for j in range(9) if i != j) / 72
    xy = sum(k(x[i], y[j]) for i in range(7) for j in range(9)) / 63
    assert mmd2_unbiased(x, y, h) == pytest.approx(xx + yy - 2 * xy, rel=1e-12)
    # unbiased: same law -> mean over blocks within 4 s.e. of 0; shifted law -> far above
    a, b = torch.randn(4000, 2, generator=g, dtype=torch.float64), torch.randn(4000, 2, generator=g, dtype=torch.float64)
    m, se = mmd2_blocks(a, b, 1.0, 20)
    assert abs(m) < 4 * se, (m, se)
    m, se = mmd2_blocks(a, b + 0.3, 1.0, 20)
    assert m > 4 * se, (m, se)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), "1", None, True])
def test_bad_w(bad):
    o = OracleEps(MIX, SCHED)
    with pytest.raises(ValueError, match="w"):
        GuidedEps(o, o, bad)
    with pytest.raises(ValueError, match="w"):
        tilted_log_prob(MIX, LABELS, 0, bad, torch.zeros(1, 2, dtype=torch.float64))


def test_bad_inputs():
    o = OracleEps(MIX, SCHED)
    with pytest.raises(ValueError, match="cond and uncond"):
        GuidedEps(o, "not a model", 1.0)
    with pytest.raises(ValueError, match="same shape"):
        GuidedEps(o, lambda x, t: torch.zeros(x.shape[0], 3), 1.0)(torch.zeros(4, 2), _t(0, 4))
    with pytest.raises(ValueError, match="labels"):
        class_mixture(MIX, [0, 1, 2], 0)
    with pytest.raises(ValueError, match="labels"):
        class_mixture(MIX, [0.0, 0.0, 1.0, 2.0], 0)
    with pytest.raises(ValueError, match="class y = 5"):
        class_mixture(MIX, LABELS, 5)
    with pytest.raises(ValueError, match="y must be an integer"):
        class_prior(MIX, LABELS, 0.5)
    with pytest.raises(ValueError, match="mixture"):
        class_mixture("mix", LABELS, 0)
    with pytest.raises(ValueError, match="w >= 0"):
        sample_tilted(MIX, LABELS, 0, -0.5, 10)
    with pytest.raises(ValueError, match="n must"):
        sample_tilted(MIX, LABELS, 0, 1.0, 0)
    with pytest.raises(ValueError, match="1-D"):
        tilted_cdf_1d(MIX, LABELS, 0, 1.0, [0.0])
    with pytest.raises(ValueError, match="shapes"):
        mmd2_unbiased(torch.zeros(5, 2), torch.zeros(5, 3), 1.0)
    with pytest.raises(ValueError, match="bandwidth"):
        mmd2_unbiased(torch.zeros(5, 2), torch.zeros(5, 2), 0.0)
    with pytest.raises(ValueError, match="blocks"):
        mmd2_blocks(torch.zeros(5, 2), torch.zeros(5, 2), 1.0, 1)
    with pytest.raises(ValueError, match="too few"):
        mmd2_blocks(torch.zeros(5, 2), torch.zeros(5, 2), 1.0, 3)


def test_guidance_commutes_with_the_prediction_type():
    """Conversions are affine in the output with weights summing to 1 over (1 + w, -w), so guiding
    v- (or x0-) predictions and converting gives the guided eps: sample(..., prediction) agrees."""
    from ddim_lib.prediction import to_eps_x0

    x = 1.5 * torch.randn(32, 2, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    for p in ("x0", "v"):
        guided_p = GuidedEps(OracleEps(class_mixture(MIX, LABELS, 0), SCHED, prediction=p),
                             OracleEps(MIX, SCHED, prediction=p), 3.0)
        guided_eps = guided_oracle(MIX, LABELS, 0, SCHED, 3.0)
        for t in (0, 80, 199):
            a = SCHED.alpha_bars[t].item()
            eps_from_p = to_eps_x0(guided_p(x, _t(t, 32)), x, a, p)[0]
            torch.testing.assert_close(eps_from_p, guided_eps(x, _t(t, 32)), rtol=1e-11, atol=1e-11)
        x_T = torch.randn(16, 2, generator=torch.Generator().manual_seed(8), dtype=torch.float64)
        torch.testing.assert_close(sample(guided_p, x_T, SCHED, 20, prediction=p), sample(guided_eps, x_T, SCHED, 20),
                                   rtol=1e-10, atol=1e-10)
