"""The forward process q(x_t | x_0) (eq. 4), DDPM's posterior, and DDIM's q_sigma (eq. 7, 8, Lemma 1).

Tolerances. Closed forms: float64 formulas that are algebraically equal agree to a few ulps of O(1)
quantities; we use 1e-12 (about 5000 ulps) unless a cancellation is named. Monte Carlo: fixed seeds,
N = 20000 draws, |z| < 5 for every mean and variance (a false alarm has probability 5.7e-7 per
check, < 3e-4 over all checks here), and KS p-values > 1e-3 where the null is true; each
distribution test is shown to reject a plausible bug (p < 1e-6), so it has power.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from ddim_lib import (GaussianMixture, NoiseSchedule, ddpm_posterior, q_mean_var, q_sample,
                      q_sigma_forward, q_sigma_reverse, sigma_eta)

pytestmark = pytest.mark.usefixtures("single_thread")

ATOL = 1e-12
N = 20_000
Z_MAX = 5.0


def z_scores(samples: torch.Tensor, mean: float, var: float) -> tuple[float, float]:
    """z-scores of the sample mean and sample variance of 1-D Gaussian draws against (mean, var)."""
    n = samples.numel()
    z_mean = (samples.mean().item() - mean) / math.sqrt(var / n)
    z_var = (samples.var().item() - var) / (var * math.sqrt(2 / (n - 1)))
    return z_mean, z_var


def mixture_cdf(mix: GaussianMixture):
    """The CDF of a 1-D GaussianMixture, written with scipy for the KS tests."""
    mu, sd, w = mix.means[:, 0].numpy(), mix.stds[:, 0].numpy(), mix.weights.numpy()
    return lambda x: (w * stats.norm.cdf((np.asarray(x)[:, None] - mu) / sd)).sum(1)


def markov_chain(x0: torch.Tensor, schedule: NoiseSchedule, g: torch.Generator, record: set[int],
                 step=lambda x, alpha, beta, z: math.sqrt(alpha) * x + math.sqrt(beta) * z):
    """Simulate x_t = sqrt(alpha_t) x_{t-1} + sqrt(beta_t) z step by step; return {t: x_t} for t in record."""
    out, x = {}, x0
    for t in range(schedule.T):
        z = torch.randn(x.shape, generator=g, dtype=x.dtype)
        x = step(x, schedule.alphas[t].item(), schedule.betas[t].item(), z)
        if t in record:
            out[t] = x
    return out


# ---- q(x_t | x_0) ------------------------------------------------------------------------------
def test_q_mean_var_closed_form(linear1000):
    x0 = torch.randn(5, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    t = torch.tensor([0, 10, 500, 998, 999])
    mean, var = q_mean_var(x0, linear1000, t)
    a = linear1000.alpha_bars[t]
    torch.testing.assert_close(mean, a.sqrt()[:, None] * x0, rtol=0, atol=ATOL)
    torch.testing.assert_close(var, 1 - a, rtol=0, atol=ATOL)
    noise = torch.randn(5, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    torch.testing.assert_close(q_sample(x0, linear1000, t, noise=noise),
                               mean + var.sqrt()[:, None] * noise, rtol=0, atol=ATOL)


def test_markov_chain_moments_propagate_exactly(short_schedule):
    """Mean and variance pushed through x_t = sqrt(alpha_t) x_{t-1} + sqrt(beta_t) z are eq. 4's."""
    x0, mean, var = 1.3, 1.3, 0.0
    for t in range(short_schedule.T):
        alpha, beta = short_schedule.alphas[t].item(), short_schedule.betas[t].item()
        mean, var = math.sqrt(alpha) * mean, alpha * var + beta
        a = short_schedule.alpha_bars[t].item()
        assert mean == pytest.approx(math.sqrt(a) * x0, abs=ATOL)
        assert var == pytest.approx(1 - a, abs=ATOL)


