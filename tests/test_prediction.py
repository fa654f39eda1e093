"""Prediction types "eps", "x0", "v" (Salimans & Ho 2022): exact conversions, the samplers driven by
each type, and zero terminal SNR (Lin et al. 2023), where only "eps" breaks.

Tolerances (float64, eps = 2.2e-16): values are bounded by 10 in absolute value, so forming x_t
and converting costs a few ulps of 10 (~1e-14); the "eps" -> x0 and "x0" -> eps maps divide by
sqrt(abar) or sqrt(1 - abar), which amplifies that error by 1 / min(sqrt(abar), sqrt(1 - abar)):
the round-trip bound is 1e-13 / min(sqrt(abar), sqrt(1 - abar)) (about 7x the worst case above).
Whole samplers driven by differently arranged but equal formulas agree to 1e-10 (tests/test_sampler.py).
"""
from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ddim_lib import (PREDICTIONS, GaussianMixture, NoiseSchedule, OracleEps, convert_prediction, ddim_step,
                      ddpm_sample, encode, from_eps_x0, sample, timesteps, to_eps_x0)

pytestmark = pytest.mark.usefixtures("single_thread")
ATOL = 1e-10


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def pair(seed: int, shape=(6, 3), scale: float = 3.0):
    g = gen(seed)
    return (scale * torch.randn(shape, generator=g, dtype=torch.float64).clamp(-3, 3),
            scale * torch.randn(shape, generator=g, dtype=torch.float64).clamp(-3, 3))


# ---- the conversions ------------------------------------------------------------------------------------
@settings(max_examples=200, deadline=None)
@given(a=st.floats(1e-8, 1 - 1e-8), seed=st.integers(0, 2**31 - 1),
       p=st.sampled_from(PREDICTIONS), q=st.sampled_from(PREDICTIONS))
def test_round_trip_both_ways_property(a, seed, p, q):
    """(eps, x0) -> output -> (eps, x0) returns the pair, and convert_prediction(p -> q) is the q-output."""
    eps, x0 = pair(seed)
    x_t = math.sqrt(a) * x0 + math.sqrt(1 - a) * eps                      # eq. 4
    tol = 1e-13 / min(math.sqrt(a), math.sqrt(1 - a))
    out = from_eps_x0(eps, x0, a, p)
    eps2, x02 = to_eps_x0(out, x_t, a, p)
    torch.testing.assert_close(eps2, eps, rtol=0, atol=tol)
    torch.testing.assert_close(x02, x0, rtol=0, atol=tol)
    torch.testing.assert_close(convert_prediction(out, x_t, a, p, q), from_eps_x0(eps, x0, a, q), rtol=0, atol=tol)


def test_v_definition_and_its_inverses_closed_form():
    """v = sqrt(a) eps - sqrt(1 - a) x0; x0 = sqrt(a) x_t - sqrt(1 - a) v; eps = sqrt(1 - a) x_t + sqrt(a) v."""
    eps, x0 = pair(1)
    a = 0.5                                       # sqrt(a) = sqrt(1 - a) = 1/sqrt(2)
    x_t = (x0 + eps) / math.sqrt(2)
    v = from_eps_x0(eps, x0, a, "v")
    torch.testing.assert_close(v, (eps - x0) / math.sqrt(2), rtol=0, atol=1e-15)
    e, z = to_eps_x0(v, x_t, a, "v")
    torch.testing.assert_close(z, (x_t - v) / math.sqrt(2), rtol=0, atol=1e-15)
    torch.testing.assert_close(e, (x_t + v) / math.sqrt(2), rtol=0, atol=1e-15)
    # v is the rotation of (x0, eps) by the angle phi with cos(phi) = sqrt(a): |v|^2 + |x_t|^2 = |eps|^2 + |x0|^2
    torch.testing.assert_close(v.pow(2) + x_t.pow(2), eps.pow(2) + x0.pow(2), rtol=0, atol=1e-13)


