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

from ._util import (all_finite, as_float, check_admissible_sigma, check_alpha_bar, check_batched_float, check_float,
                    check_model_output, check_result_finite, check_same_shape, expand_to)
from .prediction import check_defined, check_prediction, conversion_coefficients, to_eps_x0
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
    """Eq. 9: f_theta(x_t) = (x_t - sqrt(1 - a_t) eps) / sqrt(a_t); x_t, eps of shape (B, ...).

    a_t (a scalar or (B,)) must lie in (0, 1]: at a_t = 0 eq. 9 divides by zero (see
    ``ddim_lib.prediction`` for the "v" and "x0" outputs that stay defined there).
    """
    _check_pair(x_t, eps, "x_t", "eps")
    a_t = expand_to(check_alpha_bar(as_float(a_t), "a_t"), x_t)
    return (x_t - (1 - a_t).sqrt() * eps) / a_t.sqrt()


def predict_eps(x_t: torch.Tensor, x0: torch.Tensor, a_t) -> torch.Tensor:
    """Eq. 9 solved for eps: (x_t - sqrt(a_t) x0) / sqrt(1 - a_t), for a_t in [0, 1)."""
    _check_pair(x_t, x0, "x_t", "x0")
    a = as_float(a_t)
    if not torch.isfinite(a).all() or (a < 0).any() or (a >= 1).any():
        raise ValueError(f"a_t must lie in [0, 1) (eps = (x_t - sqrt(a_t) x0) / sqrt(1 - a_t)), "
                         f"got {a.tolist() if a.numel() < 8 else a}")
    a_t = expand_to(a, x_t)
    return (x_t - a_t.sqrt() * x0) / (1 - a_t).sqrt()


def ddim_step(x_t: torch.Tensor, eps: torch.Tensor, a_t, a_prev, sigma,
              noise: torch.Tensor | None = None, prediction: str = "eps") -> torch.Tensor:
    """Eq. 12: x_prev = sqrt(a_prev) x0_pred + sqrt(1 - a_prev - sigma^2) eps + sigma noise.

    Pure: no randomness unless ``noise`` (shape of x_t) is given. Coefficients: scalars or (B,).
    ``eps`` is the model's output of type ``prediction`` ("eps", "x0" or "v", converted to the pair
    (eps, x0_pred) by ``ddim_lib.prediction.to_eps_x0``). a_t must lie in (0, 1] for "eps" and in
    [0, 1) for "x0" ([0, 1] for "v"); a_prev in [0, 1] (a_prev = 0 is DDIM inversion's last step onto a
    zero-terminal-SNR schedule; a_prev = 1 the sampler's last step to x_0).
    """
    check_prediction(prediction)
    _check_pair(x_t, eps, "x_t", "eps")
    a = as_float(a_t)
    if prediction == "eps":
        check_alpha_bar(a, "a_t")
    a_p = as_float(a_prev)
    if not torch.isfinite(a_p).all() or (a_p < 0).any() or (a_p > 1).any():
        raise ValueError(f"a_prev must lie in [0, 1], got {a_p.tolist() if a_p.numel() < 8 else a_p}")
    check_admissible_sigma(sigma, a_p)
    if noise is not None:
        _check_pair(x_t, noise, "x_t", "noise")
    eps, x0_pred = to_eps_x0(eps, x_t, a, prediction)         # 1. "predicted x_0"        (eq. 9)
    a_prev, sigma = expand_to(a_p, x_t), expand_to(sigma, x_t)
    direction = (1 - a_prev - sigma**2).clamp(min=0).sqrt() * eps  # 2. "direction pointing to x_t"
    x_prev = a_prev.sqrt() * x0_pred + direction              # 3. their sum              (eq. 12)
    if noise is not None:
        x_prev = x_prev + sigma * noise                       # 4. "random noise"
    return x_prev


