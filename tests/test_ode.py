"""DDIM as an ODE (claims O1, O2): ddim_lib.ode, checked in float64 against exact identities.

Tolerances: "round-off" comparisons use rtol = atol = 1e-10. Both sides are a few float64 operations
on numbers of size at most about 1 / sqrt(alpha_bar) <= 1e3 here, so their round-off is below 1e-12;
a wrong formula (sigma^2 for sigma, a missing square root) is off by O(1).
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ddim_lib import GaussianMixture, NoiseSchedule, OracleEps, ddim_step, sample
from ddim_lib.ode import (alpha_bar_from_sigma, euler_step_sigma, euler_step_sigma_sq, from_ve,
                          heun_sample, ode_nfe, ode_sample, sigma_from_alpha_bar, to_ve)

F64 = dict(dtype=torch.float64)
ROUND_OFF = dict(rtol=1e-10, atol=1e-10)


@pytest.fixture(scope="module")
def schedule():
    return NoiseSchedule.linear(1000)


# ---- the exact Gaussian flow used as ground truth ----------------------------------------------
MEAN, STD = torch.tensor([0.5, -1.0], **F64), 0.7      # data N(MEAN, STD^2 I) in 2-D


def gaussian_flow(x_bar, sigma_from, sigma_to):
    """Exact solution of eq. 14 for N(m, s^2) data: m + (x_bar - m) sqrt(s^2 + sigma_to^2) / sqrt(s^2 + sigma_from^2)."""
    return MEAN + (x_bar - MEAN) * math.sqrt(STD**2 + sigma_to**2) / math.sqrt(STD**2 + sigma_from**2)


def test_gaussian_flow_solves_eq14(schedule):
    """d/dsigma of the flow equals the oracle eps* at every point on it: the reference is a solution."""
    oracle = OracleEps(GaussianMixture(MEAN[None], STD), schedule)
    x_bar0 = torch.randn(5, 2, generator=torch.Generator().manual_seed(1), **F64) * 3
    for t in (0, 100, 500, 999):
        s = sigma_from_alpha_bar(schedule.alpha_bars[t]).item()
        x_bar = gaussian_flow(x_bar0, 2.0, s)
        # analytic derivative of the flow in sigma
        slope = (x_bar0 - MEAN) * s / math.sqrt((STD**2 + 2.0**2) * (STD**2 + s**2))
        eps = oracle(from_ve(x_bar, s)[0], torch.full((5,), t))
        torch.testing.assert_close(eps, slope, **ROUND_OFF)


# ---- coordinates -------------------------------------------------------------------------------
@given(st.floats(1e-6, 1.0), st.integers(1, 4))
def test_coordinates_round_trip(a, batch):
    x = torch.linspace(-2, 2, batch * 3, **F64).reshape(batch, 3)
    x_bar, sigma = to_ve(x, a)
    assert math.isclose(sigma.item(), math.sqrt((1 - a) / a), rel_tol=1e-12)
    x_back, a_back = from_ve(x_bar, sigma)
    torch.testing.assert_close(x_back, x, **ROUND_OFF)
    assert math.isclose(a_back.item(), a, rel_tol=1e-10)
    assert math.isclose(alpha_bar_from_sigma(sigma_from_alpha_bar(a)).item(), a, rel_tol=1e-10)


def test_coordinates_per_sample_and_endpoint():
    a = torch.tensor([1.0, 0.5, 0.2], **F64)
    x = torch.ones(3, 2, **F64)
    x_bar, sigma = to_ve(x, a)
    torch.testing.assert_close(sigma, torch.tensor([0.0, 1.0, 2.0], **F64), **ROUND_OFF)
    torch.testing.assert_close(x_bar[:, 0], 1 / a.sqrt(), **ROUND_OFF)   # alpha_bar = 1: x_bar = x


# ---- O1: one DDIM step is one Euler step of eq. 14 ---------------------------------------------
@settings(deadline=None, max_examples=60)
@given(st.lists(st.floats(1e-5, 0.05), min_size=2, max_size=50), st.data())
def test_ddim_step_is_euler_step_of_eq14(betas, data):
    """claim O1, for random schedules and random step pairs (t, t_prev), t_prev = -1 included."""
    sched = NoiseSchedule(torch.tensor(betas, **F64))
    t = data.draw(st.integers(0, sched.T - 1))
    t_prev = data.draw(st.integers(-1, t - 1))
    a_t, a_prev = sched.alpha_bar(t).item(), sched.alpha_bar(t_prev).item()
    gen = torch.Generator().manual_seed(data.draw(st.integers(0, 2**31)))
    x, eps = torch.randn(4, 3, generator=gen, **F64), torch.randn(4, 3, generator=gen, **F64)

    x_prev = ddim_step(x, eps, a_t, a_prev, 0.0)                         # eq. 12, sigma_t = 0
    x_bar, s = to_ve(x, a_t)
    x_bar_prev = euler_step_sigma(x_bar, eps, s, sigma_from_alpha_bar(a_prev))   # eq. 14, Euler
    torch.testing.assert_close(to_ve(x_prev, a_prev)[0], x_bar_prev, **ROUND_OFF)


def test_euler_sampler_is_ddim_sampler(schedule):
    """ode_sample("euler") reproduces sample(eta=0) over a whole run, per-sample batch included."""
    oracle = OracleEps(GaussianMixture.ring(8, 2.0, 0.3), schedule)
    x_T = torch.randn(32, 2, generator=torch.Generator().manual_seed(0), **F64)
    for tau in (10, [0, 7, 50, 333, 999]):
        torch.testing.assert_close(ode_sample(oracle, x_T, schedule, tau), sample(oracle, x_T, schedule, tau),
                                   **ROUND_OFF)


def test_k_diffusion_euler_is_ddim(schedule):
    """k-diffusion's Euler step with a denoiser D: d = (x_bar - D) / sigma, x_bar += d (sigma' - sigma)."""
    oracle = OracleEps(GaussianMixture.ring(8, 2.0, 0.3), schedule)
    x = torch.randn(16, 2, generator=torch.Generator().manual_seed(3), **F64)
    t, t_prev = 600, 400
    a_t, a_prev = schedule.alpha_bars[t].item(), schedule.alpha_bars[t_prev].item()
    t_batch = torch.full((16,), t)
    x_bar, s = to_ve(x, a_t)
    denoised = oracle.posterior_mean(x, t_batch)                   # E[x_0 | x_t], not via eps
    x_bar_k = x_bar + (x_bar - denoised) / s * (sigma_from_alpha_bar(a_prev) - s)
    x_ddim = ddim_step(x, oracle(x, t_batch), a_t, a_prev, 0.0)
    torch.testing.assert_close(from_ve(x_bar_k, sigma_from_alpha_bar(a_prev))[0], x_ddim, **ROUND_OFF)


# ---- O2: Prop. 1 and eq. 15 --------------------------------------------------------------------
def test_oracle_eps_is_minus_sigma_times_ve_score(schedule):
    """Prop. 1's key identity: eps*(x_t, t) = -sigma grad log p_sigma(x_bar), p_sigma = p_data * N(0, sigma^2)."""
    mix = GaussianMixture.ring(8, 2.0, 0.3)
    oracle = OracleEps(mix, schedule)
    x_bar = torch.randn(16, 2, generator=torch.Generator().manual_seed(2), **F64) * 2
    for t in (0, 50, 300, 999):
        s = sigma_from_alpha_bar(schedule.alpha_bars[t]).item()
        p_sigma = GaussianMixture(mix.means, (mix.stds**2 + s**2).sqrt(), mix.weights)
        x_req = x_bar.clone().requires_grad_(True)
        score, = torch.autograd.grad(p_sigma.log_prob(x_req).sum(), x_req)
        eps = oracle(from_ve(x_bar, s)[0], torch.full((16,), t))
        torch.testing.assert_close(eps, -s * score, **ROUND_OFF)


