"""DDIM as an ODE (Song, Meng & Ermon 2021, sec. 4.3 and Prop. 1), and a second-order solver.

Coordinates: x_bar = x / sqrt(abar) and sigma = sqrt((1 - abar) / abar), so x_bar = x_0 + sigma eps
(the variance-exploding, "VE", picture). In them the eta = 0 update (eq. 13) is the Euler step of

    d x_bar = eps_theta(x_bar / sqrt(sigma^2 + 1), t) d sigma                       (eq. 14)

Name table (ours -> paper): ``x_bar`` = x-bar(t), ``sigma`` = sigma(t), ``a_t`` = alpha_t (the
paper's; DDPM's alpha-bar_t), ``eps`` = eps_theta^(t). Samplers take the same model and tau as
``ddim_lib.sample``; the last step goes to alpha_bar = 1, that is sigma = 0.
"""
from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Sequence

import torch

from ._util import (check_alpha_bar, check_batched_float, check_float, check_model_output, check_result_finite,
                    check_same_shape, expand_to)
from .sampler import _as_tau
from .schedule import NoiseSchedule

__all__ = ["sigma_from_alpha_bar", "alpha_bar_from_sigma", "to_ve", "from_ve", "euler_step_sigma",
           "euler_step_sigma_sq", "ode_sample", "heun_sample", "ode_nfe", "ODE_METHODS"]

Model = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
ODE_METHODS = ("euler", "euler_sigma_sq", "heun")


# ---- coordinates -------------------------------------------------------------------------------
def sigma_from_alpha_bar(alpha_bar) -> torch.Tensor:
    """sigma = sqrt((1 - abar) / abar), for abar in (0, 1]; abar = 1 gives sigma = 0."""
    a = check_alpha_bar(_as_float64(alpha_bar), "alpha_bar")
    return ((1 - a) / a).sqrt()


def alpha_bar_from_sigma(sigma) -> torch.Tensor:
    """abar = 1 / (1 + sigma^2), the inverse of ``sigma_from_alpha_bar``, for finite sigma >= 0."""
    sigma = _check_sigma(sigma, "sigma")
    return 1 / (1 + sigma**2)


def to_ve(x: torch.Tensor, alpha_bar) -> tuple[torch.Tensor, torch.Tensor]:
    """(x_t, abar_t) -> (x_bar, sigma) = (x_t / sqrt(abar_t), sqrt((1 - abar_t) / abar_t)).

    x of shape (B, ...); alpha_bar a scalar or (B,). sigma comes back with alpha_bar's shape.
    """
    check_float(x, "x")
    a = check_alpha_bar(_as_float64(alpha_bar), "alpha_bar")
    return x / expand_to(a, x).sqrt(), sigma_from_alpha_bar(a)


def from_ve(x_bar: torch.Tensor, sigma) -> tuple[torch.Tensor, torch.Tensor]:
    """(x_bar, sigma) -> (x_t, abar_t) = (x_bar / sqrt(1 + sigma^2), 1 / (1 + sigma^2))."""
    check_float(x_bar, "x_bar")
    a = alpha_bar_from_sigma(sigma)
    return x_bar * expand_to(a, x_bar).sqrt(), a


# ---- one step ----------------------------------------------------------------------------------
def euler_step_sigma(x_bar: torch.Tensor, eps: torch.Tensor, sigma, sigma_next) -> torch.Tensor:
    """Eq. 14's Euler step in sigma: x_bar_next = x_bar + (sigma_next - sigma) eps.

    In x coordinates this is eq. 13, i.e. ``ddim_step`` with sigma_t = 0 (claim O1).
    """
    sigma, sigma_next = _check_sigma(sigma, "sigma"), _check_sigma(sigma_next, "sigma_next")
    _check_pair(x_bar, eps)
    return x_bar + expand_to(sigma_next - sigma, x_bar) * eps


def euler_step_sigma_sq(x_bar: torch.Tensor, eps: torch.Tensor, sigma, sigma_next) -> torch.Tensor:
    """Eq. 15: the Euler step in sigma^2 of the VE probability-flow ODE.

    With eps = -sigma grad log p_sigma(x_bar) (Prop. 1), d x_bar = -(1/2) grad log p_sigma d(sigma^2)
    = (1/2) (eps / sigma) d(sigma^2), and one Euler step in sigma^2 gives
    x_bar_next = x_bar + (sigma_next^2 - sigma^2) / (2 sigma) eps. It differs from eq. 14's step
    by exactly +(sigma_next - sigma)^2 / (2 sigma) eps: O(step^2). Needs sigma > 0.
    """
    sigma, sigma_next = _check_sigma(sigma, "sigma"), _check_sigma(sigma_next, "sigma_next")
    if (sigma <= 0).any():
        raise ValueError("eq. 15 divides by sigma: the step must start at sigma > 0")
    _check_pair(x_bar, eps)
    return x_bar + expand_to((sigma_next**2 - sigma**2) / (2 * sigma), x_bar) * eps


