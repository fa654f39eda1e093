"""Why Table 1's gaps grow with the data's dimension: the generalised sampler on Gaussian data, exactly.

For data x_0 ~ N(m, s^2 I) every quantity of the generalised sampler is affine in x_t and Gaussian,
and it separates over dimensions. Per dimension, q(x_t) = N(sqrt(abar_t) m, v_t) with
v_t = abar_t s^2 + 1 - abar_t, and the exact denoiser is affine:

    x0*(x_t) = E[x_0 | x_t] = A_t x_t + B_t,  A_t = sqrt(abar_t) s^2 / v_t,  B_t = m (1 - abar_t) / v_t,
    eps*(x_t) = (x_t - sqrt(abar_t) x0*(x_t)) / sqrt(1 - abar_t)                         (eq. 9 solved).

One reverse step x_prev = c_x0 x0* + c_x x_t + c_eps eps* + sigma z (eq. 12, or App. D.3's DDPM
posterior mean for ``sigma_hat``) is then x_prev = K x_t + L + sigma z with

    K = c_x0 A_t + c_x + c_eps (1 - sqrt(abar_t) A_t) / sqrt(1 - abar_t),
    L = c_x0 B_t - c_eps sqrt(abar_t) B_t / sqrt(1 - abar_t),

so a law N(mu, V) goes to N(K mu + L, K^2 V + sigma^2). Starting from x_T ~ N(0, 1) and walking tau
down to alpha_bar(-1) = 1 gives the sampler's output law N(mu_0, V_0) in closed form, hence
KL(sampler || data) = d * KL(N(mu_0, V_0) || N(m, s^2)): the per-dimension error times d.

The coefficients c_x0, c_x, c_eps, sigma are written out here from the equations, independently of
``ddim_lib.sampler`` (the book checks one against the other by Monte Carlo).
"""
from __future__ import annotations

import math
import numbers
from pathlib import Path

import numpy as np
import torch

from .evaluate import frechet_distance_from_stats
from .schedule import NoiseSchedule
from .timesteps import timesteps as make_timesteps
from .toy import GaussianMixture

__all__ = ["gaussian_sampler_law", "gaussian_kl", "gaussian_frechet", "mixture_moments",
           "fixed_geometry_mixture", "frechet_to_law", "frechet_floor", "mode_shares", "SWEEP_FILE"]

VARIANCES = ("eta", "sigma_hat")
# Shipped by scripts/dimension_sweep.py (chapter 11); present in a clone of the repository.
SWEEP_FILE = Path(__file__).resolve().parents[1] / "results" / "dimension_sweep.json"


def _step_coefficients(a_t: float, a_prev: float, eta: float, variance: str) -> tuple[float, float, float, float]:
    """(c_x0, c_x, c_eps, sigma) of x_prev = c_x0 x0_pred + c_x x_t + c_eps eps + sigma z."""
    if variance == "eta":       # eq. 12 with eq. 16's sigma
        sigma = eta * math.sqrt((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev))
        if sigma**2 > 1 - a_prev + 1e-12:
            raise ValueError(f"eta = {eta} is inadmissible (sigma^2 > 1 - alpha_bar_prev); use eta <= 1")
        return math.sqrt(a_prev), 0.0, math.sqrt(max(1 - a_prev - sigma**2, 0.0)), sigma
    beta = 1 - a_t / a_prev     # App. D.3: DDPM's posterior mean for the jump, noise sigma_hat
    c_x0 = math.sqrt(a_prev) * beta / (1 - a_t)
    c_x = math.sqrt(a_t / a_prev) * (1 - a_prev) / (1 - a_t)
    return c_x0, c_x, 0.0, (math.sqrt(beta) if a_prev < 1 else 0.0)