def _check_pair(x: torch.Tensor, y: torch.Tensor, name_x: str, name_y: str) -> None:
    """Both floating-point tensors of one shape (no broadcasting: a wrong shape is an error)."""
    check_float(x, name_x)
    check_float(y, name_y)
    check_same_shape(x, y, name_x, name_y)


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
    # The same step with (eps, x0_pred) substituted from the model's output o (eq. 9 for an "eps"
    # model, ``ddim_lib.prediction`` otherwise): x_prev = fused_x * x_t + fused_eps * o + sigma z.
    fused_x: float
    fused_eps: float
    # eps = e_x x_t + e_o o and x0_pred = z_x x_t + z_o o (``conversion_coefficients``).
    conv: tuple[float, float, float, float] = (0.0, 1.0, 0.0, 0.0)


def _make_step(t: int, a_t: float, a_prev: float, eta: float, variance: str, prediction: str = "eps") -> _Step:
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
    e_x, e_o, z_x, z_o = conv = conversion_coefficients(a_t, prediction)
    if prediction == "eps":   # eq. 9 substituted in, arranged as before prediction types existed
        fused_x = c_x0 / math.sqrt(a_t) + c_x
        fused_eps = c_eps - c_x0 * math.sqrt(1 - a_t) / math.sqrt(a_t)
    else:
        fused_x = c_x0 * z_x + c_x + c_eps * e_x
        fused_eps = c_x0 * z_o + c_eps * e_o
    return _Step(t, a_t, c_x0, c_x, c_eps, sigma, fused_x, fused_eps, conv)


def _as_tau(schedule: NoiseSchedule, tau) -> list[int]:
    """An int S means uniform spacing; a sequence (or tensor) is validated as increasing in 0..T-1."""
    if not isinstance(schedule, NoiseSchedule):
        raise ValueError(f"schedule must be a NoiseSchedule, got {type(schedule).__name__}")
    if isinstance(tau, numbers.Integral) and not isinstance(tau, bool):   # int or numpy integer
        return make_timesteps(schedule.T, int(tau))
    if isinstance(tau, str):
        raise ValueError(f"tau must be an int S or an increasing sequence of timesteps, got {tau!r}")
    return make_timesteps(schedule.T, None, tau.tolist() if torch.is_tensor(tau) else tau)


def _plan(schedule: NoiseSchedule, tau, eta: float, variance: str, prediction: str = "eps") -> list[_Step]:
    """Per-step coefficients, computed once in float64 on the host (no device syncs in the loop)."""
    if variance not in ("eta", "sigma_hat"):
        raise ValueError(f"variance must be 'eta' or 'sigma_hat', got {variance!r}")
    if isinstance(eta, bool) or not isinstance(eta, numbers.Real) or not math.isfinite(eta) or eta < 0:
        raise ValueError(f"eta must be a finite non-negative number, got {eta!r}")
    check_prediction(prediction)
    tau = _as_tau(schedule, tau)
    a = schedule.alpha_bars.double().cpu().tolist()
    # The model is evaluated at every t in tau: its output must determine eps and x0 there.
    check_defined(prediction, min(a[t] for t in tau), max(a[t] for t in tau),
                  f" (the schedule's alpha_bar at t = {tau[-1]} is {a[tau[-1]]:.3g})")
    # Step pairs walk tau backwards and end at alpha_bar(-1) = 1:
    # [(tau_S, tau_{S-1}), ..., (tau_2, tau_1), (tau_1, -1)], e.g. [(900, 800), ..., (100, 0), (0, -1)].
    pairs = list(zip(reversed(tau), list(reversed(tau))[1:] + [-1]))
    return [_make_step(t, a[t], a[t_prev] if t_prev >= 0 else 1.0, float(eta), variance, prediction)
            for t, t_prev in pairs]


