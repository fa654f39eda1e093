"""The generalised generative process of DDIM (Song, Meng & Ermon 2021, sec. 4).

Name table (ours -> paper): ``a_t`` = alpha_t (the paper's, i.e. DDPM's alpha-bar_t), ``a_prev`` =
alpha_{t-1} (or alpha_{tau_{i-1}} when skipping), ``eps`` = eps_theta^(t)(x_t), ``x0_pred`` =
f_theta^(t)(x_t) (eq. 9), ``sigma`` = sigma_t, ``eta`` the interpolation of eq. 16.
"""
from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch

from ._util import as_float, check_admissible_sigma, expand_to
from .schedule import NoiseSchedule
from .timesteps import timesteps as make_timesteps

__all__ = ["sigma_eta", "sigma_hat", "predict_x0", "predict_eps", "ddim_step", "sample",
           "ddpm_sample", "encode", "slerp", "Trajectory"]

Model = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


# ---- the formulas -------------------------------------------------------------------------------
def sigma_eta(a_t, a_prev, eta):
    """Eq. 16: sigma = eta * sqrt((1 - a_prev) / (1 - a_t)) * sqrt(1 - a_t / a_prev)."""
    if torch.as_tensor(eta).lt(0).any():
        raise ValueError(f"eta must be non-negative, got {eta}")
    a_t, a_prev = as_float(a_t), as_float(a_prev)
    return eta * ((1 - a_prev) / (1 - a_t)).sqrt() * (1 - a_t / a_prev).sqrt()


def sigma_hat(a_t, a_prev):
    """App. D.3: sigma_hat = sqrt(1 - a_t / a_prev), DDPM's "larger" variance beta for the jump."""
    a_t, a_prev = as_float(a_t), as_float(a_prev)
    return (1 - a_t / a_prev).sqrt()


def predict_x0(x_t: torch.Tensor, eps: torch.Tensor, a_t) -> torch.Tensor:
    """Eq. 9: f_theta(x_t) = (x_t - sqrt(1 - a_t) eps) / sqrt(a_t); x_t, eps of shape (B, ...)."""
    a_t = expand_to(a_t, x_t)
    return (x_t - (1 - a_t).sqrt() * eps) / a_t.sqrt()


def predict_eps(x_t: torch.Tensor, x0: torch.Tensor, a_t) -> torch.Tensor:
    """Eq. 9 solved for eps: (x_t - sqrt(a_t) x0) / sqrt(1 - a_t)."""
    a_t = expand_to(a_t, x_t)
    return (x_t - a_t.sqrt() * x0) / (1 - a_t).sqrt()


def ddim_step(x_t: torch.Tensor, eps: torch.Tensor, a_t, a_prev, sigma,
              noise: torch.Tensor | None = None) -> torch.Tensor:
    """Eq. 12: x_prev = sqrt(a_prev) x0_pred + sqrt(1 - a_prev - sigma^2) eps + sigma noise.

    Pure: no randomness unless ``noise`` (shape of x_t) is given. Coefficients: scalars or (B,).
    """
    check_admissible_sigma(sigma, a_prev)
    a_prev, sigma = expand_to(a_prev, x_t), expand_to(sigma, x_t)
    x0_pred = predict_x0(x_t, eps, a_t)                       # 1. "predicted x_0"        (eq. 9)
    direction = (1 - a_prev - sigma**2).clamp(min=0).sqrt() * eps  # 2. "direction pointing to x_t"
    x_prev = a_prev.sqrt() * x0_pred + direction              # 3. their sum              (eq. 12)
    if noise is not None:
        x_prev = x_prev + sigma * noise                       # 4. "random noise"
    return x_prev


# ---- the loop ----------------------------------------------------------------------------------
class Trajectory(NamedTuple):
    """What ``sample(..., return_trajectory=True)`` returns: states [x_T, ..., x_0] and eq. 9 predictions."""

    x0: torch.Tensor
    xs: list[torch.Tensor]
    x0_preds: list[torch.Tensor]


class _Step(NamedTuple):
    """One reverse step written as x_prev = c_x0 * x0_pred + c_x * x_t + c_eps * eps + sigma * z."""

    t: int
    a_t: float
    c_x0: float
    c_x: float
    c_eps: float
    sigma: float
    # The same step with x0_pred substituted from eq. 9: x_prev = fused_x * x_t + fused_eps * eps + sigma z.
    fused_x: float
    fused_eps: float