def test_the_ends_of_the_schedule_are_exact():
    """abar = 1: x_t = x0, v = eps. abar = 0: x_t = eps, v = -x0. Each type that is defined there
    converts exactly (no division), the undefined ones raise naming the problem."""
    eps, x0 = pair(2)
    # abar = 1
    assert torch.equal(from_eps_x0(eps, x0, 1.0, "v"), eps)
    for p in ("eps", "v"):
        e, z = to_eps_x0(from_eps_x0(eps, x0, 1.0, p), x0, 1.0, p)
        assert torch.equal(e, eps) and torch.equal(z, x0)
    with pytest.raises(ValueError, match=r"'x0' prediction cannot give eps at alpha_bar = 1"):
        to_eps_x0(x0, x0, 1.0, "x0")
    # abar = 0
    assert torch.equal(from_eps_x0(eps, x0, 0.0, "v"), -x0)
    for p in ("x0", "v"):
        e, z = to_eps_x0(from_eps_x0(eps, x0, 0.0, p), eps, 0.0, p)
        assert torch.equal(e, eps) and torch.equal(z, x0)
    with pytest.raises(ValueError, match=r"'eps' prediction cannot give x_0 at alpha_bar = 0.*Lin et al"):
        to_eps_x0(eps, eps, 0.0, "eps")
    with pytest.raises(ValueError, match="alpha_bar = 0"):
        convert_prediction(eps, eps, 0.0, "eps", "v")


def test_per_sample_alpha_bar_matches_scalar_rows():
    eps, x0 = pair(3, (4, 5))
    a = torch.tensor([0.0, 0.2, 0.7, 1.0], dtype=torch.float64)
    x_t = a.sqrt()[:, None] * x0 + (1 - a).sqrt()[:, None] * eps
    v = from_eps_x0(eps, x0, a, "v")
    e, z = to_eps_x0(v, x_t, a, "v")
    for b in range(4):
        torch.testing.assert_close(v[b:b + 1], from_eps_x0(eps[b:b + 1], x0[b:b + 1], a[b].item(), "v"), rtol=0, atol=0)
    torch.testing.assert_close(e, eps, rtol=0, atol=1e-14)
    torch.testing.assert_close(z, x0, rtol=0, atol=1e-14)
    with pytest.raises(ValueError, match="alpha_bar = 0"):      # one abar = 0 in the batch is enough
        to_eps_x0(eps, x_t, a, "eps")


@pytest.mark.parametrize("call, message", [
    (lambda e, x: to_eps_x0(e, x, 0.5, "epsilon"), "prediction must be one of 'eps', 'x0', 'v'"),
    (lambda e, x: from_eps_x0(e, x, 0.5, "sample"), "prediction must be one of"),
    (lambda e, x: convert_prediction(e, x, 0.5, "eps", "V"), "prediction must be one of"),
    (lambda e, x: to_eps_x0(e[:, :2], x, 0.5, "v"), r"output has shape \(6, 2\) but x_t has \(6, 3\)"),
    (lambda e, x: from_eps_x0(e, x[:3], 0.5, "v"), "eps has shape"),
    (lambda e, x: to_eps_x0(e, x, 1.5, "v"), r"a_t must lie in \[0, 1\]"),
    (lambda e, x: to_eps_x0(e, x, -0.1, "v"), r"a_t must lie in \[0, 1\]"),
    (lambda e, x: to_eps_x0(e, x, float("nan"), "v"), r"a_t must lie in \[0, 1\]"),
    (lambda e, x: from_eps_x0(e, x, torch.full((5,), 0.5), "v"), r"shape \(B,\) = \(6,\)"),
    (lambda e, x: to_eps_x0(e.numpy(), x, 0.5, "v"), "must be tensors"),
])
def test_conversions_reject_bad_input(call, message):
    eps, x = pair(4)
    with pytest.raises(ValueError, match=message):
        call(eps, x)


# ---- the oracle of each type -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def mix2d() -> GaussianMixture:
    return GaussianMixture([[-1.0, 0.5], [1.5, -0.5], [0.0, 2.0]], [[0.3, 0.6], [0.5, 0.2], [0.4, 0.4]],
                           [0.2, 0.5, 0.3])


def test_oracle_outputs_are_one_posterior(mix2d, linear1000):
    """E[x_t | x_t] = x_t = sqrt(abar) E[x0 | x_t] + sqrt(1 - abar) E[eps | x_t]: the eps oracle and the
    posterior mean (computed independently) satisfy eq. 4, and the x0 / v oracles are those two."""
    x = torch.randn(64, 2, generator=gen(5), dtype=torch.float64) * 2
    t = torch.randint(0, 1000, (64,), generator=gen(6))
    a = linear1000.alpha_bars[t]
    eps_o = OracleEps(mix2d, linear1000)
    eps, x0 = eps_o(x, t), eps_o.posterior_mean(x, t)
    torch.testing.assert_close(a.sqrt()[:, None] * x0 + (1 - a).sqrt()[:, None] * eps, x, rtol=0, atol=1e-12)
    torch.testing.assert_close(OracleEps(mix2d, linear1000, "x0")(x, t), x0, rtol=0, atol=0)
    torch.testing.assert_close(OracleEps(mix2d, linear1000, "v")(x, t),
                               a.sqrt()[:, None] * eps - (1 - a).sqrt()[:, None] * x0, rtol=0, atol=1e-15)