# ---- samplers ----------------------------------------------------------------------------------
def ode_nfe(method: str, S: int) -> int:
    """Model evaluations for S steps: S for Euler (either form), 2 S - 1 for Heun (last step Euler)."""
    _check_method(method)
    if isinstance(S, bool) or not isinstance(S, numbers.Integral) or S < 1:
        raise ValueError(f"S must be a positive integer, got {S!r}")
    return int(2 * S - 1 if method == "heun" else S)


@torch.no_grad()
def ode_sample(model: Model, x_T: torch.Tensor, schedule: NoiseSchedule, tau: Sequence[int] | int,
               method: str = "euler") -> torch.Tensor:
    """Integrate eq. 14 from x_T at t = tau_S down to sigma = 0 (alpha_bar = 1); return x_0 (B, ...).

    Steps walk tau backwards, [(tau_S, tau_{S-1}), ..., (tau_1, -1)], in (x_bar, sigma):
    "euler": x_bar' = x_bar + (s' - s) eps(x_bar, t), eq. 13-14 (equal to ``sample(eta=0)``);
    "euler_sigma_sq": eq. 15's step (s'^2 - s^2) / (2 s) eps (its last step only halves the way);
    "heun": Heun's method (Karras et al. 2022, Alg. 1) on eq. 14: an Euler predictor to s', a second
    evaluation there at t' (still an integer step), and the average slope; the last step, to
    sigma = 0 where no model is defined, is a plain Euler (DDIM) step. NFE: ``ode_nfe(method, S)``.
    """
    _check_method(method)
    tau = _as_tau(schedule, tau)
    check_batched_float(x_T, "x_T", finite=True)
    a = schedule.alpha_bars.double().cpu().tolist()
    if a[tau[-1]] <= 0:
        raise ValueError(f"the ODE of eq. 14 starts at sigma = sqrt((1 - abar) / abar) = inf where alpha_bar = 0 "
                         f"(t = {tau[-1]}, zero terminal SNR): use ddim_lib.sample with a 'v' or 'x0' model, "
                         "or a tau that ends below the last step")
    sigma = {t: math.sqrt((1 - a[t]) / a[t]) for t in tau} | {-1: 0.0}
    t_batch = {t: torch.full((x_T.shape[0],), t, dtype=torch.long, device=x_T.device) for t in tau}

    checked = []

    def eps_at(x_bar, t):  # the model sees x_t = x_bar / sqrt(sigma^2 + 1), as in eq. 14
        x_t = x_bar / math.sqrt(sigma[t] ** 2 + 1)
        eps = model(x_t, t_batch[t])
        if not checked:    # the first output only: shape, once per call
            check_model_output(eps, x_t, model)
            checked.append(True)
        return eps

    x_bar = x_T * math.sqrt(sigma[tau[-1]] ** 2 + 1)
    # [(tau_S, tau_{S-1}), ..., (tau_2, tau_1), (tau_1, -1)]
    for t, t_next in zip(reversed(tau), list(reversed(tau))[1:] + [-1]):
        s, s_next = sigma[t], sigma[t_next]
        eps = eps_at(x_bar, t)
        # the steps of euler_step_sigma_sq / euler_step_sigma, inlined: their checks run once, above
        if method == "euler_sigma_sq":
            x_bar = x_bar + (s_next**2 - s**2) / (2 * s) * eps          # eq. 15
            continue
        x_euler = x_bar + (s_next - s) * eps                            # eq. 14's Euler step
        if method == "heun" and t_next >= 0:
            eps_next = eps_at(x_euler, t_next)
            x_bar = x_bar + (s_next - s) * 0.5 * (eps + eps_next)
        else:
            x_bar = x_euler
    check_result_finite(x_bar, model, "ode_sample")
    return x_bar  # sigma = 0: x_bar = x_0


def heun_sample(model: Model, x_T: torch.Tensor, schedule: NoiseSchedule,
                tau: Sequence[int] | int) -> torch.Tensor:
    """Heun's second-order method on eq. 14 over tau (see ``ode_sample``); 2 S - 1 model evaluations."""
    return ode_sample(model, x_T, schedule, tau, method="heun")


# ---- checks ------------------------------------------------------------------------------------
def _as_float64(value) -> torch.Tensor:
    """Python numbers and integer tensors become float64 tensors; float tensors keep their dtype."""
    value = torch.as_tensor(value, dtype=None if torch.is_tensor(value) else torch.float64)
    return value if value.is_floating_point() else value.to(torch.float64)


def _check_sigma(sigma, name: str) -> torch.Tensor:
    sigma = _as_float64(sigma)
    if not torch.isfinite(sigma).all() or (sigma < 0).any():
        raise ValueError(f"{name} must be finite and non-negative")
    return sigma


def _check_pair(x_bar, eps) -> None:
    check_float(x_bar, "x_bar")
    check_float(eps, "eps")
    check_same_shape(x_bar, eps, "x_bar", "eps")


def _check_method(method: str) -> None:
    if method not in ODE_METHODS:
        raise ValueError(f"method must be one of {', '.join(ODE_METHODS)}; got {method!r}")