def _make_step(t: int, a_t: float, a_prev: float, eta: float, variance: str) -> _Step:
    if variance == "eta":                    # eq. 12 with sigma from eq. 16
        sigma = eta * math.sqrt((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev))
        if sigma**2 > 1 - a_prev + 1e-12:    # possible for eta > 1 only
            raise ValueError(f"eta = {eta} is inadmissible at t = {t}: eq. 12 needs sigma^2 <= 1 - alpha_bar_prev "
                             f"({sigma**2:.4g} > {1 - a_prev:.4g}); use eta <= 1")
        c_x0, c_x, c_eps = math.sqrt(a_prev), 0.0, math.sqrt(max(1 - a_prev - sigma**2, 0.0))
    else:                                    # App. D.3: DDPM's posterior mean for the jump, sigma_hat
        beta = 1 - a_t / a_prev
        c_x0 = math.sqrt(a_prev) * beta / (1 - a_t)
        c_x, c_eps = math.sqrt(a_t / a_prev) * (1 - a_prev) / (1 - a_t), 0.0
        sigma = math.sqrt(beta) if a_prev < 1 else 0.0   # no noise on the last step (official code)
    fused_x = c_x0 / math.sqrt(a_t) + c_x
    fused_eps = c_eps - c_x0 * math.sqrt(1 - a_t) / math.sqrt(a_t)
    return _Step(t, a_t, c_x0, c_x, c_eps, sigma, fused_x, fused_eps)


def _as_tau(schedule: NoiseSchedule, tau) -> list[int]:
    """An int S means uniform spacing; a sequence (or tensor) is validated as increasing in 0..T-1."""
    if isinstance(tau, numbers.Integral) and not isinstance(tau, bool):   # int or numpy integer
        return make_timesteps(schedule.T, int(tau))
    if isinstance(tau, str):
        raise ValueError(f"tau must be an int S or an increasing sequence of timesteps, got {tau!r}")
    return make_timesteps(schedule.T, None, tau.tolist() if torch.is_tensor(tau) else tau)


def _plan(schedule: NoiseSchedule, tau, eta: float, variance: str) -> list[_Step]:
    """Per-step coefficients, computed once in float64 on the host (no device syncs in the loop)."""
    if variance not in ("eta", "sigma_hat"):
        raise ValueError(f"variance must be 'eta' or 'sigma_hat', got {variance!r}")
    if not isinstance(eta, numbers.Real) or not math.isfinite(eta) or eta < 0:
        raise ValueError(f"eta must be a finite non-negative number, got {eta!r}")
    tau = _as_tau(schedule, tau)
    a = schedule.alpha_bars.double().cpu().tolist()
    # Step pairs walk tau backwards and end at alpha_bar(-1) = 1:
    # [(tau_S, tau_{S-1}), ..., (tau_2, tau_1), (tau_1, -1)], e.g. [(900, 800), ..., (100, 0), (0, -1)].
    pairs = list(zip(reversed(tau), list(reversed(tau))[1:] + [-1]))
    return [_make_step(t, a[t], a[t_prev] if t_prev >= 0 else 1.0, float(eta), variance)
            for t, t_prev in pairs]


@torch.no_grad()
def sample(model: Model, x_T: torch.Tensor, schedule: NoiseSchedule, tau: Sequence[int] | int,
           eta: float = 0.0, variance: str = "eta", generator: torch.Generator | None = None,
           clip_x0: bool = False, return_trajectory: bool = False, progress: bool = False):
    """The generalised sampler (eq. 12 over the subsequence tau, App. C.1) from x_T of shape (B, ...).

    ``variance="eta"``: sigma from eq. 16 (eta = 0 is DDIM, eta = 1 DDPM-like). ``"sigma_hat"``:
    App. D.3's larger variance with DDPM's posterior mean (``eta`` ignored). The last step goes to
    alpha_bar = 1 and so returns the predicted x_0. ``tau``: increasing code indices, or an int S
    (uniform spacing). Returns x_0, or a ``Trajectory`` when ``return_trajectory``.
    With ``clip_x0`` or ``return_trajectory`` each step forms x0_pred explicitly; otherwise the same
    step runs with x0_pred substituted in, so the two paths agree to round-off, not bit for bit.
    """
    steps = _plan(schedule, tau, eta, variance)
    if not torch.is_tensor(x_T) or not x_T.is_floating_point() or x_T.ndim < 1:
        raise ValueError("x_T must be a floating-point tensor of shape (B, ...)")
    x = x_T
    xs, x0_preds = [x], []
    explicit_x0 = clip_x0 or return_trajectory
    t_batches = {s.t: torch.full((x.shape[0],), s.t, dtype=torch.long, device=x.device) for s in steps}
    for s in _progress(steps, progress):
        eps = model(x, t_batches[s.t])
        if explicit_x0:
            x0_pred = predict_x0(x, eps, s.a_t)
            if clip_x0:
                x0_pred = x0_pred.clamp(-1, 1)
            x0_preds.append(x0_pred)
            x_new = s.c_x0 * x0_pred + s.c_eps * eps
            x = x_new + s.c_x * x if s.c_x else x_new
        else:  # same step, x0_pred substituted in: two fused kernels instead of six
            x = torch.add(x * s.fused_x, eps, alpha=s.fused_eps)
        if s.sigma > 0:
            x = x + s.sigma * torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        if return_trajectory:
            xs.append(x)
    return Trajectory(x, xs, x0_preds) if return_trajectory else x


