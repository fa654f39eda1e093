"""Closed forms behind Theorem 1 (sec. 3.2, App. B) and DDPM's objective (eq. 5).

Arrays have shape (T,), indexed by code t = 0..T-1 (the paper's t = 1..T); ``sigmas[t]`` is sigma_{t+1}.
"""
from __future__ import annotations

import math

import torch

from ._util import check_admissible_sigma
from .schedule import NoiseSchedule

__all__ = ["theorem1_gamma", "ddpm_gamma", "appendix_b_gamma", "ddpm_sigmas", "eta_sigmas",
           "theorem1_constant", "kl_to_standard_normal"]


def _prev(a: torch.Tensor) -> torch.Tensor:
    return torch.cat([torch.ones_like(a[:1]), a[:-1]])


def _check_sigmas(schedule: NoiseSchedule, sigmas, eq7: bool = True) -> torch.Tensor:
    """Shape (T,), positive; with ``eq7`` also eq. 7's bound sigma_t^2 <= 1 - abar_{t-1} for t >= 2."""
    sigmas = torch.as_tensor(sigmas, dtype=schedule.dtype, device=schedule.device)
    if sigmas.shape != (schedule.T,):
        raise ValueError(f"sigmas must have shape (T,) = ({schedule.T},), got {tuple(sigmas.shape)}")
    if (sigmas <= 0).any():
        raise ValueError("Theorem 1 needs sigma_t > 0 for every t")
    if eq7:
        check_admissible_sigma(sigmas[1:], _prev(schedule.alpha_bars)[1:])
    return sigmas


def theorem1_gamma(schedule: NoiseSchedule, sigmas) -> torch.Tensor:
    """gamma_t = k_t^2 (1 - abar_t) / (2 sigma_t^2 abar_t), k_t = sqrt(abar_{t-1}) - sqrt(1 - abar_{t-1} - sigma_t^2) sqrt(abar_t / (1 - abar_t)), t >= 2; gamma_1 = (1 - abar_1) / (2 sigma_1^2 abar_1).

    k_t is eq. 7's coefficient of x_0, so KL(q_sigma(x_{t-1}|x_t,x_0) || p_theta(x_{t-1}|x_t)) =
    gamma_t ||eps_theta - eps||^2; at t = 1 the term is -log p_theta(x_0|x_1), a Gaussian of variance sigma_1^2.
    """
    sigmas = _check_sigmas(schedule, sigmas)
    a = schedule.alpha_bars
    a_prev = _prev(a)
    k = a_prev.sqrt() - (1 - a_prev - sigmas**2).clamp(min=0).sqrt() * (a / (1 - a)).sqrt()
    k = torch.where(torch.arange(schedule.T, device=a.device) == 0, torch.ones_like(k), k)  # t = 1: k = 1
    return k**2 * (1 - a) / (2 * sigmas**2 * a)


def ddpm_gamma(schedule: NoiseSchedule, sigmas) -> torch.Tensor:
    """DDPM's weights (eq. 5): gamma_t = beta_t^2 / (2 sigma_t^2 alpha_t (1 - abar_t)).

    Any positive sigma is allowed, DDPM's sigma_t^2 = beta_t included (eq. 7's bound does not apply here).
    """
    sigmas = _check_sigmas(schedule, sigmas, eq7=False)
    return schedule.betas**2 / (2 * sigmas**2 * schedule.alphas * (1 - schedule.alpha_bars))


def appendix_b_gamma(schedule: NoiseSchedule, sigmas, d: int) -> torch.Tensor:
    """The weight printed in the paper's App. B, 1 / (2 d sigma_t^2 abar_t): not the exact one (see chapter 4)."""
    sigmas = _check_sigmas(schedule, sigmas)
    return 1 / (2 * d * sigmas**2 * schedule.alpha_bars)


def ddpm_sigmas(schedule: NoiseSchedule) -> torch.Tensor:
    """sigma_t = sqrt(beta_tilde_t) = sqrt((1 - abar_{t-1}) / (1 - abar_t) beta_t), which is 0 at t = 1."""
    a = schedule.alpha_bars
    return ((1 - _prev(a)) / (1 - a) * schedule.betas).sqrt()


def eta_sigmas(schedule: NoiseSchedule, eta: float) -> torch.Tensor:
    """Eq. 16 along consecutive steps: sigma_t = eta sqrt((1 - abar_{t-1}) / (1 - abar_t)) sqrt(1 - abar_t / abar_{t-1})."""
    if eta < 0:
        raise ValueError(f"eta must be non-negative, got {eta}")
    a = schedule.alpha_bars
    a_prev = _prev(a)
    return eta * ((1 - a_prev) / (1 - a) * (1 - a / a_prev)).sqrt()


def kl_to_standard_normal(mean_sq_norm, var, d: int):
    """KL(N(m, var I_d) || N(0, I_d)) = (d var + ||m||^2 - d - d log var) / 2, given ||m||^2."""
    return 0.5 * (d * var + mean_sq_norm - d - d * math.log(var))


def theorem1_constant(schedule: NoiseSchedule, sigma_1: float, x0_sq_norm_mean: float, d: int) -> float:
    """C = E_x0 KL(q(x_T|x_0) || N(0, I)) + (d / 2) log(2 pi sigma_1^2), given E||x_0||^2 and d."""
    a_T = schedule.alpha_bars[-1].item()
    return kl_to_standard_normal(a_T * x0_sq_norm_mean, 1 - a_T, d) + 0.5 * d * math.log(2 * math.pi * sigma_1**2)
