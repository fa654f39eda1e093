"""Theorem 1's weights (sec. 3.2, App. B), DDPM's weights (eq. 5), and the KL terms behind them.

Tolerances: gamma_t goes through k_t = sqrt(abar_{t-1}) - sqrt(1 - abar_{t-1} - sigma_t^2) sqrt(abar_t /
(1 - abar_t)), a difference that cancels up to ~2 digits (k_t / sqrt(abar_{t-1}) ~ beta_t / (1 - abar_t)
>= 0.02), and 1 - abar_{t-1} is known only to eps / (1 - abar_{t-1}) <= 2e-12 relative; squared, the
relative error stays below ~1e-9, the rtol used for gamma comparisons.
"""
from __future__ import annotations

import math

import pytest
import torch
from scipy import stats
from torch.distributions import Normal, kl_divergence

from ddim_lib import (NoiseSchedule, appendix_b_gamma, ddpm_gamma, ddpm_sigmas, eta_sigmas,
                      kl_to_standard_normal, theorem1_constant, theorem1_gamma)

RTOL = 1e-9


def with_positive_first(sigmas: torch.Tensor, sigma_1: float) -> torch.Tensor:
    """Theorem 1 needs sigma_1 > 0; DDPM's beta_tilde_1 is 0, so replace it."""
    out = sigmas.clone()
    out[0] = sigma_1
    return out