@torch.no_grad()
def ddpm_sample(model: Model, x_T: torch.Tensor, schedule: NoiseSchedule, variance: str = "beta",
                generator: torch.Generator | None = None, progress: bool = False) -> torch.Tensor:
    """DDPM's ancestral sampler (Ho et al., Algorithm 2) over all T steps.

    x_{t-1} = (x_t - beta_t / sqrt(1 - abar_t) eps) / sqrt(alpha_t) + sigma_t z, z = 0 at the last step;
    ``variance``: "beta" (sigma_t^2 = beta_t, = sigma_hat) or "beta_tilde" (the posterior's, = eta 1).
    """
    if variance not in ("beta", "beta_tilde"):
        raise ValueError(f"variance must be 'beta' or 'beta_tilde', got {variance!r}")
    betas = schedule.betas.double().cpu().tolist()
    a = schedule.alpha_bars.double().cpu().tolist()
    x = x_T
    for t in _progress(range(schedule.T - 1, -1, -1), progress):
        eps = model(x, torch.full((x.shape[0],), t, dtype=torch.long, device=x.device))
        x = (x - betas[t] / math.sqrt(1 - a[t]) * eps) / math.sqrt(1 - betas[t])
        if t > 0:
            var = betas[t] if variance == "beta" else (1 - a[t - 1]) / (1 - a[t]) * betas[t]
            x = x + math.sqrt(var) * torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    return x


@torch.no_grad()
def encode(model: Model, x_0: torch.Tensor, schedule: NoiseSchedule, tau: Sequence[int] | int,
           progress: bool = False) -> torch.Tensor:
    """DDIM inversion: eq. 13 run forward in t, from x_0 up to x_{tau_S} (deterministic, eta = 0).

    Each step is eq. 12 with the roles of a_t and a_prev swapped; it evaluates eps at the state it
    starts from, and at t = tau_1 for the first step (which starts at alpha_bar = 1).
    """
    tau = _as_tau(schedule, tau)
    a = schedule.alpha_bars.double().cpu().tolist()
    x = x_0
    # Step pairs walk tau forwards from alpha_bar(-1) = 1: [(-1, tau_1), (tau_1, tau_2), ..., (tau_{S-1}, tau_S)].
    pairs = list(zip([-1] + tau[:-1], tau))
    for t_from, t_to in _progress(pairs, progress):
        t_eval = max(t_from, tau[0])
        eps = model(x, torch.full((x.shape[0],), t_eval, dtype=torch.long, device=x.device))
        a_from = a[t_from] if t_from >= 0 else 1.0
        x = ddim_step(x, eps, a_from, a[t_to], 0.0)
    return x


def slerp(z0: torch.Tensor, z1: torch.Tensor, lam) -> torch.Tensor:
    """Spherical interpolation per sample: sin((1-lam) th) / sin(th) z0 + sin(lam th) / sin(th) z1.

    z0, z1 of shape (B, ...); th is the angle between the flattened z0[b] and z1[b]; lam a scalar.
    """
    if z0.shape != z1.shape:
        raise ValueError(f"z0 and z1 must have the same shape, got {tuple(z0.shape)} and {tuple(z1.shape)}")
    flat0, flat1 = z0.reshape(z0.shape[0], -1), z1.reshape(z1.shape[0], -1)
    cos = (flat0 * flat1).sum(1) / (flat0.norm(dim=1) * flat1.norm(dim=1))
    theta = torch.arccos(cos.clamp(-1, 1))
    lam = torch.as_tensor(lam, dtype=z0.dtype, device=z0.device)
    small = theta < 1e-6          # nearly parallel: fall back to linear interpolation
    safe = torch.where(small, torch.ones_like(theta), theta)
    w0 = torch.where(small, 1 - lam, torch.sin((1 - lam) * safe) / torch.sin(safe))
    w1 = torch.where(small, lam * torch.ones_like(theta), torch.sin(lam * safe) / torch.sin(safe))
    return expand_to(w0, z0) * z0 + expand_to(w1, z1) * z1


def _progress(it, enabled: bool):
    if not enabled:
        return it
    from tqdm.auto import tqdm
    return tqdm(it, desc="sampling", leave=False)
