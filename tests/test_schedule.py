"""NoiseSchedule: DDPM's linear schedule, the cosine schedule, alpha_bar(-1) = 1 and validation.

Tolerances: products/cumulative products of T <= 1000 float64 factors agree to a few hundred ulps,
so closed forms are compared with rtol 1e-12 (float64 eps is 2.2e-16; 1000 roundings of relative
size eps accumulate to at most ~2.2e-13).
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ddim_lib import NoiseSchedule

RTOL = 1e-12


def test_linear_matches_ddpm_closed_form():
    sch = NoiseSchedule.linear(1000)
    betas = [1e-4 + (0.02 - 1e-4) * i / 999 for i in range(1000)]   # DDPM: linspace(1e-4, 0.02, 1000)
    np.testing.assert_allclose(sch.betas.numpy(), betas, rtol=RTOL, atol=0)
    np.testing.assert_allclose(sch.alphas.numpy(), [1 - b for b in betas], rtol=RTOL, atol=0)
    alpha_bar_T = math.prod(1 - b for b in betas)                      # an independent running product
    assert alpha_bar_T == pytest.approx(4.036e-5, rel=1e-3)            # the value quoted for DDPM's schedule
    assert sch.alpha_bars[-1].item() == pytest.approx(alpha_bar_T, rel=RTOL)
    running = np.cumprod([1 - b for b in betas])
    np.testing.assert_allclose(sch.alpha_bars.numpy(), running, rtol=RTOL, atol=0)
    assert sch.T == len(sch) == 1000 and sch.dtype == torch.float64


def test_cosine_matches_nichol_dhariwal_where_not_clipped():
    T, s = 1000, 0.008
    sch = NoiseSchedule.cosine(T, s)

    def f(t):
        return math.cos((t / T + s) / (1 + s) * math.pi / 2) ** 2

    clipped = (sch.betas >= 0.999 - 1e-15).nonzero().flatten().tolist()
    assert clipped == [T - 1], "only the last beta (f(T) = 0) reaches the 0.999 clip"
    expected = [f(t) / f(0) for t in range(1, T)]                   # code t -> paper t + 1
    # The library goes through beta = 1 - f(t)/f(t-1) and back (1 - beta), each factor exact to ~1 ulp,
    # then a cumulative product of up to 999 factors: relative error <= ~2e-13, so RTOL holds.
    np.testing.assert_allclose(sch.alpha_bars[:-1].numpy(), expected, rtol=RTOL, atol=0)
    assert sch.alpha_bars[-1] < 1e-7 and sch.alpha_bars[-1] > 0


def test_alpha_bar_boundary_and_monotone():
    for sch in (NoiseSchedule.linear(1000), NoiseSchedule.cosine(1000), NoiseSchedule.linear(1)):
        assert sch.alpha_bar(-1).item() == 1.0
        assert sch.alpha_bar(0).item() == pytest.approx(1 - sch.betas[0].item(), rel=RTOL)
        ext = sch.alpha_bar(torch.arange(-1, sch.T))
        assert (ext[1:] < ext[:-1]).all(), "alpha_bar strictly decreases from alpha_bar(-1) = 1"
        assert (ext > 0).all()
    sch = NoiseSchedule.linear(10)
    t = torch.tensor([[3, -1], [9, 0]])
    np.testing.assert_array_equal(sch.alpha_bar(t).numpy(),
                                  [[sch.alpha_bars[3], 1.0], [sch.alpha_bars[9], sch.alpha_bars[0]]])
    snr = sch.snr(4)
    assert snr.item() == pytest.approx(sch.alpha_bars[4].item() / (1 - sch.alpha_bars[4].item()), rel=RTOL)


def test_to_float32_keeps_values():
    sch = NoiseSchedule.linear(1000)
    s32 = sch.to(dtype=torch.float32)
    assert s32.dtype == torch.float32
    for name in ("betas", "alphas", "alpha_bars"):
        assert getattr(s32, name).dtype == torch.float32
        # float32 rounding of a float64 value: relative error <= 2^-24 ~ 6e-8.
        np.testing.assert_allclose(getattr(s32, name).numpy(), getattr(sch, name).numpy(), rtol=6e-8)
    assert s32.alpha_bar(-1).dtype == torch.float32 and s32.alpha_bar(-1).item() == 1.0
    back = s32.to(dtype=torch.float64)
    assert back.dtype == torch.float64
    assert NoiseSchedule(sch.betas, dtype=torch.float32).alpha_bars.dtype == torch.float32
    # integer betas are rejected on value, not crashed on dtype
    with pytest.raises(ValueError, match="open interval"):
        NoiseSchedule(torch.tensor([1, 1]))


@pytest.mark.parametrize("betas, message", [
    ([0.1, 0.0, 0.2], r"open interval \(0, 1\)"),
    ([1.0, 0.1], r"open interval \(0, 1\)"),          # beta = 1 only at the last step
    ([0.1, 1.0, 0.2], r"open interval \(0, 1\)"),
    ([0.1, -0.01], r"open interval \(0, 1\)"),
    ([0.1, 1.5], r"open interval \(0, 1\)"),
    ([[0.1, 0.2], [0.1, 0.2]], r"1-D"),
    ([], r"at least one"),
    ([0.1, float("nan")], r"finite"),
    ([0.1, float("inf")], r"finite"),
])
def test_invalid_betas_raise(betas, message):
    with pytest.raises(ValueError, match=message):
        NoiseSchedule(torch.tensor(betas, dtype=torch.float64))


@pytest.mark.parametrize("T", [0, -5, 2.5, "10", True, None])
def test_bad_T_raises(T):
    with pytest.raises(ValueError, match="T must be a positive integer"):
        NoiseSchedule.linear(T)
    with pytest.raises(ValueError, match="T must be a positive integer"):
        NoiseSchedule.cosine(T)


def test_numpy_integer_T_is_accepted():
    assert NoiseSchedule.linear(np.int64(20)).T == 20


@pytest.mark.parametrize("kwargs, message", [
    (dict(beta_start=0.0), "beta_start and beta_end"),
    (dict(beta_end=1.0), "beta_start and beta_end"),
    (dict(beta_start=float("nan")), "beta_start and beta_end"),
])
def test_bad_linear_endpoints_raise(kwargs, message):
    with pytest.raises(ValueError, match=message):
        NoiseSchedule.linear(100, **kwargs)


def test_bad_cosine_parameters_raise():
    with pytest.raises(ValueError, match="s must be non-negative"):
        NoiseSchedule.cosine(100, s=-0.1)
    with pytest.raises(ValueError, match="max_beta"):
        NoiseSchedule.cosine(100, max_beta=1.0)


@pytest.mark.parametrize("t, message", [
    (10, r"-1\.\.9"), (-2, r"-1\.\.9"), (torch.tensor([0, 10]), r"-1\.\.9"), (1.0, "integers"),
])
def test_alpha_bar_rejects_bad_timesteps(t, message):
    with pytest.raises(ValueError, match=message):
        NoiseSchedule.linear(10).alpha_bar(t)


# ---- zero terminal SNR (Lin et al. 2023, Algorithm 1) ------------------------------------------------------
def lin_algorithm1(betas: np.ndarray) -> np.ndarray:
    """Algorithm 1 of Lin et al. (2023), written out independently in numpy (float64)."""
    sqrt_abar = np.sqrt(np.cumprod(1.0 - betas))
    first, last = sqrt_abar[0], sqrt_abar[-1]
    sqrt_abar = (sqrt_abar - last) * first / (first - last)
    abar = sqrt_abar**2
    alphas = np.concatenate([abar[:1], abar[1:] / abar[:-1]])
    return 1.0 - alphas


@pytest.mark.parametrize("schedule", [NoiseSchedule.linear(1000), NoiseSchedule.cosine(1000),
                                      NoiseSchedule.linear(50, 1e-3, 0.25), NoiseSchedule.linear(2)])
def test_rescale_zero_terminal_snr_is_algorithm1(schedule):
    z = schedule.rescale_zero_terminal_snr()
    assert z.alpha_bars[-1].item() == 0.0 and z.betas[-1].item() == 1.0 and z.snr(z.T - 1).item() == 0.0
    assert math.isclose(z.alpha_bars[0].item(), schedule.alpha_bars[0].item(), rel_tol=1e-14)  # first unchanged
    assert ((z.betas[:-1] > 0) & (z.betas[:-1] < 1)).all()
    # beta = 1 - alpha cancels for beta ~ 1e-4: compare alphas in relative terms (a few ulps of 1 absolute on beta)
    np.testing.assert_allclose(1 - z.betas.numpy(), 1 - lin_algorithm1(schedule.betas.numpy()), rtol=1e-13, atol=0)
    # sqrt(abar) is an affine map of the old one: sqrt(abar') = (sqrt(abar) - s_T) s_1 / (s_1 - s_T)
    s, s2 = schedule.alpha_bars.sqrt(), z.alpha_bars.sqrt()
    torch.testing.assert_close(s2, (s - s[-1]) * s[0] / (s[0] - s[-1]), rtol=RTOL, atol=1e-15)
    # the rescaled schedule is a fixed point, and dtype and T are kept
    torch.testing.assert_close(z.rescale_zero_terminal_snr().alpha_bars, z.alpha_bars, rtol=0, atol=1e-15)
    assert z.T == schedule.T and z.dtype == schedule.dtype
    assert schedule.to(dtype=torch.float32).rescale_zero_terminal_snr().dtype == torch.float32


def test_rescale_matches_diffusers_when_installed():
    """diffusers' rescale_zero_terminal_snr (scheduling_ddim.py), the bench extra; skipped without it."""
    ddim = pytest.importorskip("diffusers.schedulers.scheduling_ddim")
    for schedule in (NoiseSchedule.linear(1000), NoiseSchedule.cosine(1000)):
        theirs = ddim.rescale_zero_terminal_snr(schedule.betas.clone())
        torch.testing.assert_close(1 - schedule.rescale_zero_terminal_snr().betas, 1 - theirs, rtol=1e-13, atol=0)


def test_last_beta_may_be_one_only():
    s = NoiseSchedule([0.1, 0.5, 1.0])
    assert s.alpha_bars[-1].item() == 0.0 and s.alpha_bar(1).item() == pytest.approx(0.45, rel=1e-15)
    with pytest.raises(ValueError, match=r"except the last, which may be 1"):
        NoiseSchedule([0.1, 1.0, 0.5])
    with pytest.raises(ValueError, match="T >= 2"):
        NoiseSchedule([0.5]).rescale_zero_terminal_snr()


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.bool, torch.complex128, "float64"])
def test_non_float_dtypes_are_refused(dtype):
    """NoiseSchedule.linear(dtype=torch.int64) once gave all-zero betas; now every constructor refuses it."""
    with pytest.raises(ValueError, match="dtype must be a floating-point torch dtype"):
        NoiseSchedule.linear(100, dtype=dtype)
    with pytest.raises(ValueError, match="dtype must be a floating-point torch dtype"):
        NoiseSchedule.cosine(100, dtype=dtype)
    with pytest.raises(ValueError, match="dtype must be a floating-point torch dtype"):
        NoiseSchedule([0.1, 0.2], dtype=dtype)