@torch.no_grad()
def sample(model: Model, x_T: torch.Tensor, schedule: NoiseSchedule, tau: Sequence[int] | int,
           eta: float = 0.0, variance: str = "eta", generator: torch.Generator | None = None,
           clip_x0: bool = False, return_trajectory: bool = False, progress: bool = False,
           prediction: str = "eps"):
    """The generalised sampler (eq. 12 over the subsequence tau, App. C.1) from x_T of shape (B, ...).

    ``variance="eta"``: sigma from eq. 16 (eta = 0 is DDIM, eta = 1 DDPM-like). ``"sigma_hat"``:
    App. D.3's larger variance with DDPM's posterior mean (``eta`` ignored). The last step goes to
    alpha_bar = 1 and so returns the predicted x_0. ``tau``: increasing code indices, or an int S
    (uniform spacing). Returns x_0, or a ``Trajectory`` when ``return_trajectory``.
    With ``clip_x0`` or ``return_trajectory`` each step forms x0_pred explicitly; otherwise the same
    step runs with x0_pred substituted in, so the two paths agree to round-off, not bit for bit.

    ``prediction``: what ``model`` outputs, "eps", "x0" or "v" (``ddim_lib.prediction``); the output
    is turned into (eps, x0_pred) by coefficients computed before the loop, so no type costs more per
    step than another. On a zero-terminal-SNR schedule (alpha_bar = 0 at a visited t, Lin et al.
    2023) an "eps" model raises a ValueError before the first step: x0 = (x_t - sqrt(1 - abar) eps) /
    sqrt(abar) is undefined at abar = 0; "v" and "x0" models work there. With ``clip_x0`` the
    clamped x0_pred enters eq. 12 beside the model's own (unclamped) eps.
    Checked once per call: x_T finite and floating, the model's first output of x_T's shape, and
    the result finite (a ValueError naming the model otherwise).
    """
    steps = _plan(schedule, tau, eta, variance, prediction)
    check_batched_float(x_T, "x_T", finite=True)
    x = x_T
    xs, x0_preds = [x], []
    explicit_x0 = clip_x0 or return_trajectory
    t_batches = {s.t: torch.full((x.shape[0],), s.t, dtype=torch.long, device=x.device) for s in steps}
    first = True
    for s in _progress(steps, progress):
        out = model(x, t_batches[s.t])
        if first:
            check_model_output(out, x, model)
            first = False
        if explicit_x0:
            if prediction == "eps":   # eq. 9, with the coefficients of the plan (no per-step checks)
                eps, x0_pred = out, (x - math.sqrt(1 - s.a_t) * out) / math.sqrt(s.a_t)
            else:
                e_x, e_o, z_x, z_o = s.conv
                eps, x0_pred = e_x * x + e_o * out, z_x * x + z_o * out
            if clip_x0:
                x0_pred = x0_pred.clamp(-1, 1)
            x0_preds.append(x0_pred)
            x_new = s.c_x0 * x0_pred + s.c_eps * eps
            x = x_new + s.c_x * x if s.c_x else x_new
        else:  # same step, x0_pred substituted in: two fused kernels instead of six
            x = torch.add(x * s.fused_x, out, alpha=s.fused_eps)
        if s.sigma > 0:
            x = x + s.sigma * torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        if return_trajectory:
            xs.append(x)
    check_result_finite(x, model, "sample")
    return Trajectory(x, xs, x0_preds) if return_trajectory else x


