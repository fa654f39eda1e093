"""ddim_lib.dimension: the generalised sampler's exact output law on Gaussian data, and the estimator
of the Frechet distance to a fixed-geometry mixture used by chapter 11."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import ddim_lib as dl
from ddim_lib.dimension import (fixed_geometry_mixture, frechet_floor, frechet_to_law, gaussian_frechet,
                                gaussian_kl, gaussian_sampler_law, mixture_moments)
from ddim_lib.evaluate import frechet_distance_from_stats, gaussian_stats

SCHEDULE = dl.NoiseSchedule.linear(1000)
SAMPLERS = [(0.0, "eta"), (0.5, "eta"), (1.0, "eta"), (0.0, "sigma_hat")]


def _oracle(mean: float, std: float, d: int):
    law = dl.GaussianMixture(torch.full((1, d), mean, dtype=torch.float64), std)
    return dl.OracleEps(law, SCHEDULE)


@pytest.mark.parametrize("S", [10, 50])
@pytest.mark.parametrize("mean,std", [(0.5, 0.1), (-1.0, 0.6)])
def test_deterministic_sampler_is_the_affine_map_of_the_closed_form(S, mean, std):
    # eta = 0 has no noise: x_0 = K x_T + L per dimension, so sampling x_T = 0 and 1 reads off L and K
    # exactly; the closed form says mean_out = L (x_T has mean 0) and var_out = K^2 (x_T has variance 1).
    oracle = _oracle(mean, std, 1)
    out = dl.sample(oracle, torch.tensor([[0.0], [1.0]], dtype=torch.float64), SCHEDULE, S, eta=0.0)
    L, K = out[0, 0].item(), (out[1, 0] - out[0, 0]).item()
    mu, var = gaussian_sampler_law(SCHEDULE, S, 0.0, "eta", mean, std)
    assert mu == pytest.approx(L, abs=1e-12)
    assert var == pytest.approx(K**2, rel=1e-10)


@pytest.mark.parametrize("eta,variance", SAMPLERS)
def test_closed_form_matches_monte_carlo_and_rejects_a_neighbouring_sampler(eta, variance):
    # 4000 x 16 = 64000 draws per cell: the mean has s.e. sqrt(var / N), the variance sqrt(2 / (N - 1)) var.
    mean, std, d, n, S = 0.3, 0.1, 16, 4000, 10
    g = torch.Generator().manual_seed(7)
    x_T = torch.randn(n, d, generator=g, dtype=torch.float64)
    x_0 = dl.sample(_oracle(mean, std, d), x_T, SCHEDULE, S, eta=eta, variance=variance, generator=g).flatten()
    N = x_0.numel()
    m_hat, v_hat = x_0.mean().item(), x_0.var().item()

    def z_scores(mu, var):
        return abs(m_hat - mu) / math.sqrt(var / N), abs(v_hat - var) / (var * math.sqrt(2 / (N - 1)))

    z_mean, z_var = z_scores(*gaussian_sampler_law(SCHEDULE, S, eta, variance, mean, std))
    assert z_mean < 4.5 and z_var < 4.5, (z_mean, z_var)
    # Power: the law of a different sampler (eta moved by 0.5, or the other variance rule) is rejected
    # with room to spare (z > 6 where 4.5 is accepted): the check can fail.
    other = (abs(eta - 0.5), "eta") if variance == "eta" else (1.0, "eta")
    if other == (eta, variance):
        other = (0.0, "eta")
    assert max(z_scores(*gaussian_sampler_law(SCHEDULE, S, *other, mean, std))) > 6   # vs 4.5 accepted


def test_sigma_hat_is_exact_for_standard_normal_data():
    # For data N(0, 1), q(x_t) = N(0, 1) at every t and App. D.3's step is the true conditional
    # q(x_prev | x_t) = N(sqrt(a_t / a_prev) x_t, 1 - a_t / a_prev); only the last step (no noise,
    # returns x0* = sqrt(a) x) differs, so the output is N(0, alpha_bar[tau_1]) exactly.
    for S in (10, 50, 1000):
        tau = dl.timesteps(1000, S)
        mu, var = gaussian_sampler_law(SCHEDULE, tau, 0.0, "sigma_hat", 0.0, 1.0)
        assert mu == 0.0
        assert var == pytest.approx(SCHEDULE.alpha_bars[tau[0]].item(), rel=1e-12)
    # ... while DDIM (eta = 0) is not exact there: each step contracts by cos of the angle step.
    mu, var = gaussian_sampler_law(SCHEDULE, 10, 0.0, "eta", 0.0, 1.0)
    assert var < 0.9


def test_gaussian_kl_and_frechet_match_references():
    p = torch.distributions.Normal(torch.tensor(0.7, dtype=torch.float64), torch.tensor(0.3, dtype=torch.float64).sqrt())
    q = torch.distributions.Normal(torch.tensor(0.2, dtype=torch.float64), torch.tensor(0.5, dtype=torch.float64))
    assert gaussian_kl(0.7, 0.3, 0.2, 0.5) == pytest.approx(torch.distributions.kl_divergence(p, q).item(), rel=1e-12)
    assert gaussian_kl(0.2, 0.25, 0.2, 0.5) == 0.0
    fd = frechet_distance_from_stats(np.array([0.7]), np.array([[0.3]]), np.array([0.2]), np.array([[0.25]]))
    assert gaussian_frechet(0.7, 0.3, 0.2, 0.5) == pytest.approx(fd, rel=1e-9)


def test_mixture_moments_are_exact():
    mix = dl.GaussianMixture([[0.0, 1.0], [2.0, -1.0]], [[0.5, 0.1], [0.2, 0.3]], [0.25, 0.75])
    m, cov = mixture_moments(mix)
    w = np.array([0.25, 0.75])
    mu = np.array([[0.0, 1.0], [2.0, -1.0]])
    s2 = np.array([[0.5, 0.1], [0.2, 0.3]]) ** 2
    second = sum(w[k] * (np.diag(s2[k]) + np.outer(mu[k], mu[k])) for k in range(2))
    np.testing.assert_allclose(m, w @ mu, rtol=0, atol=1e-15)
    np.testing.assert_allclose(cov, second - np.outer(w @ mu, w @ mu), rtol=0, atol=1e-14)


def test_symmetric_estimator_agrees_with_the_plain_fit_and_has_a_low_floor():
    g = torch.Generator().manual_seed(3)
    mix = fixed_geometry_mixture(8)
    schedule = SCHEDULE
    x = dl.sample(dl.OracleEps(mix, schedule), torch.randn(20000, 8, generator=g, dtype=torch.float64),
                  schedule, 10, eta=1.0, generator=g)
    m, cov = mixture_moments(mix)
    plain = frechet_distance_from_stats(*gaussian_stats(x), m, cov)
    assert frechet_to_law(x, mix) == pytest.approx(plain, rel=0.05)
    # At d = 128 and n = 500 the plain fit's floor is O(d^2 / n); the symmetric estimator's is O(1 / n).
    big = fixed_geometry_mixture(128)
    floor_sym, _ = frechet_floor(big, 500, 3, g)
    exact = big.sample(500, generator=g)
    floor_plain = frechet_distance_from_stats(*gaussian_stats(exact), *mixture_moments(big))
    assert floor_sym < 0.05 * floor_plain


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="variance"):
        gaussian_sampler_law(SCHEDULE, 10, variance="beta")
    with pytest.raises(ValueError, match="eta"):
        gaussian_sampler_law(SCHEDULE, 10, eta=float("nan"))
    with pytest.raises(ValueError, match="std"):
        gaussian_sampler_law(SCHEDULE, 10, std=0.0)
    with pytest.raises(ValueError, match="d must"):
        fixed_geometry_mixture(1)
    with pytest.raises(ValueError, match="shape"):
        frechet_to_law(torch.zeros(10, 3), fixed_geometry_mixture(4))
    with pytest.raises(ValueError, match="NaN"):
        frechet_to_law(torch.full((10, 4), float("nan")), fixed_geometry_mixture(4))


def test_mode_shares_recover_the_weights_of_separated_modes():
    from ddim_lib.dimension import mode_shares
    mix = dl.GaussianMixture([[-5.0, 0.0], [5.0, 0.0], [0.0, 5.0]], 0.3, [0.2, 0.3, 0.5])
    shares = mode_shares(mix.sample(20000, generator=torch.Generator().manual_seed(0)), mix)
    np.testing.assert_allclose(shares, [0.2, 0.3, 0.5], atol=0.015)   # binomial s.e. <= 0.0036
    with pytest.raises(ValueError, match="shape"):
        mode_shares(torch.zeros(5, 3), mix)