def random_admissible_sigmas(schedule: NoiseSchedule, seed: int) -> torch.Tensor:
    a = schedule.alpha_bars
    a_prev = torch.cat([torch.ones(1, dtype=a.dtype), a[:-1]])
    u = torch.rand(schedule.T, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    sig = (0.05 + 0.9 * u) * (1 - a_prev).sqrt()
    sig[0] = 0.05 + u[0]
    return sig


def test_ddpm_sigma_gives_ddpm_weights(linear1000):
    """sigma_t^2 = beta_tilde_t: gamma_t = beta_t^2 / (2 sigma_t^2 alpha_t (1 - abar_t)) for t >= 2."""
    sig = with_positive_first(ddpm_sigmas(linear1000), 0.01)
    ours = theorem1_gamma(linear1000, sig)
    betas, alphas, a = linear1000.betas, linear1000.alphas, linear1000.alpha_bars
    written_out = betas**2 / (2 * sig**2 * alphas * (1 - a))            # DDPM eq. 5's weights
    torch.testing.assert_close(ours[1:], written_out[1:], rtol=RTOL, atol=0)
    torch.testing.assert_close(ddpm_gamma(linear1000, sig), written_out, rtol=1e-14, atol=0)


@pytest.mark.parametrize("sigma_1", [1e-3, 0.05, 0.7, 3.0])
def test_gamma_1_equals_ddpm_t1_weight_for_any_sigma_1(linear1000, sigma_1):
    """-log p(x_0 | x_1) with variance sigma_1^2: (1 - abar_1) / (2 sigma_1^2 abar_1) = beta_1^2 / (2 sigma_1^2 alpha_1 (1 - abar_1))."""
    sig = with_positive_first(ddpm_sigmas(linear1000), sigma_1)
    g1 = theorem1_gamma(linear1000, sig)[0].item()
    beta = linear1000.betas[0].item()
    assert g1 == pytest.approx(beta**2 / (2 * sigma_1**2 * (1 - beta) * beta), rel=1e-12)
    assert g1 == pytest.approx(ddpm_gamma(linear1000, sig)[0].item(), rel=1e-12)


def kl_diag_gaussians(m1, v1, m2, v2) -> torch.Tensor:
    """KL(N(m1, v1 I) || N(m2, v2 I)) written out in full (not assuming v1 = v2), summed over dims."""
    return 0.5 * (v1 / v2 + (m2 - m1) ** 2 / v2 - 1 + torch.log(v2 / v1)).sum(-1)


@pytest.mark.parametrize("which", ["ddpm", "eta0.5", "random"])
def test_exact_kl_is_gamma_times_eps_error(linear1000, which):
    """KL(q_sigma(x_{t-1} | x_t, x_0) || q_sigma(x_{t-1} | x_t, f_theta(x_t))) = gamma_t ||eps_theta - eps||^2,
    with eq. 7's mean written out here and f_theta from eq. 9; every t >= 2, d = 5."""
    sch, d = linear1000, 5
    if which == "ddpm":
        sig = with_positive_first(ddpm_sigmas(sch), 0.1)
    elif which == "eta0.5":
        sig = with_positive_first(eta_sigmas(sch, 0.5), 0.1)
    else:
        sig = random_admissible_sigmas(sch, seed=0)
    g = torch.Generator().manual_seed(1)
    T = sch.T
    x0, eps, eps_theta = (torch.randn(T, d, generator=g, dtype=torch.float64) for _ in range(3))
    a = sch.alpha_bars[:, None]
    a_prev = torch.cat([torch.ones(1, 1, dtype=torch.float64), a[:-1]])
    s2 = (sig**2)[:, None]
    x_t = a.sqrt() * x0 + (1 - a).sqrt() * eps
    f_theta = (x_t - (1 - a).sqrt() * eps_theta) / a.sqrt()

    def eq7_mean(x0_like):
        return a_prev.sqrt() * x0_like + (1 - a_prev - s2).sqrt() * (x_t - a.sqrt() * x0_like) / (1 - a).sqrt()

    kl = kl_diag_gaussians(eq7_mean(x0), s2, eq7_mean(f_theta), s2)[1:]
    err2 = ((eps_theta - eps) ** 2).sum(-1)[1:]
    torch.testing.assert_close(kl, theorem1_gamma(sch, sig)[1:] * err2, rtol=RTOL, atol=0)
    # App. B's printed weight is not the KL: off by the factor d k_t^2 (1 - abar_t), far from 1 here.
    wrong = appendix_b_gamma(sch, sig, d)[1:] * err2
    assert ((wrong - kl).abs() / kl).min().item() > 0.5


@pytest.mark.parametrize("sigma_1", [0.05, 0.7])
def test_t1_term_is_gaussian_nll(linear1000, sigma_1):
    """-log N(x_0; f_theta(x_1), sigma_1^2 I) = gamma_1 ||eps_theta - eps||^2 + (d / 2) log(2 pi sigma_1^2)."""
    d = 4
    g = torch.Generator().manual_seed(2)
    x0, eps, eps_theta = (torch.randn(d, generator=g, dtype=torch.float64) for _ in range(3))
    a1 = linear1000.alpha_bars[0].item()
    x1 = math.sqrt(a1) * x0 + math.sqrt(1 - a1) * eps
    f_theta = (x1 - math.sqrt(1 - a1) * eps_theta) / math.sqrt(a1)
    nll = -stats.norm.logpdf(x0.numpy(), loc=f_theta.numpy(), scale=sigma_1).sum()
    gamma_1 = theorem1_gamma(linear1000, with_positive_first(ddpm_sigmas(linear1000), sigma_1))[0].item()
    expected = gamma_1 * ((eps_theta - eps) ** 2).sum().item() + 0.5 * d * math.log(2 * math.pi * sigma_1**2)
    assert nll == pytest.approx(expected, rel=1e-10)


def test_ddpm_and_eta_sigmas(linear1000):
    a, betas = linear1000.alpha_bars, linear1000.betas
    sig = ddpm_sigmas(linear1000)
    assert sig[0].item() == 0.0
    beta_tilde = (1 - a[:-1]) / (1 - a[1:]) * betas[1:]
    torch.testing.assert_close(sig[1:] ** 2, beta_tilde, rtol=1e-12, atol=0)
    torch.testing.assert_close(eta_sigmas(linear1000, 1.0), sig, rtol=1e-10, atol=0)
    assert (eta_sigmas(linear1000, 0.0) == 0).all()
    torch.testing.assert_close(eta_sigmas(linear1000, 0.3), 0.3 * sig, rtol=1e-10, atol=0)
    with pytest.raises(ValueError, match="eta must be non-negative"):
        eta_sigmas(linear1000, -1.0)


def test_kl_to_standard_normal_matches_torch():
    m = torch.tensor([0.3, -1.2, 2.0], dtype=torch.float64)
    for var in (0.2, 1.0, 3.5):
        want = kl_divergence(Normal(m, math.sqrt(var)), Normal(torch.zeros(3, dtype=torch.float64), 1.0)).sum()
        assert kl_to_standard_normal((m**2).sum().item(), var, 3) == pytest.approx(want.item(), rel=1e-12)


def test_theorem1_constant_is_mean_prior_kl_plus_nll_normaliser(linear1000):
    """C = E_x0 KL(q(x_T | x_0) || N(0, I)) + (d / 2) log(2 pi sigma_1^2), the KL averaged over x_0 draws."""
    d, sigma_1 = 6, 0.2
    x0 = torch.randn(50, d, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    a_T = linear1000.alpha_bars[-1].item()
    q = Normal(math.sqrt(a_T) * x0, math.sqrt(1 - a_T))
    mean_kl = kl_divergence(q, Normal(torch.zeros_like(x0), 1.0)).sum(1).mean().item()
    want = mean_kl + 0.5 * d * math.log(2 * math.pi * sigma_1**2)
    got = theorem1_constant(linear1000, sigma_1, (x0**2).sum(1).mean().item(), d)
    assert got == pytest.approx(want, rel=1e-12)


def test_bad_sigmas_raise(linear1000):
    good = with_positive_first(ddpm_sigmas(linear1000), 0.1)
    with pytest.raises(ValueError, match=r"shape \(T,\) = \(1000,\)"):
        theorem1_gamma(linear1000, good[:-1])
    with pytest.raises(ValueError, match="sigma_t > 0"):
        theorem1_gamma(linear1000, ddpm_sigmas(linear1000))         # beta_tilde_1 = 0
    bad = good.clone()
    bad[500] = 1.0                                                   # sigma^2 = 1 > 1 - abar_500
    with pytest.raises(ValueError, match="inadmissible"):
        theorem1_gamma(linear1000, bad)
    # eq. 5 (DDPM's bound) has no eq. 7 constraint: DDPM's own sigma_t^2 = beta_t exceeds
    # 1 - abar_{t-1} at t = 2 and must be accepted.
    beta = linear1000.betas
    assert (beta[1] > 1 - linear1000.alpha_bars[0])
    torch.testing.assert_close(ddpm_gamma(linear1000, beta.sqrt()),
                               beta / (2 * linear1000.alphas * (1 - linear1000.alpha_bars)), rtol=1e-12, atol=0)
    with pytest.raises(ValueError, match="inadmissible"):
        appendix_b_gamma(linear1000, bad, 3)


def test_weights_are_positive_and_finite_over_schedules():
    for sch in (NoiseSchedule.linear(1000), NoiseSchedule.cosine(1000), NoiseSchedule.linear(30, 1e-3, 0.3)):
        for sig in (with_positive_first(ddpm_sigmas(sch), 0.1), random_admissible_sigmas(sch, 4)):
            gam = theorem1_gamma(sch, sig)
            assert torch.isfinite(gam).all() and (gam > 0).all()
    # eta = 0 has sigma = 0: Theorem 1 does not apply (its weights would be infinite), and says so.
    sch = NoiseSchedule.linear(10)
    with pytest.raises(ValueError, match="sigma_t > 0"):
        theorem1_gamma(sch, with_positive_first(eta_sigmas(sch, 0.0), 0.1))