@torch.no_grad()
def ddpm_sample(model: Model, x_T: torch.Tensor, schedule: NoiseSchedule, variance: str = "beta",
                generator: torch.Generator | None = None, progress: bool = False,
                prediction: str = "eps") -> torch.Tensor:
    """DDPM's ancestral sampler (Ho et al., Algorithm 2) over all T steps.

    x_{t-1} = (x_t - beta_t / sqrt(1 - abar_t) eps) / sqrt(alpha_t) + sigma_t z, z = 0 at the last step;
    ``variance``: "beta" (sigma_t^2 = beta_t, = sigma_hat) or "beta_tilde" (the posterior's, = eta 1).
    For an "x0" or "v" model (``prediction``) the mean is the posterior's, sqrt(abar_{t-1}) beta_t /
    (1 - abar_t) x0 + sqrt(alpha_t) (1 - abar_{t-1}) / (1 - abar_t) x_t (Ho et al., eq. 7), the same
    mean written with x0, which stays defined at abar_T = 0 (zero terminal SNR); "eps" raises there.
    """
    if variance not in ("beta", "beta_tilde"):
        raise ValueError(f"variance must be 'beta' or 'beta_tilde', got {variance!r}")
    check_prediction(prediction)
    if not isinstance(schedule, NoiseSchedule):
        raise ValueError(f"schedule must be a NoiseSchedule, got {type(schedule).__name__}")
    betas = schedule.betas.double().cpu().tolist()
    a = schedule.alpha_bars.double().cpu().tolist()
    check_defined(prediction, min(a), max(a), f" (the schedule's alpha_bar at t = {schedule.T - 1} is {a[-1]:.3g})")
    check_batched_float(x_T, "x_T", finite=True)
    # x_{t-1} = f_x x_t + f_o out (+ noise), per step, before the loop.
    coefs = []
    for t in range(schedule.T - 1, -1, -1):
        if prediction == "eps":
            coefs.append((1 / math.sqrt(1 - betas[t]), -betas[t] / math.sqrt(1 - a[t]) / math.sqrt(1 - betas[t])))
        else:
            a_prev = a[t - 1] if t > 0 else 1.0
            c0, cx = math.sqrt(a_prev) * betas[t] / (1 - a[t]), math.sqrt(1 - betas[t]) * (1 - a_prev) / (1 - a[t])
            _, _, z_x, z_o = conversion_coefficients(a[t], prediction)
            coefs.append((cx + c0 * z_x, c0 * z_o))
    x = x_T
    for t in _progress(range(schedule.T - 1, -1, -1), progress):
        out = model(x, torch.full((x.shape[0],), t, dtype=torch.long, device=x.device))
        if t == schedule.T - 1:
            check_model_output(out, x, model)
        if prediction == "eps":   # Algorithm 2, line 4, as written
            x = (x - betas[t] / math.sqrt(1 - a[t]) * out) / math.sqrt(1 - betas[t])
        else:
            f_x, f_o = coefs[schedule.T - 1 - t]
            x = torch.add(x * f_x, out, alpha=f_o)
        if t > 0:
            var = betas[t] if variance == "beta" else (1 - a[t - 1]) / (1 - a[t]) * betas[t]
            x = x + math.sqrt(var) * torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    check_result_finite(x, model, "ddpm_sample")
    return x


@torch.no_grad()
def encode(model: Model, x_0: torch.Tensor, schedule: NoiseSchedule, tau: Sequence[int] | int,
           progress: bool = False, prediction: str = "eps") -> torch.Tensor:
    """DDIM inversion: eq. 13 run forward in t, from x_0 up to x_{tau_S} (deterministic, eta = 0).

    Each step is eq. 12 with the roles of a_t and a_prev swapped; it evaluates eps at the state it
    starts from, and at t = tau_1 for the first step (which starts at alpha_bar = 1). A model of
    another ``prediction`` type ("x0", "v") has its output turned into eps at the alpha_bar of the t
    it was evaluated at; the step is then eq. 13 as for an "eps" model. The model is never
    evaluated at tau_S, so inversion onto a zero-terminal-SNR schedule (abar = 0 at tau_S) works for
    every type and ends at x_T = eps. Checked once per call: x_0 finite and floating, the model's
    first output of x_0's shape, the result finite.
    """
    check_prediction(prediction)
    tau = _as_tau(schedule, tau)
    check_batched_float(x_0, "x_0", finite=True)
    a = schedule.alpha_bars.double().cpu().tolist()
    # Step pairs walk tau forwards from alpha_bar(-1) = 1: [(-1, tau_1), (tau_1, tau_2), ..., (tau_{S-1}, tau_S)].
    pairs = list(zip([-1] + tau[:-1], tau))
    check_defined(prediction, min(a[max(t, tau[0])] for t, _ in pairs), max(a[max(t, tau[0])] for t, _ in pairs))
    plan = []   # per step: t_eval, (e_x, e_o), sqrt(1 - a_from), sqrt(a_from), sqrt(a_to), sqrt(1 - a_to)
    for t_from, t_to in pairs:
        t_eval = max(t_from, tau[0])
        a_from, a_to = (a[t_from] if t_from >= 0 else 1.0), a[t_to]
        e_x, e_o, _, _ = conversion_coefficients(a[t_eval], prediction)
        plan.append((t_eval, e_x, e_o, math.sqrt(1 - a_from), math.sqrt(a_from), math.sqrt(a_to), math.sqrt(1 - a_to)))
    t_batches = {t: torch.full((x_0.shape[0],), t, dtype=torch.long, device=x_0.device) for t in tau}
    x = x_0
    first = True
    for t_eval, e_x, e_o, sb_from, sa_from, sa_to, sb_to in _progress(plan, progress):
        out = model(x, t_batches[t_eval])
        if first:
            check_model_output(out, x, model)
            first = False
        eps = out if prediction == "eps" else e_x * x + e_o * out
        x0_pred = (x - sb_from * eps) / sa_from          # eq. 9 at a_from
        x = sa_to * x0_pred + sb_to * eps                # eq. 12 with sigma = 0 (eq. 13 forward)
    check_result_finite(x, model, "encode")
    return x