def test_oracle_is_exact_at_zero_terminal_snr(mix2d, linear1000):
    """At abar = 0, x_t = eps is independent of x_0: eps* = x_t, x0* = E[x_0] = sum_k w_k mu_k, v* = -E[x_0]."""
    z = linear1000.rescale_zero_terminal_snr()
    x = torch.randn(16, 2, generator=gen(7), dtype=torch.float64)
    t = torch.full((16,), 999)
    mean = (mix2d.weights[:, None] * mix2d.means).sum(0).expand(16, 2)
    # the posterior weights r_k = w_k sum to 1 up to round-off: a few ulps of |x| <= 4
    torch.testing.assert_close(OracleEps(mix2d, z)(x, t), x, rtol=0, atol=4e-15)
    torch.testing.assert_close(OracleEps(mix2d, z, "x0")(x, t), mean, rtol=0, atol=4e-15)
    torch.testing.assert_close(OracleEps(mix2d, z, "v")(x, t), -mean, rtol=0, atol=4e-15)


def test_oracle_rejects_unknown_prediction(mix2d, linear1000):
    with pytest.raises(ValueError, match="prediction must be one of"):
        OracleEps(mix2d, linear1000, "epsilon")


# ---- the samplers with each type -------------------------------------------------------------------------
@pytest.mark.parametrize("prediction", ["x0", "v"])
@pytest.mark.parametrize("kwargs", [dict(eta=0.0), dict(eta=1.0), dict(eta=0.0, return_trajectory=True),
                                    dict(eta=0.5, clip_x0=True), dict(variance="sigma_hat")])
def test_sample_with_any_prediction_equals_eps(mix2d, linear1000, prediction, kwargs):
    """The exact x0 and v oracles are the exact eps oracle in disguise: same samples to round-off
    (same noise draws), on the fused path and on the explicit one (trajectory, clipping)."""
    x_T = torch.randn(32, 2, generator=gen(8), dtype=torch.float64)
    tau = timesteps(1000, 20)
    ref = sample(OracleEps(mix2d, linear1000), x_T, linear1000, tau, generator=gen(9), **kwargs)
    got = sample(OracleEps(mix2d, linear1000, prediction), x_T, linear1000, tau, generator=gen(9),
                 prediction=prediction, **kwargs)
    if kwargs.get("return_trajectory"):
        for a, b in zip(got.x0_preds, ref.x0_preds):
            torch.testing.assert_close(a, b, rtol=0, atol=ATOL)
        got, ref = got.x0, ref.x0
    torch.testing.assert_close(got, ref, rtol=0, atol=ATOL)


@pytest.mark.parametrize("prediction", ["x0", "v"])
def test_encode_and_ddpm_with_any_prediction_equal_eps(mix2d, short_schedule, prediction):
    x = torch.randn(16, 2, generator=gen(10), dtype=torch.float64)
    eps_model, model = OracleEps(mix2d, short_schedule), OracleEps(mix2d, short_schedule, prediction)
    torch.testing.assert_close(encode(model, x, short_schedule, 10, prediction=prediction),
                               encode(eps_model, x, short_schedule, 10), rtol=0, atol=ATOL)
    for variance in ("beta", "beta_tilde"):
        torch.testing.assert_close(
            ddpm_sample(model, x, short_schedule, variance, generator=gen(11), prediction=prediction),
            ddpm_sample(eps_model, x, short_schedule, variance, generator=gen(11)), rtol=0, atol=ATOL)


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
def test_ddim_step_with_any_prediction(prediction):
    eps, x0 = pair(12)
    a_t, a_prev, sigma = 0.3, 0.6, 0.2
    x_t = math.sqrt(a_t) * x0 + math.sqrt(1 - a_t) * eps
    noise = torch.randn(x0.shape, generator=gen(13), dtype=torch.float64)
    want = math.sqrt(a_prev) * x0 + math.sqrt(1 - a_prev - sigma**2) * eps + sigma * noise    # eq. 12
    got = ddim_step(x_t, from_eps_x0(eps, x0, a_t, prediction), a_t, a_prev, sigma, noise, prediction=prediction)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-13)


# ---- zero terminal SNR -------------------------------------------------------------------------------------
class Counting:
    """Wraps a model and counts its calls."""

    def __init__(self, model):
        self.model, self.calls = model, 0

    def __call__(self, x, t):
        self.calls += 1
        return self.model(x, t)