def test_one_shot_matches_markov_chain_moments(short_schedule):
    record = {0, 4, 19, 49}
    x0 = torch.full((N,), 1.3, dtype=torch.float64)
    chain = markov_chain(x0, short_schedule, torch.Generator().manual_seed(10), record)
    oneshot = {t: q_sample(x0, short_schedule, t, generator=torch.Generator().manual_seed(11)) for t in record}
    for t in sorted(record):
        a = short_schedule.alpha_bars[t].item()
        for name, xs in (("chain", chain[t]), ("q_sample", oneshot[t])):
            z_mean, z_var = z_scores(xs, math.sqrt(a) * 1.3, 1 - a)
            assert abs(z_mean) < Z_MAX and abs(z_var) < Z_MAX, (name, t, z_mean, z_var)


def test_one_shot_matches_markov_chain_in_distribution(short_schedule, mixture1d):
    """From non-Gaussian data (a bimodal mixture) both laws equal mixture.noised(alpha_bar_t)."""
    record = {1, 9, 49}
    x0_chain = mixture1d.sample(N, torch.Generator().manual_seed(20))[:, 0]
    x0_shot = mixture1d.sample(N, torch.Generator().manual_seed(21))[:, 0]
    chain = markov_chain(x0_chain, short_schedule, torch.Generator().manual_seed(22), record)
    buggy = markov_chain(x0_chain, short_schedule, torch.Generator().manual_seed(22), {9},
                         step=lambda x, alpha, beta, z: math.sqrt(alpha) * x + beta * z)  # beta, not sqrt(beta)
    for t in sorted(record):
        shot = q_sample(x0_shot, short_schedule, t, generator=torch.Generator().manual_seed(23 + t))
        assert stats.ks_2samp(chain[t].numpy(), shot.numpy()).pvalue > 1e-3, t
        law = mixture_cdf(mixture1d.noised(short_schedule.alpha_bars[t].item()))
        assert stats.kstest(chain[t].numpy(), law).pvalue > 1e-3, t
        assert stats.kstest(shot.numpy(), law).pvalue > 1e-3, t
    shot9 = q_sample(x0_shot, short_schedule, 9, generator=torch.Generator().manual_seed(32))
    assert stats.ks_2samp(buggy[9].numpy(), shot9.numpy()).pvalue < 1e-6, "the KS test has power"


def test_q_sample_rejects_mismatched_noise(linear1000):
    with pytest.raises(ValueError, match="noise has shape"):
        q_sample(torch.zeros(4, 2, dtype=torch.float64), linear1000, 3, noise=torch.zeros(4, 3))


