"""The generalised sampler (eq. 12, 16, App. D.3), DDPM's Algorithm 2 and DDIM inversion (eq. 13).

Models are analytic: the exact eps for a Gaussian mixture (``OracleEps``), or the exact eps for a
point mass. Tolerances: float64 round-off is eps = 2.2e-16; eq. 9 divides by sqrt(alpha_bar_t) >=
sqrt(4e-5) ~ 1/157 for T = 1000, so an O(1) state carries absolute errors ~157 eps ~ 3.5e-14 per
step; "same formula, differently arranged" comparisons use atol 1e-10 over <= 1000 steps (that
bound times 3 for safety). Monte Carlo: fixed seeds, KS p-values > 1e-3 under a true null.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from ddim_lib import (NoiseSchedule, OracleEps, Trajectory, ddim_step, ddpm_posterior, ddpm_sample,
                      encode, predict_eps, predict_x0, sample, sigma_eta, sigma_hat, slerp,
                      timesteps)

pytestmark = pytest.mark.usefixtures("single_thread")

ATOL = 1e-10
EPS64 = torch.finfo(torch.float64).eps


def alpha_bar_or_one(schedule: NoiseSchedule, t: int) -> float:
    return 1.0 if t < 0 else schedule.alpha_bars[t].item()


def step_pairs(tau: list[int]) -> list[tuple[int, int]]:
    """[(tau_S, tau_{S-1}), ..., (tau_1, -1)]: the reverse walk ending at alpha_bar = 1."""
    rev = list(reversed(tau))
    return list(zip(rev, rev[1:] + [-1]))


def reference_ddim(model, x, schedule, tau, eta, generator=None, clip_x0=False):
    """Eq. 12 written out, one step at a time, with eq. 16's sigma; noise drawn after each mean.

    With ``clip_x0`` the predicted x_0 is clamped to [-1, 1] and the model's eps is kept for the
    direction term (the official code's and diffusers' convention). Returns (x_0, xs, x0_preds).
    """
    xs, preds = [x], []
    for t, t_prev in step_pairs(tau):
        a_t, a_prev = alpha_bar_or_one(schedule, t), alpha_bar_or_one(schedule, t_prev)
        eps = model(x, torch.full((x.shape[0],), t, dtype=torch.long))
        x0_pred = (x - math.sqrt(1 - a_t) * eps) / math.sqrt(a_t)
        if clip_x0:
            x0_pred = x0_pred.clamp(-1, 1)
        sigma = eta * math.sqrt((1 - a_prev) / (1 - a_t)) * math.sqrt(1 - a_t / a_prev)
        x = math.sqrt(a_prev) * x0_pred + math.sqrt(1 - a_prev - sigma**2) * eps
        if sigma > 0:
            x = x + sigma * torch.randn(x.shape, generator=generator, dtype=x.dtype)
        xs.append(x)
        preds.append(x0_pred)
    return x, xs, preds


class PointMassEps:
    """The exact eps for data that is a single point x0: eps(x_t, t) = (x_t - sqrt(abar_t) x0) / sqrt(1 - abar_t)."""

    def __init__(self, x0: torch.Tensor, schedule: NoiseSchedule):
        self.x0, self.schedule = x0, schedule

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        a = self.schedule.alpha_bar(t).to(x.dtype)[:, None]
        return (x - a.sqrt() * self.x0) / (1 - a).sqrt()


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ---- one step -------------------------------------------------------------------------------------
def test_eta1_consecutive_step_is_ddpm_posterior(linear1000):
    """eta = 1, a_prev = abar_{t-1}: eq. 12's mean is DDPM's posterior mean at x_0 = predict_x0, and
    sigma^2 = beta_tilde_t (every t = 2..T at once, per-sample coefficients)."""
    t = torch.arange(1, 1000)
    a_t, a_prev = linear1000.alpha_bars[t], linear1000.alpha_bars[t - 1]
    g = gen(0)
    x_t = torch.randn(999, 3, generator=g, dtype=torch.float64)
    eps = torch.randn(999, 3, generator=g, dtype=torch.float64)
    sigma = sigma_eta(a_t, a_prev, 1.0)
    mean = ddim_step(x_t, eps, a_t, a_prev, sigma)
    post_mean, post_var = ddpm_posterior(predict_x0(x_t, eps, a_t), x_t, linear1000, t)
    torch.testing.assert_close(mean, post_mean, rtol=0, atol=ATOL)
    torch.testing.assert_close(sigma**2, post_var, rtol=1e-12, atol=0)


def test_ddim_step_three_terms():
    """x_prev = sqrt(a_prev) x0_pred + sqrt(1 - a_prev - sigma^2) eps + sigma z, term by term."""
    g = gen(1)
    a_t, a_prev, sigma = 0.2, 0.6, 0.3
    x_t = torch.randn(8, 4, generator=g, dtype=torch.float64)
    eps = torch.randn(8, 4, generator=g, dtype=torch.float64)
    z = torch.randn(8, 4, generator=g, dtype=torch.float64)
    # 1. eps = 0: only the predicted x_0 = x_t / sqrt(a_t), scaled by sqrt(a_prev)
    torch.testing.assert_close(ddim_step(x_t, torch.zeros_like(eps), a_t, a_prev, sigma),
                               math.sqrt(a_prev / a_t) * x_t, rtol=0, atol=1e-14)
    # 2. x_t = sqrt(1 - a_t) eps makes x0_pred = 0: only the direction term
    torch.testing.assert_close(ddim_step(math.sqrt(1 - a_t) * eps, eps, a_t, a_prev, sigma),
                               math.sqrt(1 - a_prev - sigma**2) * eps, rtol=0, atol=1e-14)
    # 3. the noise term is exactly sigma z on top of the mean
    full = ddim_step(x_t, eps, a_t, a_prev, sigma, noise=z)
    torch.testing.assert_close(full - ddim_step(x_t, eps, a_t, a_prev, sigma), sigma * z, rtol=0, atol=1e-14)
    x0_pred = (x_t - math.sqrt(1 - a_t) * eps) / math.sqrt(a_t)
    torch.testing.assert_close(full, math.sqrt(a_prev) * x0_pred + math.sqrt(1 - a_prev - sigma**2) * eps
                               + sigma * z, rtol=0, atol=1e-14)
    torch.testing.assert_close(predict_eps(x_t, x0_pred, a_t), eps, rtol=0, atol=1e-14)


def test_ddim_step_at_the_admissible_boundary_is_finite():
    """sigma = sqrt(1 - a_prev) computed in float64 can exceed the bound by an ulp: no NaN."""
    a_prev = 0.3
    sigma = math.sqrt(1 - a_prev)
    assert sigma**2 > 1 - a_prev                 # the round-off case this test is about
    x_t, eps = torch.ones(2, 2, dtype=torch.float64), torch.ones(2, 2, dtype=torch.float64)
    out = ddim_step(x_t, eps, 0.2, a_prev, sigma)
    torch.testing.assert_close(out, math.sqrt(a_prev) * predict_x0(x_t, eps, 0.2), rtol=0, atol=1e-14)


def test_sigma_hat_consecutive_is_beta_and_large_jump_is_inadmissible(linear1000):
    a, betas = linear1000.alpha_bars, linear1000.betas
    # 1 - a_t / a_prev recovers beta_t to eps absolute, i.e. eps / beta_t >= 2e-12 relative: rtol 1e-10.
    torch.testing.assert_close(sigma_hat(a[1:], a[:-1]) ** 2, betas[1:], rtol=1e-10, atol=0)
    a_t, a_prev = a[999].item(), a[500].item()
    s = sigma_hat(a_t, a_prev).item()
    assert s**2 > 1 - a_prev + 0.05, "the jump 1000 -> 501 makes sigma_hat^2 exceed 1 - alpha_bar_prev"
    x = torch.zeros(2, 2, dtype=torch.float64)
    with pytest.raises(ValueError, match="inadmissible"):
        ddim_step(x, x, a_t, a_prev, s)
    # ... which is why variance="sigma_hat" uses DDPM's posterior mean, not eq. 12 (App. D.3).


def test_sigma_eta_endpoints(linear1000):
    a = linear1000.alpha_bars
    assert (sigma_eta(a[1:], a[:-1], 0.0) == 0).all()
    beta_tilde = (1 - a[:-1]) / (1 - a[1:]) * linear1000.betas[1:]
    torch.testing.assert_close(sigma_eta(a[1:], a[:-1], 1.0) ** 2, beta_tilde, rtol=1e-10, atol=0)
    assert sigma_eta(0.5, 0.7, 1.0).dtype == torch.float64, "Python floats are computed in float64"
    with pytest.raises(ValueError, match="eta must be non-negative"):
        sigma_eta(0.5, 0.7, -0.1)


# ---- the loop ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0])
@pytest.mark.parametrize("trajectory, clip", [(False, False), (True, False), (False, True), (True, True)])
def test_sample_equals_eq12_written_out(linear1000, ring_oracle, eta, trajectory, clip):
    tau = timesteps(1000, 20, "quadratic")
    x_T = torch.randn(32, 2, generator=gen(2), dtype=torch.float64)
    ref, ref_xs, ref_preds = reference_ddim(ring_oracle, x_T, linear1000, tau, eta, gen(3), clip)
    out = sample(ring_oracle, x_T, linear1000, tau, eta=eta, generator=gen(3), clip_x0=clip,
                 return_trajectory=trajectory)
    if trajectory:
        assert isinstance(out, Trajectory) and len(out.xs) == 21 and len(out.x0_preds) == 20
        assert out.xs[0] is x_T and out.xs[-1] is out.x0
        for got, want in zip(out.xs + out.x0_preds, ref_xs + ref_preds):
            torch.testing.assert_close(got, want, rtol=0, atol=ATOL)
        out = out.x0
    torch.testing.assert_close(out, ref, rtol=0, atol=ATOL)
    if eta == 0.0 and not clip:   # the last step returns the predicted x_0
        torch.testing.assert_close(out, ref_preds[-1], rtol=0, atol=ATOL)


def test_sample_accepts_int_and_tensor_tau(linear1000, ring_oracle):
    x_T = torch.randn(8, 2, generator=gen(4), dtype=torch.float64)
    a = sample(ring_oracle, x_T, linear1000, 10)
    b = sample(ring_oracle, x_T, linear1000, list(range(0, 1000, 100)))
    c = sample(ring_oracle, x_T, linear1000, torch.arange(0, 1000, 100))
    d = sample(ring_oracle, x_T, linear1000, np.int64(10), eta=np.float32(0.0))   # numpy scalars welcome
    e = sample(ring_oracle, x_T, linear1000, np.arange(0, 1000, 100))
    assert torch.equal(a, b) and torch.equal(b, c) and torch.equal(c, d) and torch.equal(d, e)


def test_eta0_is_deterministic_and_draws_no_noise(linear1000, ring_oracle):
    x_T = torch.randn(16, 2, generator=gen(5), dtype=torch.float64)
    g = gen(6)
    state = g.get_state()
    first = sample(ring_oracle, x_T, linear1000, 25, eta=0.0, generator=g)
    assert torch.equal(g.get_state(), state), "eta = 0 must not advance the generator"
    second = sample(ring_oracle, x_T, linear1000, 25, eta=0.0)
    assert torch.equal(first, second), "bit-identical"
    noisy = sample(ring_oracle, x_T, linear1000, 25, eta=0.5, generator=g)
    assert not torch.equal(g.get_state(), state) and not torch.equal(noisy, first)


@pytest.mark.parametrize("tau", [[0, 3, 17, 60, 200, 450, 800, 999], list(range(0, 1000, 50))])
def test_sigma_hat_is_ddpm_posterior_for_the_jump(linear1000, ring_oracle, tau):
    """App. D.3: the mean of DDPM's posterior for the jump tau_i -> tau_{i-1} plus sigma_hat noise.

    The jump's posterior is ddpm_posterior on the sub-schedule with alpha_bars a[tau] (its betas
    1 - a[tau_i] / a[tau_{i-1}]); the last step (to alpha_bar = 1) returns the prediction, no noise.
    """
    a = linear1000.alpha_bars
    sub_betas = 1 - a[tau] / torch.cat([torch.ones(1, dtype=torch.float64), a[tau][:-1]])
    sub = NoiseSchedule(sub_betas)
    torch.testing.assert_close(sub.alpha_bars, a[tau], rtol=1e-12, atol=0)
    x = x_T = torch.randn(32, 2, generator=gen(7), dtype=torch.float64)
    g = gen(8)
    for i in range(len(tau) - 1, -1, -1):
        eps = ring_oracle(x, torch.full((32,), tau[i], dtype=torch.long))
        mean, var = ddpm_posterior(predict_x0(x, eps, a[tau[i]]), x, sub, i)
        x = mean
        if i > 0:
            assert var <= sub_betas[i]                      # beta_tilde <= sigma_hat^2 = beta of the jump
            x = x + sub_betas[i].sqrt() * torch.randn(x.shape, generator=g, dtype=x.dtype)
    out = sample(ring_oracle, x_T, linear1000, tau, variance="sigma_hat", generator=gen(8))
    torch.testing.assert_close(out, x, rtol=0, atol=ATOL)
    # eta is ignored by variance="sigma_hat"
    again = sample(ring_oracle, x_T, linear1000, tau, eta=0.7, variance="sigma_hat", generator=gen(8))
    assert torch.equal(out, again)


@pytest.fixture(scope="module")
def short_oracle(short_schedule, mixture1d):
    return OracleEps(mixture1d, short_schedule)


@pytest.mark.parametrize("ddpm_variance, kwargs", [("beta_tilde", dict(eta=1.0)), ("beta", dict(variance="sigma_hat"))])
def test_ddpm_sample_equals_consecutive_sample_pathwise(short_schedule, short_oracle, ddpm_variance, kwargs):
    """Same noise order (one draw per step except the last), so the same seed gives the same path."""
    x_T = torch.randn(500, 1, generator=gen(9), dtype=torch.float64)
    ddpm = ddpm_sample(short_oracle, x_T, short_schedule, variance=ddpm_variance, generator=gen(10))
    ours = sample(short_oracle, x_T, short_schedule, list(range(short_schedule.T)), generator=gen(10), **kwargs)
    torch.testing.assert_close(ours, ddpm, rtol=0, atol=ATOL)


def test_ddpm_and_eta1_agree_in_distribution(short_schedule, short_oracle, mixture1d):
    """Independent seeds: DDPM's Algorithm 2 and sample(eta = 1, all steps) give one law (KS p > 1e-3;
    measured D = 0.0056, p = 0.91). With the exact eps both land near the data law, but not on it:
    T = 50 Gaussian reverse steps carry a discretisation bias that n = 20000 resolves (measured
    Kolmogorov distance 0.021 for both, 0.013 for eta = 0, against 0.004 for 20000 data draws).
    The bound 0.03 is a regression bound on that bias."""
    n = 20_000
    x_T = torch.randn(n, 1, generator=gen(11), dtype=torch.float64)
    x_T2 = torch.randn(n, 1, generator=gen(12), dtype=torch.float64)
    ddpm = ddpm_sample(short_oracle, x_T, short_schedule, variance="beta_tilde", generator=gen(13))[:, 0]
    ours = sample(short_oracle, x_T2, short_schedule, short_schedule.T, eta=1.0, generator=gen(14))[:, 0]
    assert stats.ks_2samp(ddpm.numpy(), ours.numpy()).pvalue > 1e-3
    mu, sd, w = mixture1d.means[:, 0].numpy(), mixture1d.stds[:, 0].numpy(), mixture1d.weights.numpy()

    def cdf(x):
        return (w * stats.norm.cdf((np.asarray(x)[:, None] - mu) / sd)).sum(1)

    for xs in (ddpm, ours):
        assert stats.kstest(xs.numpy(), cdf).statistic < 0.03
    eta0 = sample(short_oracle, x_T, short_schedule, short_schedule.T, eta=0.0)[:, 0]
    assert stats.kstest(eta0.numpy(), cdf).statistic < 0.03


# ---- exact recovery properties -----------------------------------------------------------------------
random_betas = st.integers(2, 200).flatmap(
    lambda T: st.lists(st.floats(1e-5, 0.05), min_size=T, max_size=T))


@settings(deadline=None, max_examples=60)
@given(betas=random_betas, data=st.data())
def test_ddim_step_with_true_noise_lands_on_the_marginal_property(betas, data):
    """x_t = sqrt(a_t) x0 + sqrt(1 - a_t) eps and eps_theta = eps: eq. 12 gives sqrt(a_prev) x0 +
    sqrt(1 - a_prev - sigma^2) eps + sigma z exactly (sigma = 0: the deterministic DDIM image of x_t)."""
    sch = NoiseSchedule(torch.tensor(betas, dtype=torch.float64))
    t = data.draw(st.integers(0, sch.T - 1), label="t")
    t_prev = data.draw(st.integers(-1, t - 1), label="t_prev")
    eta = data.draw(st.floats(0.0, 1.0), label="eta")
    a_t, a_prev = alpha_bar_or_one(sch, t), alpha_bar_or_one(sch, t_prev)
    g = gen(data.draw(st.integers(0, 2**31), label="seed"))
    x0, eps, z = (torch.randn(4, 3, generator=g, dtype=torch.float64) for _ in range(3))
    x_t = math.sqrt(a_t) * x0 + math.sqrt(1 - a_t) * eps
    tol = 64 * EPS64 / math.sqrt(a_t)              # eq. 9's division by sqrt(a_t) amplifies round-off
    sigma = float(sigma_eta(a_t, a_prev, eta))
    got = ddim_step(x_t, eps, a_t, a_prev, sigma, noise=z)
    want = math.sqrt(a_prev) * x0 + math.sqrt(max(1 - a_prev - sigma**2, 0)) * eps + sigma * z
    torch.testing.assert_close(got, want, rtol=0, atol=tol * 10)
    got0 = ddim_step(x_t, eps, a_t, a_prev, 0.0)
    torch.testing.assert_close(got0, math.sqrt(a_prev) * x0 + math.sqrt(1 - a_prev) * eps, rtol=0, atol=tol * 10)


@settings(deadline=None, max_examples=40)
@given(betas=random_betas, data=st.data())
def test_sample_recovers_a_point_mass_property(betas, data):
    """Data = one point x0, model = its exact eps: every eq. 9 prediction is x0, so the sampler
    returns x0 from any x_T, for any tau, eta in [0, 1] and either variance (the last step has
    alpha_bar = 1 and no noise)."""
    sch = NoiseSchedule(torch.tensor(betas, dtype=torch.float64))
    S = data.draw(st.integers(1, sch.T), label="S")
    spacing = data.draw(st.sampled_from(["uniform", "quadratic"]), label="spacing")
    eta = data.draw(st.floats(0.0, 1.0), label="eta")
    variance = data.draw(st.sampled_from(["eta", "sigma_hat"]), label="variance")
    g = gen(data.draw(st.integers(0, 2**31), label="seed"))
    x0 = torch.randn(1, 2, generator=g, dtype=torch.float64)
    x_T = torch.randn(6, 2, generator=g, dtype=torch.float64)
    tau = timesteps(sch.T, S, spacing)
    out = sample(PointMassEps(x0, sch), x_T, sch, tau, eta=eta, variance=variance, generator=g)
    tol = 1000 * EPS64 / math.sqrt(sch.alpha_bars[tau[-1]].item())
    torch.testing.assert_close(out, x0.expand_as(out), rtol=0, atol=tol)


# ---- inversion -----------------------------------------------------------------------------------------
def test_encode_then_decode_error_falls_with_S(linear1000, ring, ring_oracle):
    """DDIM (eta = 0) is an Euler scheme for the ODE of eq. 14, so encode-then-decode errs by O(1/S).
    Bound at S = 1000: 0.02, a fifth of the ring components' std (0.1), with 3x room above the
    0.0068 worst case seen on 64 points; the points are data draws, the model the exact oracle."""
    x0 = ring.sample(16, gen(15))
    errors = []
    for S in (10, 50, 200, 1000):
        rec = sample(ring_oracle, encode(ring_oracle, x0, linear1000, S), linear1000, S, eta=0.0)
        errors.append((rec - x0).norm(dim=1).max().item())
    assert all(b < 0.7 * a for a, b in zip(errors, errors[1:])), errors
    assert errors[-1] < 0.02, errors


@pytest.mark.parametrize("tau", [[0, 3, 17, 60, 200, 450, 800, 999], list(range(0, 1000, 100))])
def test_encode_equals_eq13_written_out(linear1000, ring_oracle, tau):
    """Eq. 13 run forward: from (a_from, x) to a_to with eps evaluated at the state it starts from
    (at t = tau_1 for the first step, which starts at alpha_bar = 1)."""
    x = x0 = torch.randn(16, 2, generator=gen(22), dtype=torch.float64)
    for t_from, t_to in zip([-1] + tau[:-1], tau):
        a_from, a_to = alpha_bar_or_one(linear1000, t_from), alpha_bar_or_one(linear1000, t_to)
        eps = ring_oracle(x, torch.full((16,), max(t_from, tau[0]), dtype=torch.long))
        x0_pred = (x - math.sqrt(1 - a_from) * eps) / math.sqrt(a_from)
        x = math.sqrt(a_to) * x0_pred + math.sqrt(1 - a_to) * eps
    torch.testing.assert_close(encode(ring_oracle, x0, linear1000, tau), x, rtol=0, atol=ATOL)


def test_encode_first_step_is_eq12_from_alpha_bar_one(linear1000, ring_oracle):
    x0 = torch.randn(4, 2, generator=gen(16), dtype=torch.float64)
    tau = [0]
    eps = ring_oracle(x0, torch.zeros(4, dtype=torch.long))
    a0 = linear1000.alpha_bars[0].item()
    torch.testing.assert_close(encode(ring_oracle, x0, linear1000, tau),
                               math.sqrt(a0) * x0 + math.sqrt(1 - a0) * eps, rtol=0, atol=1e-14)


# ---- dtypes ---------------------------------------------------------------------------------------------
def test_float32_and_float64_agree(linear1000, ring, ring_oracle):
    """float32 round-off (6e-8) amplified by 1/sqrt(alpha_bar) <= 157 over 50 steps of O(1) states:
    <= ~50 * 157 * 6e-8 * 2 ~ 1e-3 (measured ~1.3e-4). torch draws different normals for float32
    and float64 from one seed, so the stochastic samplers are compared with eq. 12 written out in
    float32 (same float32 draws) instead of with the float64 run."""
    s32 = linear1000.to(dtype=torch.float32)
    o32 = OracleEps(ring, s32)
    x_T = torch.randn(32, 2, generator=gen(17), dtype=torch.float64)
    out64 = sample(ring_oracle, x_T, linear1000, 50, eta=0.0)
    out32 = sample(o32, x_T.float(), s32, 50, eta=0.0)
    assert out64.dtype == torch.float64 and out32.dtype == torch.float32
    torch.testing.assert_close(out32.double(), out64, rtol=0, atol=1e-3)
    for eta in (0.0, 1.0):
        got = sample(o32, x_T.float(), s32, 50, eta=eta, generator=gen(18))
        want, _, _ = reference_ddim(o32, x_T.float(), linear1000, timesteps(1000, 50), eta, gen(18))
        assert got.dtype == want.dtype == torch.float32 and torch.isfinite(got).all()
        torch.testing.assert_close(got, want, rtol=0, atol=1e-3)
    hat32 = sample(o32, x_T.float(), s32, 50, variance="sigma_hat", generator=gen(18))
    assert hat32.dtype == torch.float32 and torch.isfinite(hat32).all()
    short = NoiseSchedule.linear(50, beta_start=1e-3, beta_end=0.25)
    x = torch.randn(8, 2, generator=gen(19), dtype=torch.float64)
    d32 = ddpm_sample(OracleEps(ring, short.to(dtype=torch.float32)), x.float(), short.to(dtype=torch.float32),
                      generator=gen(20))
    assert d32.dtype == torch.float32 and torch.isfinite(d32).all()
    e32 = encode(o32, x.float(), s32, 20)
    assert e32.dtype == torch.float32 and torch.isfinite(e32).all()
    step32 = ddim_step(x.float(), x.float(), 0.3, 0.5, 0.1)
    assert step32.dtype == torch.float32


# ---- bad input ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs, message", [
    (dict(eta=-0.5), "eta must be a finite non-negative number"),
    (dict(eta=float("nan")), "eta must be a finite non-negative number"),
    (dict(eta=3.0), "eta = 3.0 is inadmissible"),
    (dict(variance="beta"), "variance must be 'eta' or 'sigma_hat'"),
    (dict(tau=[500, 100]), "strictly increasing"),
    (dict(tau=[0, 1000]), r"0\.\.T-1 = 0\.\.999"),
    (dict(tau=0), r"S must lie in 1\.\.T"),
    (dict(tau=1001), r"S must lie in 1\.\.T"),
    (dict(tau=[0.0, 10.0]), "integers"),
    (dict(tau=[]), "non-empty"),
    (dict(tau=10.0), "a sequence of ints, got 10.0"),
    (dict(tau="quadratic"), "tau must be an int S or an increasing sequence"),
])
def test_sample_rejects_bad_input(linear1000, ring_oracle, kwargs, message):
    kwargs = {"tau": 10, **kwargs}
    with pytest.raises(ValueError, match=message):
        sample(ring_oracle, torch.zeros(2, 2, dtype=torch.float64), linear1000, **kwargs)


def test_other_bad_input_raises(linear1000, ring_oracle):
    with pytest.raises(ValueError, match="x_T must be a floating-point tensor"):
        sample(ring_oracle, torch.zeros(2, 2, dtype=torch.long), linear1000, 10)
    with pytest.raises(ValueError, match="variance must be 'beta' or 'beta_tilde'"):
        ddpm_sample(ring_oracle, torch.zeros(2, 2, dtype=torch.float64), linear1000, variance="eta")
    with pytest.raises(ValueError, match="non-negative"):
        ddim_step(torch.zeros(2, 2), torch.zeros(2, 2), 0.3, 0.5, -0.1)
    with pytest.raises(ValueError, match=r"shape \(B,\) = \(2,\)"):
        ddim_step(torch.zeros(2, 2), torch.zeros(2, 2), torch.full((3,), 0.3), 0.5, 0.1)
    with pytest.raises(ValueError, match=r"S must lie in 1\.\.T"):
        encode(ring_oracle, torch.zeros(2, 2, dtype=torch.float64), linear1000, 0)
    with pytest.raises(ValueError, match="same shape"):
        slerp(torch.zeros(2, 3), torch.zeros(2, 4), 0.5)


def test_sample_admits_eta_above_one_only_where_admissible(linear1000, ring_oracle):
    """eq. 16 with eta <= 1 is always admissible; eta > 1 only where sigma^2 still fits (long jumps fail)."""
    x = torch.zeros(2, 2, dtype=torch.float64)
    sample(ring_oracle, x, linear1000, 10, eta=1.0, generator=gen(0))
    a_t, a_prev = linear1000.alpha_bars[100].item(), linear1000.alpha_bars[0].item()
    assert float(sigma_eta(a_t, a_prev, 1.05)) ** 2 > 1 - a_prev
    with pytest.raises(ValueError, match="inadmissible"):
        sample(ring_oracle, x, linear1000, [0, 100], eta=1.05, generator=gen(0))


# ---- slerp -------------------------------------------------------------------------------------------------
def test_slerp_endpoints_and_norm():
    g = gen(21)
    z0 = torch.randn(5, 10, generator=g, dtype=torch.float64)
    z1 = torch.randn(5, 10, generator=g, dtype=torch.float64)
    torch.testing.assert_close(slerp(z0, z1, 0.0), z0, rtol=0, atol=1e-12)
    torch.testing.assert_close(slerp(z0, z1, 1.0), z1, rtol=0, atol=1e-12)
    # orthonormal pair: slerp traces the unit circle, cos(lam pi/2) z0 + sin(lam pi/2) z1
    e0, e1 = torch.eye(10, dtype=torch.float64)[:1], torch.eye(10, dtype=torch.float64)[1:2]
    torch.testing.assert_close(slerp(e0, e1, 0.3), math.cos(0.15 * math.pi) * e0 + math.sin(0.15 * math.pi) * e1,
                               rtol=0, atol=1e-12)
    torch.testing.assert_close(slerp(z0, z0, 0.4), z0, rtol=0, atol=1e-12)   # parallel: linear fallback


@settings(max_examples=100, deadline=None)
@given(theta=st.floats(1e-5, math.pi - 1e-5), lam=st.floats(0, 1), d=st.integers(2, 6), seed=st.integers(0, 2**31 - 1))
def test_slerp_walks_the_great_circle_property(theta, lam, d, seed):
    """Unit z0, z1 at angle theta: slerp is a unit vector at angle lam theta from z0 and (1 - lam) theta
    from z1, including close to pi (conditioning ~ eps / (pi - theta) <= 2e-11 here)."""
    g = gen(seed)
    u = torch.randn(1, d, generator=g, dtype=torch.float64)
    u = u / u.norm()
    w = torch.randn(1, d, generator=g, dtype=torch.float64)
    w = w - (w * u).sum() * u
    w = w / w.norm()
    z1 = math.cos(theta) * u + math.sin(theta) * w
    out = slerp(u, z1, lam)
    torch.testing.assert_close(out, math.cos(lam * theta) * u + math.sin(lam * theta) * w, rtol=0, atol=1e-10)
    assert abs(out.norm().item() - 1) < 1e-10