def gaussian_sampler_law(schedule: NoiseSchedule, tau, eta: float = 0.0, variance: str = "eta",
                         mean: float = 0.0, std: float = 1.0) -> tuple[float, float]:
    """Mean and variance (per dimension) of the generalised sampler's output for data N(mean, std^2 I).

    Exact, with the exact denoiser of that law, x_T ~ N(0, I) and no clipping; see the module's
    docstring for the recursion (mu, V) -> (K mu + L, K^2 V + sigma^2). ``tau``: an int S (uniform
    spacing) or increasing code timesteps; ``variance``: "eta" (eq. 12, 16) or "sigma_hat" (App. D.3).
    """
    if variance not in VARIANCES:
        raise ValueError(f"variance must be one of {VARIANCES}, got {variance!r}")
    if not isinstance(eta, numbers.Real) or not math.isfinite(eta) or eta < 0:
        raise ValueError(f"eta must be a finite non-negative number, got {eta!r}")
    if not (math.isfinite(mean) and math.isfinite(std) and std > 0):
        raise ValueError(f"mean must be finite and std positive, got mean = {mean!r}, std = {std!r}")
    tau = make_timesteps(schedule.T, int(tau)) if isinstance(tau, numbers.Integral) else make_timesteps(schedule.T, None, list(tau))
    a = schedule.alpha_bars.double().cpu().tolist()
    mu, var = 0.0, 1.0                                           # x_T ~ N(0, 1)
    for t, t_prev in zip(reversed(tau), list(reversed(tau))[1:] + [-1]):
        a_t, a_prev = a[t], (a[t_prev] if t_prev >= 0 else 1.0)
        v_t = a_t * std**2 + 1 - a_t                             # 1. q(x_t) = N(sqrt(a_t) m, v_t)
        A, B = math.sqrt(a_t) * std**2 / v_t, mean * (1 - a_t) / v_t   # 2. x0* = A x_t + B
        c_x0, c_x, c_eps, sigma = _step_coefficients(a_t, a_prev, float(eta), variance)
        K = c_x0 * A + c_x + c_eps * (1 - math.sqrt(a_t) * A) / math.sqrt(1 - a_t)   # 3. x_prev = K x_t + L + sigma z
        L = c_x0 * B - c_eps * math.sqrt(a_t) * B / math.sqrt(1 - a_t)
        mu, var = K * mu + L, K**2 * var + sigma**2             # 4. push the law through the step
    return mu, var


def gaussian_kl(mean_out: float, var_out: float, mean: float, std: float) -> float:
    """KL(N(mean_out, var_out) || N(mean, std^2)) in one dimension (multiply by d for N(., . I_d))."""
    if var_out <= 0 or std <= 0:
        raise ValueError("variances must be positive")
    r = var_out / std**2
    return 0.5 * (r + (mean_out - mean) ** 2 / std**2 - 1 - math.log(r))


def gaussian_frechet(mean_out: float, var_out: float, mean: float, std: float) -> float:
    """Frechet distance between N(mean_out, var_out) and N(mean, std^2) in one dimension: (dm)^2 + (sqrt(v) - s)^2."""
    if var_out < 0 or std <= 0:
        raise ValueError("variances must be non-negative and std positive")
    return (mean_out - mean) ** 2 + (math.sqrt(var_out) - std) ** 2


def mixture_moments(mixture: GaussianMixture) -> tuple[np.ndarray, np.ndarray]:
    """Exact mean (d,) and covariance (d, d) of a Gaussian mixture: sum w_k mu_k and sum w_k (diag(s_k^2) + mu_k mu_k^T) - m m^T."""
    w, mu, s2 = mixture.weights.double(), mixture.means.double(), mixture.stds.double() ** 2
    m = w @ mu
    cov = torch.diag(w @ s2) + (mu * w[:, None]).T @ mu - torch.outer(m, m)
    return m.numpy(), cov.numpy()