def test_eps_model_refused_before_the_loop_at_zero_terminal_snr(mix2d, linear1000):
    z = linear1000.rescale_zero_terminal_snr()
    x_T = torch.randn(8, 2, generator=gen(14), dtype=torch.float64)
    tau = timesteps(1000, 10, "trailing")
    assert tau[-1] == 999 and z.alpha_bars[999].item() == 0.0
    model = Counting(OracleEps(mix2d, z))
    with pytest.raises(ValueError, match=r"'eps' prediction cannot give x_0 at alpha_bar = 0.*t = 999"):
        sample(model, x_T, z, tau)
    with pytest.raises(ValueError, match="alpha_bar = 0"):
        ddpm_sample(model, x_T, z)
    assert model.calls == 0, "the error must come before the first model call"
    # a spacing that never visits t = 999 stays defined for eps, and encode never evaluates at tau_S
    assert torch.isfinite(sample(model, x_T, z, timesteps(1000, 10, "leading"))).all()
    assert torch.isfinite(encode(model, x_T, z, tau)).all()


def test_v_and_x0_models_sample_from_zero_terminal_snr(mix2d, linear1000):
    """First step from abar = 0 (eta = 0): x0_pred = E[x0] exactly, eps = x_T, so eq. 12 gives
    sqrt(abar') E[x0] + sqrt(1 - abar') x_T; the v, x0 and (above t = 999) eps runs agree."""
    z = linear1000.rescale_zero_terminal_snr()
    x_T = torch.randn(8, 2, generator=gen(15), dtype=torch.float64)
    tau = timesteps(1000, 10, "trailing")
    mean = (mix2d.weights[:, None] * mix2d.means).sum(0)
    a1 = z.alpha_bars[tau[-2]].item()
    runs = {}
    for p in ("v", "x0"):
        tr = sample(OracleEps(mix2d, z, p), x_T, z, tau, prediction=p, return_trajectory=True)
        torch.testing.assert_close(tr.x0_preds[0], mean.expand(8, 2), rtol=0, atol=4e-15)
        torch.testing.assert_close(tr.xs[1], math.sqrt(a1) * mean + math.sqrt(1 - a1) * x_T, rtol=0, atol=1e-14)
        runs[p] = tr.x0
        assert torch.isfinite(tr.x0).all()
    torch.testing.assert_close(runs["v"], runs["x0"], rtol=0, atol=ATOL)
    # from the second state on, an eps model is defined: it continues the same path
    rest = sample(OracleEps(mix2d, z), math.sqrt(a1) * mean + math.sqrt(1 - a1) * x_T, z, tau[:-1])
    torch.testing.assert_close(rest, runs["v"], rtol=0, atol=ATOL)
    d = ddpm_sample(OracleEps(mix2d, short := NoiseSchedule.linear(50, 1e-3, 0.25).rescale_zero_terminal_snr(), "v"),
                    x_T, short, generator=gen(16), prediction="v")
    assert torch.isfinite(d).all()


def test_encode_onto_zero_terminal_snr_ends_at_the_eps_prediction(mix2d, linear1000):
    """The last inversion step goes to abar = 0: x_T = sqrt(0) x0_pred + sqrt(1) eps = eps(x_{tau_{S-1}})."""
    z = linear1000.rescale_zero_terminal_snr()
    tau = timesteps(1000, 10, "trailing")
    x0 = mix2d.sample(8, gen(17))
    oracle = OracleEps(mix2d, z)
    before = encode(oracle, x0, z, tau[:-1])
    want = oracle(before, torch.full((8,), tau[-2]))
    for p in PREDICTIONS:
        got = encode(OracleEps(mix2d, z, p), x0, z, tau, prediction=p)
        torch.testing.assert_close(got, want, rtol=0, atol=ATOL)


@pytest.mark.parametrize("kwargs", [dict(eta=1.0), dict(variance="sigma_hat"), dict(eta=0.3, clip_x0=True)])
def test_stochastic_samplers_from_zero_terminal_snr(mix2d, linear1000, kwargs):
    """From abar = 0 the first step's sigma is eta sqrt(1 - abar') (eq. 16) or 1 (sigma_hat: beta = 1):
    finite, and the v and x0 models draw the same samples from the same noise."""
    z = linear1000.rescale_zero_terminal_snr()
    x_T = torch.randn(16, 2, generator=gen(18), dtype=torch.float64)
    tau = timesteps(1000, 20, "trailing")
    v, x0 = (sample(OracleEps(mix2d, z, p), x_T, z, tau, generator=gen(19), prediction=p, **kwargs)
             for p in ("v", "x0"))
    assert torch.isfinite(v).all()
    torch.testing.assert_close(v, x0, rtol=0, atol=ATOL)