@given(st.floats(1e-3, 100.0), st.floats(0.0, 1.0))
def test_eq15_minus_eq14_is_exactly_quadratic(sigma, frac):
    """(eq. 15 step) - (eq. 14 step) = (sigma' - sigma)^2 / (2 sigma) eps, for any sigma' in [0, sigma]."""
    sigma_next = sigma * frac
    x_bar, eps = torch.tensor([[0.3, -2.0]], **F64), torch.tensor([[1.5, 0.25]], **F64)
    diff = euler_step_sigma_sq(x_bar, eps, sigma, sigma_next) - euler_step_sigma(x_bar, eps, sigma, sigma_next)
    torch.testing.assert_close(diff, (sigma_next - sigma) ** 2 / (2 * sigma) * eps, rtol=1e-9, atol=1e-12 * sigma)


def test_eq15_vs_eq14_one_step_difference_is_second_order(schedule):
    """With the oracle on the code grid: halving the step divides the one-step difference by about 4."""
    oracle = OracleEps(GaussianMixture.ring(8, 2.0, 0.3), schedule)
    t = 500
    x = torch.randn(64, 2, generator=torch.Generator().manual_seed(4), **F64)
    x_bar, s = to_ve(x, schedule.alpha_bars[t])
    eps = oracle(x, torch.full((64,), t))

    def gap(k):
        s_next = sigma_from_alpha_bar(schedule.alpha_bars[t - k])
        return (euler_step_sigma_sq(x_bar, eps, s, s_next) - euler_step_sigma(x_bar, eps, s, s_next)).norm()

    ratios = [(gap(k) / gap(k // 2)).item() for k in (64, 16, 4, 2)]
    # The ratio is (Delta sigma(k) / Delta sigma(k/2))^2: it tends to 4 as k -> 0, from below because
    # sigma(t) is convex here; a first-order gap would tend to 2. Require monotone approach to 4.
    assert all(3 < r < 4 for r in ratios) and ratios == sorted(ratios), ratios
    assert 4 - ratios[-1] < 0.1, ratios


# ---- orders of convergence with the exact Gaussian flow ----------------------------------------
def _global_errors(schedule, method, steps, t_start=960):
    """Mean |x_0 - exact| from a fixed x_T at t_start, tau = {0, h, ..., t_start} with h = t_start / n.

    Reference: the exact flow from sigma(t_start) to sigma(0), then the final step (0 -> -1) that
    every method shares (an Euler step of size sigma(0) = 0.01), so only the ODE steps are measured.
    """
    oracle = OracleEps(GaussianMixture(MEAN[None], STD), schedule)
    x_T = torch.randn(16, 2, generator=torch.Generator().manual_seed(5), **F64)
    s_start, s0 = (sigma_from_alpha_bar(schedule.alpha_bars[t]).item() for t in (t_start, 0))
    x_bar_0 = gaussian_flow(x_T * math.sqrt(1 + s_start**2), s_start, s0)
    ref = euler_step_sigma(x_bar_0, oracle(from_ve(x_bar_0, s0)[0], torch.zeros(16, dtype=torch.long)), s0, 0.0)
    errors = []
    for n in steps:
        x0 = ode_sample(oracle, x_T, schedule, list(range(0, t_start + 1, t_start // n)), method)
        errors.append((x0 - ref).norm(dim=1).mean().item())
    return np.array(errors)


def _slope(steps, errors):
    return -np.polyfit(np.log(steps), np.log(errors), 1)[0]


@pytest.mark.parametrize("method, lo, hi", [("euler", 0.85, 1.15), ("heun", 1.8, 2.2)])
def test_order_of_convergence(schedule, method, lo, hi):
    """Euler (DDIM) is first order and Heun second order: log-log slope of error versus steps.

    Intervals: the theory gives 1 and 2 as the step shrinks; at 20-80 steps over t in [0, 960] the
    pre-asymptotic bias is a few per cent, so +-0.15 and +-0.2 allow for it while a method of the
    other order (slope 2 or 1) fails clearly.
    """
    steps = [20, 40, 80]
    assert lo <= _slope(steps, _global_errors(schedule, method, steps)) <= hi


def test_heun_beats_ddim_at_equal_nfe(schedule):
    """At 41 model evaluations, Heun (20 steps) has a smaller error than DDIM (40 steps)."""
    (err_heun,), (err_ddim,) = _global_errors(schedule, "heun", [20]), _global_errors(schedule, "euler", [40])
    assert ode_nfe("heun", 21) == ode_nfe("euler", 41) == 41
    assert err_heun < err_ddim / 2      # a clear margin, not a tie decided by round-off


# ---- model evaluations, dtypes -----------------------------------------------------------------
class CountingModel(torch.nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.inner, self.calls, self.ts = inner, 0, []

    def forward(self, x, t):
        self.calls += 1
        self.ts.append(int(t[0]))
        return self.inner(x, t)


@pytest.mark.parametrize("method", ["euler", "euler_sigma_sq", "heun"])
def test_nfe_and_integer_grid(schedule, method):
    model = CountingModel(OracleEps(GaussianMixture.ring(4, 1.0, 0.5), schedule))
    tau = [0, 10, 200, 999]
    ode_sample(model, torch.zeros(3, 2, **F64), schedule, tau, method)
    assert model.calls == ode_nfe(method, len(tau)) == ode_nfe(method, np.int64(len(tau)))
    assert set(model.ts) == set(tau)
    if method == "heun":    # predictor at t, corrector at t', then the final Euler step at tau_1
        assert model.ts == [999, 200, 200, 10, 10, 0, 0]


def test_heun_with_one_step_is_ddim(schedule):
    oracle = OracleEps(GaussianMixture.ring(4, 1.0, 0.5), schedule)
    x_T = torch.randn(8, 2, generator=torch.Generator().manual_seed(6), **F64)
    torch.testing.assert_close(heun_sample(oracle, x_T, schedule, [700]), sample(oracle, x_T, schedule, [700]),
                               **ROUND_OFF)


def test_float32_and_shapes(schedule):
    oracle = OracleEps(GaussianMixture.ring(4, 1.0, 0.5), schedule)
    x_T = torch.randn(5, 1, 2, generator=torch.Generator().manual_seed(7))
    out = heun_sample(oracle, x_T, schedule, 5)
    assert out.dtype == torch.float32 and out.shape == x_T.shape
    torch.testing.assert_close(out.double(), heun_sample(oracle, x_T.double(), schedule, 5), rtol=1e-4, atol=1e-4)
    x_bar, s = to_ve(x_T, 0.5)
    assert x_bar.dtype == torch.float32 and euler_step_sigma(x_bar, x_bar, s, 0.1).dtype == torch.float32


# ---- bad input ---------------------------------------------------------------------------------
@pytest.mark.parametrize("call", [
    lambda: sigma_from_alpha_bar(0.0),
    lambda: sigma_from_alpha_bar(1.5),
    lambda: sigma_from_alpha_bar(float("nan")),
    lambda: to_ve(torch.ones(2, 2), torch.tensor([0.5, -0.1])),
    lambda: to_ve(torch.ones(2, 2), torch.tensor([0.5, 0.5, 0.5])),
    lambda: alpha_bar_from_sigma(-1.0),
    lambda: from_ve(torch.ones(2), float("inf")),
    lambda: euler_step_sigma(torch.ones(2), torch.ones(2), 1.0, -0.5),
    lambda: euler_step_sigma_sq(torch.ones(2), torch.ones(2), 0.0, 0.0),
    lambda: ode_nfe("rk4", 3),
    lambda: ode_nfe("heun", 0),
    lambda: ode_nfe("heun", 2.0),
])
def test_invalid_inputs_raise(call):
    with pytest.raises(ValueError):
        call()


def test_invalid_sampler_inputs_raise(schedule):
    oracle = OracleEps(GaussianMixture.ring(4, 1.0, 0.5), schedule)
    x_T = torch.zeros(2, 2, **F64)
    for kwargs in (dict(tau=[5, 3]), dict(tau=[0, 1000]), dict(tau=0), dict(tau=5, method="rk4")):
        with pytest.raises(ValueError):
            ode_sample(oracle, x_T, schedule, **kwargs)
    with pytest.raises(ValueError):
        heun_sample(oracle, torch.zeros(2, 2, dtype=torch.long), schedule, 5)
