"""DPM-Solver++(2M) (ddim_lib.dpm_solver), checked in float64.

Tolerances: "round-off" comparisons use rtol = atol = 1e-10 (a few float64 operations per step on
numbers of size <= 1e3); a wrong coefficient (e^{h} for e^{-h}, r inverted, a missing 1/2) is off by
O(1e-2) or more on these paths. The order tests use the exact flow of Gaussian data (closed form).
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ddim_lib import GaussianMixture, NoiseSchedule, OracleEps, ddim_step, predict_x0, sample
from ddim_lib.dpm_solver import (dpm_solver_pp_2m, dpm_solver_pp_step, lambda_from_alpha_bar, logsnr_timesteps,
                                 mixture_ode_x0)

F64 = dict(dtype=torch.float64)
ROUND_OFF = dict(rtol=1e-10, atol=1e-10)


@pytest.fixture(autouse=True)
def _one_thread(single_thread):
    """Tiny tensors: one intra-op thread (conftest's fixture)."""


@pytest.fixture(scope="module")
def schedule():
    return NoiseSchedule.linear(1000)


@pytest.fixture(scope="module")
def oracle(schedule):
    return OracleEps(GaussianMixture.ring(k=8, radius=2.0, std=0.3), schedule)


def _x(n=64, d=2, seed=0):
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed), **F64)


# ---- lambda ------------------------------------------------------------------------------------
def test_lambda_is_half_log_snr():
    a = torch.tensor([1e-6, 0.1, 0.5, 0.9, 1 - 1e-9], **F64)
    torch.testing.assert_close(lambda_from_alpha_bar(a), 0.5 * torch.log(a / (1 - a)), rtol=1e-12, atol=0)
    assert lambda_from_alpha_bar(0.5).item() == 0.0 and math.isinf(lambda_from_alpha_bar(1.0).item())
    for bad in (0.0, -0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match="alpha_bar"):
            lambda_from_alpha_bar(bad)


# ---- eq. 2 is DDIM -----------------------------------------------------------------------------
@pytest.mark.parametrize("a_t, a_s", [(0.01, 0.3), (0.5, 0.51), (0.9, 0.9999), (0.2, 1.0)])
def test_first_order_step_is_ddim_step(a_t, a_s):
    x, eps = _x(seed=1), _x(seed=2)
    x0 = predict_x0(x, eps, a_t)
    torch.testing.assert_close(dpm_solver_pp_step(x, x0, a_t, a_s), ddim_step(x, eps, a_t, a_s, 0.0), **ROUND_OFF)


@pytest.mark.parametrize("tau", [10, 50, [0], [0, 1, 2], [0, 7, 50, 999], list(range(0, 1000, 37))])
def test_order_one_is_ddim(oracle, schedule, tau):
    x_T = _x(seed=3)
    torch.testing.assert_close(dpm_solver_pp_2m(oracle, x_T, schedule, tau, order=1),
                               sample(oracle, x_T, schedule, tau), **ROUND_OFF)


@settings(max_examples=25, deadline=None)
@given(st.lists(st.floats(1e-4, 0.3), min_size=5, max_size=40), st.data())
def test_order_one_is_ddim_on_random_schedules(betas, data):
    schedule = NoiseSchedule(torch.tensor(betas, **F64))
    tau = sorted(data.draw(st.sets(st.integers(0, len(betas) - 1), min_size=1, max_size=len(betas))))
    model = OracleEps(GaussianMixture([[-1.0], [1.5]], [0.4, 0.6], [0.3, 0.7]), schedule)
    x_T = _x(8, 1, seed=4)
    torch.testing.assert_close(dpm_solver_pp_2m(model, x_T, schedule, tau, order=1),
                               sample(model, x_T, schedule, tau), **ROUND_OFF)