def fixed_geometry_mixture(d: int, separation: float = 2.0, stds=(0.05, 0.1, 0.15, 0.2)) -> GaussianMixture:
    """Four components on a square of side ``separation`` in the first two axes, with unequal stds.

    The geometry (means and their distances) is the same for every d >= 2; only the number of
    dimensions the components spread over grows. Unequal stds make the exact denoiser's component
    posteriors depend on every coordinate, so the dimensions do not decouple.
    """
    if not isinstance(d, numbers.Integral) or d < 2:
        raise ValueError(f"d must be an integer >= 2, got {d!r}")
    half = separation / 2
    means = torch.zeros(4, int(d), dtype=torch.float64)
    means[:, :2] = torch.tensor([[-half, -half], [half, -half], [-half, half], [half, half]], dtype=torch.float64)
    return GaussianMixture(means, torch.tensor(stds, dtype=torch.float64))


def frechet_to_law(samples, mixture: GaussianMixture, block: int = 2) -> float:
    """Frechet distance between the Gaussian fit of samples (n, d) and the mixture's exact moments,
    estimated with the symmetry of ``fixed_geometry_mixture`` laws.

    Such a law, its exact denoiser and hence every sampler's output law are invariant under
    permutations and sign flips of the coordinates after the first ``block``. So the output's
    covariance is block-diagonal, [[C, 0], [0, c I_{d-block}]], and its mean vanishes after the block.
    The 2x2 block is fitted as usual; c is the pooled variance of the other coordinates, and their
    mean is pooled into one number m. The distance is then

        FD = FD_block + (d - block) (m^2 + (sqrt(c) - sqrt(c_true))^2),

    whose finite-sample bias is O(1/n), where the plain d-dimensional fit's is O(d^2 / n) and would
    itself grow with d (so it could fake or hide the growth this module measures).
    """
    x = torch.as_tensor(samples).double()
    if x.ndim != 2 or x.shape[1] != mixture.dim or x.shape[0] < 2:
        raise ValueError(f"samples must have shape (n >= 2, d = {mixture.dim}), got {tuple(x.shape)}")
    if not torch.isfinite(x).all():
        raise ValueError("samples contain NaN or infinite values")
    m_true, cov_true = mixture_moments(mixture)
    head, rest = x[:, :block].numpy(), x[:, block:]
    fd = frechet_distance_from_stats(head.mean(0), np.atleast_2d(np.cov(head, rowvar=False)),
                                     m_true[:block], cov_true[:block, :block])
    if rest.shape[1]:
        c_true = float(np.mean(np.diag(cov_true)[block:]))
        m = rest.mean().item()
        c = ((rest - rest.mean(0)) ** 2).sum().item() / (rest.numel() - rest.shape[1])   # pooled, unbiased
        fd += rest.shape[1] * (m**2 + (math.sqrt(c) - math.sqrt(c_true)) ** 2)
    return fd


def frechet_floor(mixture: GaussianMixture, n: int, reps: int, generator: torch.Generator) -> tuple[float, float]:
    """Mean and standard error of ``frechet_to_law`` for n exact draws, over ``reps`` repetitions:
    the floor a perfect sampler reaches at that n, to be subtracted."""
    if reps < 2:
        raise ValueError("reps must be at least 2 to give a standard error")
    vals = np.array([frechet_to_law(mixture.sample(n, generator=generator), mixture) for _ in range(reps)])
    return float(vals.mean()), float(vals.std(ddof=1) / math.sqrt(reps))


def mode_shares(samples, mixture: GaussianMixture) -> np.ndarray:
    """The share of samples (n, d) whose most likely component under the mixture is k, for each k:
    argmax_k [log w_k + log N(x; mu_k, diag(s_k^2))]. Under the mixture itself the shares tend to
    the weights w_k when the components are well separated."""
    x = torch.as_tensor(samples).double()
    if x.ndim != 2 or x.shape[1] != mixture.dim:
        raise ValueError(f"samples must have shape (n, d = {mixture.dim}), got {tuple(x.shape)}")
    var = mixture.stds.double() ** 2                                     # (K, d)
    diff = x[:, None, :] - mixture.means.double()                        # (n, K, d)
    log_joint = mixture.weights.double().log() - 0.5 * (diff**2 / var + var.log()).sum(-1)
    best = log_joint.argmax(1)
    return (torch.bincount(best, minlength=len(mixture.weights)).double() / len(best)).numpy()