def slerp(z0: torch.Tensor, z1: torch.Tensor, lam) -> torch.Tensor:
    """Spherical interpolation per sample: sin((1-lam) th) / sin(th) z0 + sin(lam th) / sin(th) z1.

    z0, z1 floating tensors of one shape (B, ...) with B >= 1 (a single latent z is ``z[None]``);
    th is the angle between the flattened z0[b] and z1[b], computed as 2 atan2(|u - v|, |u + v|)
    for the unit vectors u, v (accurate near 0 and pi); lam a finite real scalar. Nearly parallel
    pairs (th < 1e-6) fall back to linear interpolation. Raises a ValueError for a zero-norm latent
    (no direction) and for opposite latents (pi - th below sqrt(machine eps)), where the great
    circle through z0 and z1 is not unique and the path is undefined.
    """
    for name, z in (("z0", z0), ("z1", z1)):
        if not torch.is_tensor(z) or not z.is_floating_point():
            raise ValueError(f"{name} must be a floating-point tensor")
        if z.ndim < 2 or z.shape[0] < 1:
            raise ValueError(f"{name} must be batched, of shape (B, ...) with B >= 1, got shape {tuple(z.shape)}; "
                             "for one latent z pass z[None]")
    if z0.shape != z1.shape:
        raise ValueError(f"z0 and z1 must have the same shape, got {tuple(z0.shape)} and {tuple(z1.shape)}")
    if isinstance(lam, bool) or not (isinstance(lam, numbers.Real) or (torch.is_tensor(lam) and lam.ndim == 0)) \
            or not math.isfinite(float(lam)):
        raise ValueError(f"lam must be a finite real scalar, got {lam!r}")
    flat0, flat1 = z0.reshape(z0.shape[0], -1), z1.reshape(z1.shape[0], -1)
    if not (all_finite(flat0) and all_finite(flat1)):
        raise ValueError("z0 and z1 must be finite (no NaN or inf)")
    n0, n1 = flat0.norm(dim=1), flat1.norm(dim=1)
    if (n0 == 0).any() or (n1 == 0).any():
        raise ValueError("slerp needs non-zero latents: a zero-norm z0[b] or z1[b] has no direction")
    u, v = flat0 / n0[:, None], flat1 / n1[:, None]
    theta = 2 * torch.atan2((u - v).norm(dim=1), (u + v).norm(dim=1))
    if (math.pi - theta < math.sqrt(torch.finfo(z0.dtype).eps)).any():
        b = int(torch.argmax(theta))
        raise ValueError(f"z0[{b}] and z1[{b}] are opposite (angle pi): the great circle between them, "
                         "and so the slerp path, is not unique")
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