# ---- eq. 3 against an independent implementation ----------------------------------------------
def _reference_2m(model, x_T: np.ndarray, betas: np.ndarray, tau: list[int], lower_order_final: bool) -> np.ndarray:
    """Lu et al. (2022), Algorithm 2, written from the paper in numpy: alpha_t, sigma_t, lambda_t,
    x_theta from eps; first step first order; multistep with r_i = h_{i-1} / h_i; the last step to
    alpha = 1 first order (the update's limit there: x = x_theta); with lower_order_final the step
    before it (into tau_1) first order too."""
    abar = np.cumprod(1 - betas)
    ts = list(reversed(tau))
    alpha, sigma = np.sqrt(abar[ts]), np.sqrt(1 - abar[ts])
    lam = np.log(alpha / sigma)
    x, prev = x_T, None
    for i, t in enumerate(ts):
        x0 = (x - sigma[i] * model(x, t)) / alpha[i]
        if i == len(ts) - 1:
            return x0
        h = lam[i + 1] - lam[i]
        if prev is None or (lower_order_final and i == len(ts) - 2):
            d = x0
        else:
            r = (lam[i] - lam[i - 1]) / h
            d = (1 + 1 / (2 * r)) * x0 - 1 / (2 * r) * prev
        x = sigma[i + 1] / sigma[i] * x - alpha[i + 1] * (np.exp(-h) - 1) * d
        prev = x0
    raise AssertionError("unreachable")


def _linear_model(x, t):
    """An analytic eps-model, linear in x with t-dependent coefficients (no network)."""
    return (0.3 + t / 1500) * x + 0.1 * np.cos(t / 100)


@pytest.mark.parametrize("lower_order_final", [True, False])
@pytest.mark.parametrize("tau", [[0, 1], [0, 500], [0, 100, 300, 999], list(range(0, 1000, 50)), list(range(3, 990, 7))])
def test_matches_independent_reference(schedule, tau, lower_order_final):
    x_T = _x(16, 3, seed=5)

    def model(x, t):
        return torch.from_numpy(_linear_model(x.numpy(), t[0].item()))

    ours = dpm_solver_pp_2m(model, x_T, schedule, tau, lower_order_final=lower_order_final)
    ref = _reference_2m(lambda x, t: _linear_model(x, t), x_T.numpy(), schedule.betas.double().numpy(), tau,
                        lower_order_final)
    torch.testing.assert_close(ours, torch.from_numpy(ref), **ROUND_OFF)
    # and it is not DDIM (the second-order term is present) once there are >= 2 ODE steps
    if len(tau) > 3 or (len(tau) == 3 and not lower_order_final):
        assert (ours - sample(model, x_T, schedule, tau)).abs().max() > 1e-4


def test_step_function_composes_to_the_sampler(oracle, schedule):
    tau = [0, 40, 200, 450, 800, 999]
    x_T = _x(seed=6)
    traj = dpm_solver_pp_2m(oracle, x_T, schedule, tau, lower_order_final=False, return_trajectory=True)
    a = lambda t: schedule.alpha_bar(t).item()   # noqa: E731
    ts = list(reversed(tau)) + [-1]
    x, prev = x_T, None
    for i, t in enumerate(ts[:-1]):
        x0 = predict_x0(x, oracle(x, torch.full((64,), t)), a(t))
        torch.testing.assert_close(traj.x0_preds[i], x0, **ROUND_OFF)
        second = prev is not None and ts[i + 1] >= 0
        x_new = dpm_solver_pp_step(x, x0, a(t), a(ts[i + 1]), *((prev, a(ts[i - 1])) if second else ()))
        x, prev = x_new, x0
        torch.testing.assert_close(traj.xs[i + 1], x, **ROUND_OFF)
    assert len(traj.xs) == len(tau) + 1 and len(traj.x0_preds) == len(tau)
    torch.testing.assert_close(traj.x0, x, **ROUND_OFF)
    torch.testing.assert_close(traj.x0, traj.x0_preds[-1], **ROUND_OFF)   # the last step returns x0_theta


# ---- exactness where the integral is exact ------------------------------------------------------
@pytest.mark.parametrize("order", [1, 2])
def test_exact_when_x0_is_constant(schedule, order):
    """Point-mass data m: x0_theta = m everywhere, eq. 1's integral is exact for eq. 2 and eq. 3, and the
    exact path is x_t = alpha_t m + sigma_t eps_T with eps_T = (x_T - alpha_T m) / sigma_T, any step size."""
    m = torch.tensor([0.7, -1.2, 2.0], **F64)
    a = schedule.alpha_bars

    def model(x, t):
        at = a[t][:, None]
        return (x - at.sqrt() * m) / (1 - at).sqrt()

    tau = [0, 3, 90, 91, 500, 999]
    x_T = _x(8, 3, seed=7)
    traj = dpm_solver_pp_2m(model, x_T, schedule, tau, order=order, return_trajectory=True)
    eps_T = (x_T - a[999].sqrt() * m) / (1 - a[999]).sqrt()
    for x, t in zip(traj.xs[1:], list(reversed(tau))[1:] + [-1]):
        at = schedule.alpha_bar(t)
        torch.testing.assert_close(x, at.sqrt() * m + (1 - at).sqrt() * eps_T, **ROUND_OFF)


