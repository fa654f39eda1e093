"""The forward process: q(x_t | x_0) (eq. 4), DDPM's posterior, and DDIM's q_sigma (eq. 7, 8).

Shapes: x of shape (B, ...); t an int or a LongTensor of shape (B,) of code indices 0..T-1.
Alpha-bar arguments ``a_t``, ``a_prev`` are scalars or tensors of shape (B,).
"""
from __future__ import annotations

from typing import NamedTuple

import torch

from ._util import as_float, check_admissible_sigma, check_alpha_bar, check_float, check_same_shape, expand_to
from .schedule import NoiseSchedule

__all__ = ["LinearGaussian", "q_mean_var", "q_sample", "ddpm_posterior",
           "q_sigma_reverse", "q_sigma_forward"]


class LinearGaussian(NamedTuple):
    """N(coef_x0 * x0 + coef_x * x, var I): a Gaussian whose mean is linear in (x0, x)."""

    coef_x0: torch.Tensor
    coef_x: torch.Tensor
    var: torch.Tensor

    def mean(self, x0: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """The mean coef_x0 * x0 + coef_x * x, coefficients broadcast per sample."""
        return expand_to(self.coef_x0, x0) * x0 + expand_to(self.coef_x, x) * x


def _alpha_bar_like(schedule: NoiseSchedule, t, x: torch.Tensor) -> torch.Tensor:
    if not isinstance(schedule, NoiseSchedule):
        raise ValueError(f"schedule must be a NoiseSchedule, got {type(schedule).__name__}")
    return schedule.alpha_bar(torch.as_tensor(t, device=schedule.device)).to(x.device, x.dtype)


def q_mean_var(x0: torch.Tensor, schedule: NoiseSchedule, t) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean sqrt(abar_t) x0 and variance (1 - abar_t) of q(x_t | x_0) (eq. 4); var has shape of t.

    x0 must be a finite floating-point tensor."""
    check_float(x0, "x0", finite=True)
    a = _alpha_bar_like(schedule, t, x0)
    return expand_to(a.sqrt(), x0) * x0, 1 - a


def q_sample(x0: torch.Tensor, schedule: NoiseSchedule, t, noise: torch.Tensor | None = None,
             generator: torch.Generator | None = None) -> torch.Tensor:
    """One-shot draw x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps, eps ~ N(0, I) (eq. 4).

    x0 (and ``noise``, of x0's shape) must be finite floating-point tensors."""
    check_float(x0, "x0", finite=True)
    if noise is not None:
        check_float(noise, "noise", finite=True)
    if noise is None:
        noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
    elif noise.shape != x0.shape:
        raise ValueError(f"noise has shape {tuple(noise.shape)} but x0 has {tuple(x0.shape)}")
    a = _alpha_bar_like(schedule, t, x0)
    return expand_to(a.sqrt(), x0) * x0 + expand_to((1 - a).sqrt(), x0) * noise


def ddpm_posterior(x0: torch.Tensor, x_t: torch.Tensor, schedule: NoiseSchedule, t
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and variance of DDPM's q(x_{t-1} | x_t, x_0) (Ho et al., eq. 6-7).

    mu = sqrt(abar_{t-1}) beta_t / (1 - abar_t) x0 + sqrt(alpha_t) (1 - abar_{t-1}) / (1 - abar_t) x_t,
    beta_tilde = (1 - abar_{t-1}) beta_t / (1 - abar_t).  At code t = 0: mean x0, variance 0.
    x0 and x_t: finite floating-point tensors of one shape.
    """
    check_float(x0, "x0", finite=True)
    check_float(x_t, "x_t", finite=True)
    check_same_shape(x0, x_t, "x0", "x_t")
    if not isinstance(schedule, NoiseSchedule):
        raise ValueError(f"schedule must be a NoiseSchedule, got {type(schedule).__name__}")
    t = torch.as_tensor(t, device=schedule.device)
    a_t = schedule.alpha_bar(t).to(x0.device, x0.dtype)
    a_prev = schedule.alpha_bar(t - 1).to(x0.device, x0.dtype)
    beta = schedule.betas[t].to(x0.device, x0.dtype)
    coef_x0 = a_prev.sqrt() * beta / (1 - a_t)
    coef_xt = (1 - beta).sqrt() * (1 - a_prev) / (1 - a_t)
    mean = expand_to(coef_x0, x0) * x0 + expand_to(coef_xt, x_t) * x_t
    return mean, (1 - a_prev) * beta / (1 - a_t)


def q_sigma_reverse(a_t, a_prev, sigma) -> LinearGaussian:
    """Eq. 7: q_sigma(x_{t-1} | x_t, x_0) = N(sqrt(a_prev) x0 + sqrt(1 - a_prev - sigma^2)
    (x_t - sqrt(a_t) x0) / sqrt(1 - a_t), sigma^2 I).  Needs sigma^2 <= 1 - a_prev."""
    a_t, a_prev, sigma = _check_q_sigma_args(a_t, a_prev, sigma)
    coef_x = (1 - a_prev - sigma**2).clamp(min=0).sqrt() / (1 - a_t).sqrt()
    coef_x0 = a_prev.sqrt() - coef_x * a_t.sqrt()
    return LinearGaussian(coef_x0, coef_x, sigma**2)


def q_sigma_forward(a_t, a_prev, sigma) -> LinearGaussian:
    """Eq. 8 (Bayes on eq. 7 and the marginals): q_sigma(x_t | x_{t-1}, x_0) = N(m, v I) with
    m = sqrt(a_t) x0 + k (x_{t-1} - sqrt(a_prev) x0), k = sqrt(1 - a_prev - sigma^2) sqrt(1 - a_t) / (1 - a_prev),
    v = (1 - a_t) sigma^2 / (1 - a_prev).  ``coef_x`` multiplies x_{t-1}.  At a_prev = 1 it is q(x_t | x_0)."""
    a_t, a_prev, sigma = _check_q_sigma_args(a_t, a_prev, sigma)
    at_start = a_prev >= 1  # paper t = 1: x_{t-1} = x_0, so the "forward" is the marginal itself
    one_minus_prev = torch.where(at_start, torch.ones_like(a_prev), 1 - a_prev)
    k = (1 - a_prev - sigma**2).clamp(min=0).sqrt() * (1 - a_t).sqrt() / one_minus_prev
    var = (1 - a_t) * sigma**2 / one_minus_prev
    k = torch.where(at_start, torch.zeros_like(k), k)
    var = torch.where(at_start, 1 - a_t, var)
    return LinearGaussian(a_t.sqrt() - k * a_prev.sqrt(), k, var)


def _check_q_sigma_args(a_t, a_prev, sigma):
    """Broadcast to float tensors; a_t in (0, 1) (eq. 7 divides by 1 - a_t), a_prev in (0, 1], sigma admissible."""
    a_t, a_prev, sigma = torch.broadcast_tensors(*map(as_float, (a_t, a_prev, sigma)))
    if not torch.isfinite(a_t).all() or (a_t <= 0).any() or (a_t >= 1).any():
        raise ValueError(f"a_t must lie in (0, 1) (eq. 7 divides by 1 - a_t), got {a_t.tolist() if a_t.numel() < 8 else a_t}")
    check_alpha_bar(a_prev, "a_prev")
    check_admissible_sigma(sigma, a_prev)
    return a_t, a_prev, sigma