# ---- DDPM's posterior ---------------------------------------------------------------------------
def test_ddpm_posterior_is_gaussian_conditioning(linear1000):
    """Condition the joint of (x_{t-1}, x_t) | x_0 by hand, in numpy, for every t >= 1.

    x_{t-1} = sqrt(abar_{t-1}) x0 + sqrt(1 - abar_{t-1}) e1, x_t = sqrt(alpha_t) x_{t-1} + sqrt(beta_t) e2.
    rtol 1e-10: Var(x_{t-1}) - Cov^2 / Var(x_t) cancels up to two digits where beta_t << 1 - abar_{t-1}.
    """
    rng = np.random.default_rng(0)
    T = linear1000.T
    t = np.arange(1, T)
    x0, xt = rng.normal(size=(T - 1, 3)), rng.normal(size=(T - 1, 3))
    abar = np.cumprod(1 - np.linspace(1e-4, 0.02, T))
    alpha, beta, a_prev = 1 - np.linspace(1e-4, 0.02, T)[t], np.linspace(1e-4, 0.02, T)[t], abar[t - 1]
    m1, v1 = np.sqrt(a_prev)[:, None] * x0, 1 - a_prev                         # x_{t-1} | x0
    m2, cov, v2 = np.sqrt(alpha)[:, None] * m1, np.sqrt(alpha) * v1, alpha * v1 + beta  # x_t | x0
    mean = m1 + (cov / v2)[:, None] * (xt - m2)
    var = v1 - cov**2 / v2
    got_mean, got_var = ddpm_posterior(torch.from_numpy(x0), torch.from_numpy(xt), linear1000, torch.from_numpy(t))
    np.testing.assert_allclose(got_mean.numpy(), mean, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(got_var.numpy(), var, rtol=1e-10, atol=0)
    # scalar t gives the same numbers as the batched call
    m, v = ddpm_posterior(torch.from_numpy(x0[:1]), torch.from_numpy(xt[:1]), linear1000, 1)
    np.testing.assert_allclose(m.numpy(), mean[:1], rtol=1e-10, atol=1e-12)
    assert v.item() == pytest.approx(var[0], rel=1e-10)


def test_ddpm_posterior_at_first_step_returns_x0(linear1000):
    x0, xt = torch.randn(2, 4, dtype=torch.float64), torch.randn(2, 4, dtype=torch.float64)
    mean, var = ddpm_posterior(x0, xt, linear1000, 0)
    torch.testing.assert_close(mean, x0, rtol=0, atol=ATOL)
    assert var.item() == 0.0


# ---- eq. 7 and Lemma 1 ---------------------------------------------------------------------------
def random_triples(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """a_t < a_prev in (0, 1) and an admissible sigma (sigma^2 <= 1 - a_prev), shape (n,)."""
    g = torch.Generator().manual_seed(seed)
    u = torch.rand(3, n, generator=g, dtype=torch.float64)
    a_prev = 0.001 + 0.998 * u[0]
    a_t = a_prev * (0.001 + 0.998 * u[1])
    sigma = u[2] * (1 - a_prev).sqrt()
    return a_t, a_prev, sigma


def test_q_sigma_reverse_is_eq7():
    a_t, a_prev, sigma = random_triples(200, seed=1)
    x0 = torch.randn(200, 3, dtype=torch.float64)
    xt = torch.randn(200, 3, dtype=torch.float64)
    q = q_sigma_reverse(a_t, a_prev, sigma)
    by_hand = (a_prev.sqrt()[:, None] * x0
               + torch.sqrt(1 - a_prev - sigma**2)[:, None] * (xt - a_t.sqrt()[:, None] * x0)
               / torch.sqrt(1 - a_t)[:, None])
    torch.testing.assert_close(q.mean(x0, xt), by_hand, rtol=0, atol=ATOL)
    torch.testing.assert_close(q.var, sigma**2, rtol=0, atol=0)


def lemma1_sigmas(a_t: float, a_prev: float, kind, g: torch.Generator) -> float:
    if kind == "random":
        return torch.rand((), generator=g, dtype=torch.float64).item() * math.sqrt(1 - a_prev)
    return float(sigma_eta(a_t, a_prev, kind))


@pytest.mark.parametrize("kind", [0.0, 0.5, 1.0, "random"])
@pytest.mark.parametrize("path", ["consecutive", "jumps"])
def test_lemma1_marginals_exact(linear1000, kind, path):
    """From q(x_T | x_0), eq. 7 keeps x_t ~ N(sqrt(abar_t) x0, 1 - abar_t) at every visited t."""
    a = linear1000.alpha_bars.tolist()
    tau = list(range(1000)) if path == "consecutive" else [0, 3, 17, 60, 200, 450, 800, 999]
    g = torch.Generator().manual_seed(5)
    x0 = 0.8
    mean, var = math.sqrt(a[tau[-1]]) * x0, 1 - a[tau[-1]]
    for t, t_prev in zip(reversed(tau), list(reversed(tau))[1:] + [-1]):
        a_t, a_prev = a[t], (a[t_prev] if t_prev >= 0 else 1.0)
        q = q_sigma_reverse(a_t, a_prev, lemma1_sigmas(a_t, a_prev, kind, g))
        mean = q.coef_x0.item() * x0 + q.coef_x.item() * mean
        var = q.coef_x.item() ** 2 * var + q.var.item()
        assert mean == pytest.approx(math.sqrt(a_prev) * x0, abs=ATOL), t_prev
        assert var == pytest.approx(1 - a_prev, abs=ATOL), t_prev


@pytest.mark.parametrize("kind", [0.0, 0.5, 1.0, "random"])
def test_lemma1_marginals_monte_carlo(short_schedule, kind):
    a = short_schedule.alpha_bars.tolist()
    g = torch.Generator().manual_seed(7)
    x0 = torch.full((N,), -0.6, dtype=torch.float64)
    x = q_sample(x0, short_schedule, short_schedule.T - 1, generator=g)
    for t in range(short_schedule.T - 1, 0, -1):
        q = q_sigma_reverse(a[t], a[t - 1], lemma1_sigmas(a[t], a[t - 1], kind, g))
        x = q.mean(x0, x) + q.var.sqrt() * torch.randn(N, generator=g, dtype=torch.float64)
        z_mean, z_var = z_scores(x, math.sqrt(a[t - 1]) * -0.6, 1 - a[t - 1])
        assert abs(z_mean) < Z_MAX and abs(z_var) < Z_MAX, (t - 1, z_mean, z_var)


# ---- eq. 8 ----------------------------------------------------------------------------------------
def test_q_sigma_forward_is_markov_for_ddpm_sigma(linear1000):
    """sigma^2 = beta_tilde: eq. 8's x_0 coefficient vanishes, the rest is N(sqrt(alpha_t) x_{t-1}, beta_t)."""
    a, betas = linear1000.alpha_bars, linear1000.betas
    a_t, a_prev, beta = a[1:], a[:-1], betas[1:]
    sigma = ((1 - a_prev) / (1 - a_t) * beta).sqrt()
    f = q_sigma_forward(a_t, a_prev, sigma)
    # Round-off only: 1 - a_prev is known to eps = 2.2e-16 absolute, i.e. eps / (1 - a_prev) relative
    # (2.2e-12 at t = 2, where 1 - a_prev = 1e-4); allow 10x that, per t.
    bound = 10 * torch.finfo(torch.float64).eps / (1 - a_prev)
    assert (f.coef_x0.abs() < bound).all(), (f.coef_x0.abs() / bound).max()
    torch.testing.assert_close(f.coef_x, (1 - beta).sqrt(), rtol=1e-12, atol=0)
    torch.testing.assert_close(f.var, beta, rtol=1e-10, atol=0)   # 1 - a_prev - sigma^2 cancels 2 digits
    ddim = q_sigma_forward(a_t, a_prev, torch.zeros_like(a_t))
    # eta = 0: the forward process depends on x_0; the smallest |coef| (6e-5, at t = T) is 1e10 x round-off.
    assert ddim.coef_x0.abs().min().item() > 1e-5
    assert ddim.coef_x0.abs().max().item() > 0.4
    assert (ddim.var == 0).all()


def test_q_sigma_forward_is_bayes_on_eq7_and_marginal():
    """Condition the joint of (x_t, x_{t-1}) | x_0 built from q(x_t | x_0) and eq. 7 on x_{t-1}."""
    a_t, a_prev, sigma = random_triples(300, seed=3)
    sigma[:10] = 0.0
    sigma[10:20] = (1 - a_prev[10:20]).sqrt()           # the boundary sigma^2 = 1 - a_prev
    rev = q_sigma_reverse(a_t, a_prev, sigma)
    # Joint given x0 = 1 (means are linear in x0, so coefficients read off at x0 = 1):
    m_t, v_t = a_t.sqrt(), 1 - a_t
    m_prev = rev.coef_x0 + rev.coef_x * m_t
    v_prev = rev.coef_x**2 * v_t + rev.var
    cov = rev.coef_x * v_t
    torch.testing.assert_close(v_prev, 1 - a_prev, rtol=0, atol=ATOL)   # Lemma 1 again
    fwd = q_sigma_forward(a_t, a_prev, sigma)
    torch.testing.assert_close(fwd.coef_x, cov / v_prev, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(fwd.coef_x0, m_t - cov / v_prev * m_prev, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(fwd.var, v_t - cov**2 / v_prev, rtol=1e-9, atol=1e-12)


def test_q_sigma_forward_at_first_step_is_the_marginal():
    f = q_sigma_forward(0.7, 1.0, 0.0)
    assert f.coef_x.item() == 0 and f.coef_x0.item() == pytest.approx(math.sqrt(0.7), abs=ATOL)
    assert f.var.item() == pytest.approx(0.3, abs=ATOL)


@pytest.mark.parametrize("fn", [q_sigma_reverse, q_sigma_forward])
def test_invalid_sigma_and_alpha_bars_raise(fn):
    with pytest.raises(ValueError, match="inadmissible"):
        fn(0.3, 0.5, math.sqrt(0.5) * 1.001)                  # sigma^2 > 1 - a_prev
    with pytest.raises(ValueError, match="inadmissible"):
        fn(torch.tensor([0.3, 0.3]), torch.tensor([0.5, 0.9]), torch.tensor([0.1, 0.5]))
    with pytest.raises(ValueError, match="non-negative"):
        fn(0.3, 0.5, -0.1)
    with pytest.raises(ValueError, match="finite"):
        fn(0.3, 0.5, float("nan"))
    with pytest.raises(ValueError, match=r"a_prev must lie in \(0, 1\]"):
        fn(0.3, 1.5, 0.0)
    with pytest.raises(ValueError, match=r"a_t must lie in \(0, 1\)"):
        fn(1.0, 1.0, 0.0)                                       # eq. 7 divides by 1 - a_t
    with pytest.raises(ValueError, match=r"a_t must lie in \(0, 1\)"):
        fn(0.0, 0.5, 0.0)


# ---- properties over random schedules ----------------------------------------------------------------
@settings(deadline=None, max_examples=80)
@given(betas=st.integers(2, 300).flatmap(lambda T: st.lists(st.floats(1e-5, 0.05), min_size=T, max_size=T)),
       data=st.data())
def test_q_sigma_preserves_the_marginal_property(betas, data):
    """For any schedule, any pair t > s (s = -1 allowed) and any admissible sigma (eta in [0, 1] or a
    free fraction of the bound), eq. 7 maps N(sqrt(a_t) x0, 1 - a_t) to N(sqrt(a_s) x0, 1 - a_s) and
    eq. 8 maps it back (Bayes: its variance is (1 - a_t) - Cov^2 / (1 - a_s))."""
    sch = NoiseSchedule(torch.tensor(betas, dtype=torch.float64))
    t = data.draw(st.integers(0, sch.T - 1), label="t")
    s = data.draw(st.integers(-1, t - 1), label="s")
    a_t, a_s = sch.alpha_bar(t).item(), sch.alpha_bar(s).item()
    if data.draw(st.booleans(), label="use eta"):
        sigma = float(sigma_eta(a_t, a_s, data.draw(st.floats(0, 1), label="eta")))
    else:
        sigma = data.draw(st.floats(0, 1), label="fraction") * math.sqrt(1 - a_s)
    rev = q_sigma_reverse(a_t, a_s, sigma)
    x0 = data.draw(st.floats(-3, 3), label="x0")
    # 1 - a_t >= 1e-5 is known to eps absolute, so to <= 2.2e-11 relative; results are O(1): abs 1e-10.
    assert (rev.coef_x0 * x0 + rev.coef_x * math.sqrt(a_t) * x0).item() == pytest.approx(math.sqrt(a_s) * x0, abs=1e-10)
    assert (rev.coef_x**2 * (1 - a_t) + rev.var).item() == pytest.approx(1 - a_s, abs=1e-10)
    fwd = q_sigma_forward(a_t, a_s, sigma)
    cov = rev.coef_x.item() * (1 - a_t)
    if s >= 0:
        assert fwd.coef_x.item() == pytest.approx(cov / (1 - a_s), rel=1e-9, abs=1e-10)
        assert fwd.var.item() == pytest.approx((1 - a_t) - cov**2 / (1 - a_s), rel=1e-8, abs=1e-10)