# ---- orders, with the closed-form Gaussian flow -----------------------------------------------
def test_global_orders_on_gaussian_data(schedule):
    """Global error of x_0 against the exact flow of N(m, s^2 I) data, grids {0, 960/n, ..., 960}:
    slopes 1 (DDIM) and 2 (Algorithm 2 as written, lower_order_final=False) over n = 40..320; a
    first-order 2M would fail [1.8, 2.2]. The default (the step into t = 0 first order, a step whose
    length in lambda shrinks only like log n on these grids) has no clean slope but a smaller error
    at every n."""
    mean, std = torch.tensor([0.5, -1.0], **F64), 0.7
    oracle = OracleEps(GaussianMixture(mean[None], std), schedule)
    a = schedule.alpha_bars
    x_T = _x(64, seed=8)
    s_T, s_0 = (math.sqrt((1 - a[t].item()) / a[t].item()) for t in (960, 0))
    x_bar_0 = mean + (x_T / a[960].sqrt() - mean) * math.sqrt(std**2 + s_0**2) / math.sqrt(std**2 + s_T**2)
    ref = sample(oracle, x_bar_0 * a[0].sqrt(), schedule, [0])      # the common last step
    ns = np.array([40, 80, 160, 320])
    variants = {1: dict(order=1), 2: dict(lower_order_final=False), "default": {}}
    errors = {k: np.array([(dpm_solver_pp_2m(oracle, x_T, schedule, list(range(0, 961, 960 // n)), **kw) - ref)
                           .norm(dim=1).mean().item() for n in ns]) for k, kw in variants.items()}
    slopes = {k: -np.polyfit(np.log(ns), np.log(e), 1)[0] for k, e in errors.items()}
    assert 0.85 <= slopes[1] <= 1.15, slopes
    assert 1.8 <= slopes[2] <= 2.2, slopes
    assert errors[2][-1] < errors[1][-1] / 5
    assert (errors["default"] < errors[2]).all()


def test_lower_order_final_changes_only_the_step_into_tau_1(oracle, schedule):
    tau = [0, 100, 300, 600, 999]
    x_T = _x(seed=12)
    on = dpm_solver_pp_2m(oracle, x_T, schedule, tau, return_trajectory=True)
    off = dpm_solver_pp_2m(oracle, x_T, schedule, tau, lower_order_final=False, return_trajectory=True)
    for i in range(len(tau) - 1):                                   # states down to tau_2 agree exactly
        assert torch.equal(on.xs[i], off.xs[i])
    assert (on.xs[-2] - off.xs[-2]).abs().max() > 1e-3              # x at tau_1 differs


# ---- grids and the exact reference ------------------------------------------------------------
@pytest.mark.parametrize("S", [2, 5, 10, 50])
def test_logsnr_timesteps_are_uniform_in_lambda(schedule, S):
    tau = logsnr_timesteps(schedule, S)
    assert tau[0] == 0 and tau[-1] == 999 and len(tau) <= S and all(np.diff(tau) > 0)
    lam = lambda_from_alpha_bar(schedule.alpha_bars.double()).numpy()
    targets = np.linspace(lam[999], lam[0], S)
    # each grid point is the index nearest to a target: within half a training step's lambda change
    for t in tau[1:-1]:
        v = targets[np.abs(targets - lam[t]).argmin()]
        assert abs(lam[t] - v) <= max(abs(lam[t] - lam[t - 1]), abs(lam[t + 1] - lam[t]))
    if S <= 10:
        assert len(tau) == S          # no repeats yet at this S
    assert logsnr_timesteps(schedule, 5, 500)[-1] == 500


@pytest.mark.parametrize("kwargs", [dict(S=1), dict(S=1001), dict(S=5.0), dict(S=5, t_start=0), dict(S=5, t_start=1000)])
def test_logsnr_timesteps_bad_input(schedule, kwargs):
    with pytest.raises(ValueError, match="S|t_start"):
        logsnr_timesteps(schedule, **kwargs)


def test_mixture_ode_x0_is_the_gaussian_flow(schedule):
    """For N(m, s^2 I) the flow of eq. 14 is m + (x_bar - m) sqrt(s^2 + sigma^2) / sqrt(s^2 + sigma_T^2)."""
    mean, std = torch.tensor([0.5, -1.0], **F64), 0.7
    mix = GaussianMixture(mean[None], std)
    a = schedule.alpha_bars
    x_T = _x(32, seed=13)
    s_T, s_0 = (math.sqrt((1 - a[t].item()) / a[t].item()) for t in (700, 0))
    x_bar_0 = mean + (x_T / a[700].sqrt() - mean) * math.sqrt(std**2 + s_0**2) / math.sqrt(std**2 + s_T**2)
    expected = sample(OracleEps(mix, schedule), x_bar_0 * a[0].sqrt(), schedule, [0])
    torch.testing.assert_close(mixture_ode_x0(mix, schedule, x_T, 700), expected, rtol=1e-8, atol=1e-8)


def test_mixture_ode_x0_is_the_limit_of_the_solvers(oracle, schedule):
    x_T = _x(32, seed=14)
    ref = mixture_ode_x0(oracle.mixture, schedule, x_T, 999)
    fine = dpm_solver_pp_2m(oracle, x_T, schedule, list(range(1000)), lower_order_final=False)
    assert (fine - ref).norm(dim=1).mean() < 1e-3 < (sample(oracle, x_T, schedule, 20) - ref).norm(dim=1).mean()
    with pytest.raises(ValueError, match="x_T"):
        mixture_ode_x0(oracle.mixture, schedule, x_T.float(), 999)
    with pytest.raises(ValueError, match="t_start"):
        mixture_ode_x0(oracle.mixture, schedule, x_T, 1000)


def test_shipped_comparison_is_this_codes():
    """results/dpm_compare.json (chapter 14) was made by this solver: one oracle cell regenerated from
    its seed equals the shipped mean error (the chapter regenerates two others)."""
    import json

    from ddim_lib.dpm_solver import COMPARE_FILE

    if not COMPARE_FILE.is_file():
        pytest.skip("no shipped comparison (scripts/dpm_compare.py writes it)")
    part = json.loads(COMPARE_FILE.read_text())["oracle"]["ring8 (std 0.1)"]
    row = next(r for r in part["rows"] if r["method"] == "dpm++2m" and r["spacing"] == "logsnr" and r["S"] == 8)
    schedule = NoiseSchedule.linear(1000)
    mix = GaussianMixture.ring(**part["mixture"])
    x_T = torch.randn(part["n"], 2, generator=torch.Generator().manual_seed(part["seed"]), **F64)
    ref = mixture_ode_x0(mix, schedule, x_T, 999)
    err = (dpm_solver_pp_2m(OracleEps(mix, schedule), x_T, schedule, logsnr_timesteps(schedule, 8, 999)) - ref).norm(dim=1)
    assert len(logsnr_timesteps(schedule, 8, 999)) == row["nfe"]
    np.testing.assert_allclose(err.mean().item(), row["mean_error"], rtol=1e-6)


# ---- conventions -------------------------------------------------------------------------------
def test_float32_and_generator_unused(oracle, schedule):
    x_T = _x(seed=9)
    out32 = dpm_solver_pp_2m(oracle, x_T.float(), schedule, 20)
    out64 = dpm_solver_pp_2m(oracle, x_T, schedule, 20)
    assert out32.dtype == torch.float32
    torch.testing.assert_close(out32.double(), out64, rtol=1e-4, atol=1e-4)
    g1, g2 = torch.Generator().manual_seed(1), torch.Generator().manual_seed(2)
    assert torch.equal(dpm_solver_pp_2m(oracle, x_T, schedule, 20, generator=g1),
                       dpm_solver_pp_2m(oracle, x_T, schedule, 20, generator=g2))


def test_clip_x0_clamps_the_predictions(oracle, schedule):
    traj = dpm_solver_pp_2m(oracle, 3 * _x(seed=10), schedule, 10, clip_x0=True, return_trajectory=True)
    assert all(p.abs().max() <= 1 for p in traj.x0_preds) and traj.x0.abs().max() <= 1
    unclipped = dpm_solver_pp_2m(oracle, 3 * _x(seed=10), schedule, 10)
    assert unclipped.abs().max() > 1.5      # the ring has radius 2: clipping did something


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_runs_on_cuda(oracle, schedule):
    x_T = _x(seed=11)
    out = dpm_solver_pp_2m(oracle, x_T.cuda(), schedule, 10)
    torch.testing.assert_close(out.cpu(), dpm_solver_pp_2m(oracle, x_T, schedule, 10), rtol=1e-9, atol=1e-9)


# ---- prediction types --------------------------------------------------------------------------
@pytest.mark.parametrize("prediction", ["x0", "v"])
def test_x0_and_v_models_give_the_eps_models_samples(schedule, prediction):
    mix = GaussianMixture.ring(k=8, radius=2.0, std=0.3)
    x_T = _x(seed=15)
    for kw in (dict(), dict(lower_order_final=False), dict(order=1)):
        eps_run = dpm_solver_pp_2m(OracleEps(mix, schedule), x_T, schedule, 20, **kw)
        other = dpm_solver_pp_2m(OracleEps(mix, schedule, prediction=prediction), x_T, schedule, 20,
                                 prediction=prediction, **kw)
        torch.testing.assert_close(other, eps_run, **ROUND_OFF)


def test_zero_terminal_snr_start(schedule):
    """From abar = 0 (lambda = -inf) the first step is eq. 2 with h = inf: x = sigma_s x_T + alpha_s x0.
    A v model runs; an eps model is refused before any model call."""
    zt = schedule.rescale_zero_terminal_snr()
    assert zt.alpha_bars[-1].item() == 0.0
    mix = GaussianMixture.ring(k=8, radius=2.0, std=0.3)
    v_model = OracleEps(mix, zt, prediction="v")
    x_T = _x(seed=16)
    tau = list(range(0, 999, 100)) + [999]
    traj = dpm_solver_pp_2m(v_model, x_T, zt, tau, prediction="v", return_trajectory=True)
    a_s = zt.alpha_bar(tau[-2]).item()
    x0 = OracleEps(mix, zt, prediction="x0")(x_T, torch.full((64,), 999))
    torch.testing.assert_close(traj.xs[1], math.sqrt(1 - a_s) * x_T + math.sqrt(a_s) * x0, **ROUND_OFF)
    assert torch.isfinite(traj.x0).all()
    calls = []
    with pytest.raises(ValueError, match="eps"):
        dpm_solver_pp_2m(lambda x, t: calls.append(t) or x, x_T, zt, tau)
    assert calls == []


# ---- bad input ---------------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs, match", [
    (dict(order=3), "order"), (dict(order=True), "order"), (dict(order=2.0), "order"),
    (dict(lower_order_final=1), "lower_order_final"), (dict(prediction="score"), "prediction"),
    (dict(tau="ten"), "tau"), (dict(tau=[5, 3]), "increasing"), (dict(tau=[0, 1000]), "0..T-1"), (dict(tau=0), "S"),
])
def test_bad_arguments(oracle, schedule, kwargs, match):
    args = dict(tau=10) | kwargs
    with pytest.raises(ValueError, match=match):
        dpm_solver_pp_2m(oracle, _x(), schedule, **args)


def test_bad_x_T_and_model_output(oracle, schedule):
    for bad in (torch.ones(4, 2, dtype=torch.long), torch.tensor(1.0), [[0.0, 1.0]]):
        with pytest.raises(ValueError, match="x_T"):
            dpm_solver_pp_2m(oracle, bad, schedule, 10)
    with pytest.raises(ValueError, match="shape"):
        dpm_solver_pp_2m(lambda x, t: x[:, :1], _x(), schedule, 10)


def test_bad_step_arguments():
    x = _x()
    with pytest.raises(ValueError, match="less noise"):
        dpm_solver_pp_step(x, x, 0.5, 0.4)
    with pytest.raises(ValueError, match="a_prev"):
        dpm_solver_pp_step(x, x, 0.5, 0.6, x0_prev=x)
    with pytest.raises(ValueError, match="below a_t"):
        dpm_solver_pp_step(x, x, 0.5, 0.6, x0_prev=x, a_prev=0.55)
    with pytest.raises(ValueError, match="first order"):
        dpm_solver_pp_step(x, x, 0.5, 1.0, x0_prev=x, a_prev=0.4)
