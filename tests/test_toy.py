"""Exact data laws: GaussianMixture densities, OracleEps = E[eps | x_t], E[x_0 | x_t], 2-D toy sets.

Tolerances: closed forms against scipy densities agree to 1e-12 relative (a handful of float64
operations); scipy.integrate.quad is asked for 1e-11 relative accuracy on smooth integrands over
+-12 standard deviations (the mass outside is < 1e-30), so comparisons with it use 1e-9. Monte
Carlo: self-normalised importance sampling with fixed seeds, |error| < 5 standard errors.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import integrate, stats

from ddim_lib import TOY2D_NAMES, GaussianMixture, OracleEps, predict_x0, toy2d

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def aniso() -> GaussianMixture:
    """A 2-D mixture with per-dimension stds and unequal weights."""
    return GaussianMixture([[-1.0, 0.5], [1.5, -0.5], [0.0, 2.0]],
                           [[0.3, 0.6], [0.5, 0.2], [0.4, 0.4]], [0.2, 0.5, 0.3])


def density_1d(mix: GaussianMixture):
    mu, sd, w = mix.means[:, 0].numpy(), mix.stds[:, 0].numpy(), mix.weights.numpy()
    return lambda x: float((w * stats.norm.pdf(x, mu, sd)).sum())


def quad(f, lo, hi, points):
    return integrate.quad(f, lo, hi, points=points, epsabs=0, epsrel=1e-11, limit=200)[0]


def t_batch(t: int, n: int) -> torch.Tensor:
    return torch.full((n,), t, dtype=torch.long)


# ---- densities ---------------------------------------------------------------------------------------
def test_log_prob_matches_scipy(aniso):
    x = torch.randn(50, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 2
    dens = sum(w * stats.multivariate_normal(mu, np.diag(sd**2)).pdf(x.numpy())
               for w, mu, sd in zip(aniso.weights.numpy(), aniso.means.numpy(), aniso.stds.numpy()))
    np.testing.assert_allclose(aniso.log_prob(x).numpy(), np.log(dens), rtol=1e-12, atol=0)


def test_noised_is_the_convolution(mixture1d):
    """noised(abar) is the law of sqrt(abar) x_0 + sqrt(1 - abar) eps: p(y) = int p_0(x) N(y; sqrt(abar) x, 1 - abar) dx."""
    p0 = density_1d(mixture1d)
    for abar in (0.95, 0.5, 0.02):
        noised = mixture1d.noised(abar)
        for y in (-2.0, -0.4, 0.0, 0.9, 2.5):
            conv = quad(lambda x: p0(x) * stats.norm.pdf(y, math.sqrt(abar) * x, math.sqrt(1 - abar)),
                        -12, 12, [-1.5, 1.0])
            got = noised.log_prob(torch.tensor([[y]], dtype=torch.float64)).exp().item()
            assert got == pytest.approx(conv, rel=1e-9), (abar, y)


def test_noised_matches_simulation(aniso):
    """2-D, per-dimension stds: KS on each coordinate of simulated sqrt(abar) x0 + sqrt(1 - abar) eps."""
    g = torch.Generator().manual_seed(1)
    abar, n = 0.3, 20_000
    sim = math.sqrt(abar) * aniso.sample(n, g) + math.sqrt(1 - abar) * torch.randn(n, 2, generator=g, dtype=torch.float64)
    noised = aniso.noised(abar)
    for j in range(2):
        mu, sd, w = noised.means[:, j].numpy(), noised.stds[:, j].numpy(), noised.weights.numpy()
        cdf = lambda x: (w * stats.norm.cdf((np.asarray(x)[:, None] - mu) / sd)).sum(1)  # noqa: E731
        assert stats.kstest(sim[:, j].numpy(), cdf).pvalue > 1e-3


def test_sample_moments(aniso):
    """Mixture mean sum w mu and per-dimension variance sum w (s^2 + mu^2) - mean^2; |z| < 5."""
    n = 50_000
    x = aniso.sample(n, torch.Generator().manual_seed(2))
    w, mu, s2 = aniso.weights[:, None], aniso.means, aniso.stds**2
    mean = (w * mu).sum(0)
    var = (w * (s2 + mu**2)).sum(0) - mean**2
    z = (x.mean(0) - mean) / (var / n).sqrt()
    assert (z.abs() < 5).all(), z
    fourth = (w * (3 * s2**2 + 6 * s2 * mu**2 + mu**4 - 4 * mean * (3 * s2 * mu + mu**3)
                   + 6 * mean**2 * (s2 + mu**2) - 3 * mean**4)).sum(0)      # E[(x - mean)^4]
    z_var = (x.var(0) - var) / ((fourth - var**2) / n).sqrt()
    assert (z_var.abs() < 5).all(), z_var


def test_ring():
    ring = GaussianMixture.ring(8, 2.0, 0.1)
    torch.testing.assert_close(ring.means.norm(dim=1), torch.full((8,), 2.0, dtype=torch.float64), rtol=0, atol=1e-15)
    angles = torch.atan2(ring.means[:, 1], ring.means[:, 0]) % (2 * math.pi)
    torch.testing.assert_close(angles.sort().values, torch.arange(8, dtype=torch.float64) * math.pi / 4, rtol=0, atol=1e-14)
    assert (ring.weights == 1 / 8).all() and (ring.stds == 0.1).all()


# ---- the oracle ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("t", [50, 300, 700])
def test_oracle_eps_matches_importance_sampling(linear1000, mixture1d, t):
    """E[eps | x_t = y] = sum_i w_i eps_i / sum_i w_i with x0_i ~ p_0, w_i = N(y; sqrt(abar) x0_i, 1 - abar),
    eps_i = (y - sqrt(abar) x0_i) / sqrt(1 - abar); standard error by the delta method."""
    oracle = OracleEps(mixture1d, linear1000)
    a = linear1000.alpha_bars[t].item()
    x0 = mixture1d.sample(200_000, torch.Generator().manual_seed(t))[:, 0]
    ys = torch.tensor([-2.0, -0.5, 0.3, 1.5], dtype=torch.float64)
    got = oracle(ys[:, None], t_batch(t, 4))[:, 0]
    for y, eps_star in zip(ys, got):
        eps_i = (y - math.sqrt(a) * x0) / math.sqrt(1 - a)
        logw = -0.5 * eps_i**2
        w = (logw - logw.max()).exp()
        est = (w * eps_i).sum() / w.sum()
        se = ((w**2 * (eps_i - est) ** 2).sum()).sqrt() / w.sum()
        ess = w.sum() ** 2 / (w**2).sum()
        assert ess > 200, "enough effective draws for the delta-method standard error"
        assert abs(eps_star - est) < 5 * se, (t, y.item(), eps_star.item(), est.item(), se.item())


def test_oracle_eps_2d_matches_importance_sampling(linear1000, aniso):
    oracle = OracleEps(aniso, linear1000)
    t = 200
    a = linear1000.alpha_bars[t].item()
    x0 = aniso.sample(200_000, torch.Generator().manual_seed(3))
    y = torch.tensor([[0.2, 0.4]], dtype=torch.float64)
    eps_i = (y - math.sqrt(a) * x0) / math.sqrt(1 - a)
    logw = -0.5 * (eps_i**2).sum(1)
    w = (logw - logw.max()).exp()[:, None]
    est = (w * eps_i).sum(0) / w.sum()
    se = ((w**2 * (eps_i - est) ** 2).sum(0)).sqrt() / w.sum()
    got = oracle(y, t_batch(t, 1))[0]
    assert ((got - est).abs() < 5 * se).all(), (got, est, se)


@pytest.mark.parametrize("t", [0, 100, 500, 999])
def test_posterior_mean_by_quadrature_and_tweedie(linear1000, mixture1d, t):
    """E[x_0 | x_t = y] = int x p_0(x) N(y; sqrt(abar) x, 1 - abar) dx / int p_0(x) N(...) dx, and
    E[x_0 | x_t] = predict_x0(x_t, E[eps | x_t], abar_t) (Tweedie: eq. 9 is linear in eps)."""
    oracle = OracleEps(mixture1d, linear1000)
    a = linear1000.alpha_bars[t].item()
    p0 = density_1d(mixture1d)
    ys = torch.tensor([-2.0, -0.5, 0.3, 1.5], dtype=torch.float64)[:, None]
    got = oracle.posterior_mean(ys, t_batch(t, 4))[:, 0]
    for y, m in zip(ys[:, 0].tolist(), got.tolist()):
        def lik(x):
            return p0(x) * stats.norm.pdf(y, math.sqrt(a) * x, math.sqrt(1 - a))
        points = [-1.5, 1.0, y / math.sqrt(a)] if abs(y / math.sqrt(a)) < 12 else [-1.5, 1.0]
        num = quad(lambda x: x * lik(x), -12, 12, points)
        den = quad(lik, -12, 12, points)
        assert m == pytest.approx(num / den, rel=1e-9, abs=1e-11), (t, y)
    tweedie = predict_x0(ys, oracle(ys, t_batch(t, 4)), a)[:, 0]
    # eq. 9 divides by sqrt(abar_t) >= 1/157: round-off up to ~1e-13 on O(1) numbers.
    torch.testing.assert_close(tweedie, got, rtol=0, atol=1e-12)


def test_tweedie_in_2d_and_shapes(linear1000, aniso):
    oracle = OracleEps(aniso, linear1000)
    g = torch.Generator().manual_seed(4)
    x = torch.randn(64, 2, generator=g, dtype=torch.float64) * 2
    t = torch.randint(0, 1000, (64,), generator=g)
    a = linear1000.alpha_bars[t]
    torch.testing.assert_close(predict_x0(x, oracle(x, t), a), oracle.posterior_mean(x, t), rtol=0, atol=1e-12)
    # (B, ...) inputs flatten to d; float32 in, float32 out, equal to the float64 numbers rounded
    x3 = x.reshape(64, 1, 2)
    assert oracle(x3, t).shape == (64, 1, 2)
    torch.testing.assert_close(oracle(x3, t).reshape(64, 2), oracle(x, t), rtol=0, atol=0)
    out32 = oracle(x.float(), t)
    assert out32.dtype == torch.float32
    torch.testing.assert_close(out32.double(), oracle(x.float().double(), t), rtol=1e-6, atol=1e-6)


def test_oracle_at_extremes(linear1000, mixture1d):
    """t = T: x_T is almost independent of x_0, so E[eps | x_T] ~ x_T; t = 0: E[x_0 | x_1] ~ x_1 / sqrt(alpha_1)
    (posterior concentrates within sqrt(beta_1) = 0.01 of it)."""
    oracle = OracleEps(mixture1d, linear1000)
    y = torch.linspace(-3, 3, 13, dtype=torch.float64)[:, None]
    # |E[eps|x_T] - x_T| <= sqrt(abar_T) * max|mu| + O(abar_T): 0.0064 * 1.5 + small
    assert (oracle(y, t_batch(999, 13)) - y).abs().max() < 0.02
    a0 = linear1000.alpha_bars[0].item()
    y = torch.tensor([[-1.5], [1.0]], dtype=torch.float64) * math.sqrt(a0)
    assert (oracle.posterior_mean(y, t_batch(0, 2)) - y / math.sqrt(a0)).abs().max() < 1e-3


# ---- validation -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("args, message", [
    (([0.0, 1.0], [0.1, 0.1]), r"means must have shape \(K, d\)"),
    (([[0.0], [1.0]], [0.1, 0.1, 0.1]), r"stds must have shape \(K,\) or \(K, d\) with K = 2"),
    (([[0.0], [1.0]], [0.1, -0.1]), "stds must be finite and positive"),
    (([[0.0], [1.0]], [0.1, float("nan")]), "stds must be finite and positive"),
    (([[0.0], [1.0]], [0.1, 0.1], [0.3, 0.3]), "summing to 1"),
    (([[0.0], [1.0]], [0.1, 0.1], [1.2, -0.2]), "non-negative"),
    (([[0.0], [1.0]], [0.1, 0.1], [1.0]), "K = 2"),
])
def test_mixture_validation(args, message):
    with pytest.raises(ValueError, match=message):
        GaussianMixture(*args)


# ---- 2-D toy sets ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", TOY2D_NAMES)
def test_toy2d_shapes_and_reproducibility(name):
    x = toy2d(name, 500, torch.Generator().manual_seed(5))
    assert x.shape == (500, 2) and x.dtype == torch.float32 and torch.isfinite(x).all()
    assert x.abs().max() < 4.5, "roughly standardised: within [-2, 2]^2 up to noise tails"
    assert x.std(0).min() > 0.3, "not collapsed"
    again = toy2d(name, 500, torch.Generator().manual_seed(5))
    assert torch.equal(x, again)
    assert toy2d(name, 3, torch.Generator().manual_seed(5), dtype=torch.float64).dtype == torch.float64


def test_toy2d_geometry():
    g = torch.Generator().manual_seed(6)
    board = toy2d("checkerboard", 4000, g, dtype=torch.float64)
    assert ((board.floor().sum(1) % 2) == 0).all(), "only the squares with floor(x) + floor(y) even"
    assert (board.abs() <= 2).all()
    squares = {tuple(v) for v in board.floor().long().tolist()}
    assert len(squares) == 8
    ring = toy2d("eight_gaussians", 4000, g, dtype=torch.float64)
    r = ring.norm(dim=1)
    assert abs(r.mean().item() - 2.0) < 0.01 and r.std().item() < 0.15


@pytest.mark.parametrize("name, n, message", [
    ("spiral", 10, "unknown toy data set 'spiral'; choose one of swiss_roll, two_moons"),
    ("two_moons", 0, "n must be positive"),
])
def test_toy2d_bad_input(name, n, message):
    with pytest.raises(ValueError, match=message):
        toy2d(name, n)
