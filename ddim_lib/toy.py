"""Exact data laws for checking samplers: Gaussian mixtures, their exact denoiser, 2-D toy sets.

A mixture sum_k w_k N(mu_k, diag(s_k^2)) stays a mixture under the forward process:
q(x_t) = sum_k w_k N(sqrt(abar_t) mu_k, diag(abar_t s_k^2 + 1 - abar_t)). So the optimal
eps*(x_t, t) = E[eps | x_t] and E[x_0 | x_t] have closed forms (``OracleEps``), and a sampler's
error can be split from a network's learning error.
"""
from __future__ import annotations

import math
import numbers

import torch
from torch import nn

from .prediction import check_prediction
from .schedule import NoiseSchedule

__all__ = ["GaussianMixture", "OracleEps", "toy2d", "TOY2D_NAMES"]


def _as_real(value, name: str, dtype: torch.dtype) -> torch.Tensor:
    if torch.is_tensor(value) and (value.is_complex() or value.dtype == torch.bool):
        raise ValueError(f"{name} must be real numbers, got dtype {value.dtype}")
    try:
        return torch.as_tensor(value, dtype=dtype)
    except (TypeError, ValueError, RuntimeError):
        raise ValueError(f"{name} must be real numbers, got {value!r:.80}") from None


class GaussianMixture:
    """sum_k w_k N(mu_k, diag(s_k^2)) in d dimensions: means (K, d), stds (K,) or (K, d), weights (K,)."""

    def __init__(self, means, stds, weights=None, dtype: torch.dtype = torch.float64):
        if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
            raise ValueError(f"dtype must be a floating-point torch dtype, got {dtype!r}")
        means = _as_real(means, "means", dtype)
        if means.ndim != 2 or 0 in means.shape:
            raise ValueError(f"means must have shape (K, d) with K, d >= 1, got {tuple(means.shape)}")
        if not torch.isfinite(means).all():
            raise ValueError("means must be finite (no NaN or inf)")
        K, d = means.shape
        stds = _as_real(stds, "stds", dtype)
        if stds.ndim == 0:
            stds = stds.expand(K)
        if stds.ndim == 1:
            if stds.shape[0] != K:
                raise ValueError(f"stds must have shape (K,) or (K, d) with K = {K}, got {tuple(stds.shape)}")
            stds = stds[:, None].expand(K, d)
        if stds.shape != (K, d) or not torch.isfinite(stds).all() or (stds <= 0).any():
            raise ValueError("stds must be finite and positive, of shape (K,) or (K, d)")
        weights = torch.full((K,), 1.0 / K, dtype=dtype) if weights is None else _as_real(weights, "weights", dtype)
        if weights.shape != (K,) or not torch.isfinite(weights).all() or (weights < 0).any() \
                or not math.isclose(weights.sum().item(), 1.0, rel_tol=1e-9):
            raise ValueError(f"weights must be K = {K} non-negative numbers summing to 1")
        self.means, self.stds, self.weights = means, stds.contiguous(), weights

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    @classmethod
    def ring(cls, k: int = 8, radius: float = 2.0, std: float = 0.1, dtype=torch.float64) -> "GaussianMixture":
        """k equal components on a circle of ``radius`` in 2-D (the "8 Gaussians" toy)."""
        angles = torch.arange(k, dtype=dtype) * 2 * math.pi / k
        return cls(torch.stack([radius * angles.cos(), radius * angles.sin()], 1), std, dtype=dtype)

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """n independent draws, shape (n, d)."""
        if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 1:
            raise ValueError(f"n must be a positive integer, got {n!r}")
        comp = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        z = torch.randn(n, self.dim, generator=generator, dtype=self.means.dtype)
        return self.means[comp] + self.stds[comp] * z

    def noised(self, alpha_bar: float) -> "GaussianMixture":
        """The law of sqrt(abar) x_0 + sqrt(1 - abar) eps: q(x_t) as a mixture (abar in [0, 1])."""
        if isinstance(alpha_bar, bool) or not isinstance(alpha_bar, numbers.Real) or not 0 <= alpha_bar <= 1:
            raise ValueError(f"alpha_bar must be a number in [0, 1], got {alpha_bar!r}")
        return GaussianMixture(math.sqrt(alpha_bar) * self.means,
                               (alpha_bar * self.stds**2 + 1 - alpha_bar).sqrt(), self.weights,
                               dtype=self.means.dtype)

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """log density at x of shape (n, d) -> (n,)."""
        if not torch.is_tensor(x) or not x.is_floating_point() or x.ndim != 2 or x.shape[1] != self.dim:
            got = tuple(x.shape) if torch.is_tensor(x) else type(x).__name__
            raise ValueError(f"x must be a floating-point tensor of shape (n, {self.dim}), got {got}")
        return torch.logsumexp(self._log_joint(x, self.means, self.stds**2), dim=1)

    def _log_joint(self, x, means, var):
        """log w_k + log N(x; means_k, diag(var_k)) for every k: (n, K). means, var: (K, d) or (n, K, d)."""
        x = x.to(means.dtype)
        diff = x[:, None, :] - means
        log_norm = -0.5 * (diff**2 / var + var.log() + math.log(2 * math.pi)).sum(-1)
        return self.weights.log().to(x.dtype) + log_norm


class OracleEps(nn.Module):
    """The exact eps*(x_t, t) = E[eps | x_t] = -sqrt(1 - abar_t) grad log q(x_t) for a mixture.

    Usable as a model: ``oracle(x, t)`` with x of shape (B, d) (or (B, ...) flattening to d) and
    t a LongTensor (B,). Computed in float64 and returned in x's dtype. ``prediction`` selects
    the output (``ddim_lib.prediction``): "eps" (E[eps | x_t]), "x0" (E[x_0 | x_t], the posterior
    mean) or "v" (E[v | x_t] = sqrt(abar) E[eps | x_t] - sqrt(1 - abar) E[x_0 | x_t]); each is the
    minimiser of its squared-error training loss. All three are exact at abar = 0 too (zero terminal
    SNR), where x_t = eps: eps* = x_t and x0* = E[x_0] = sum_k w_k mu_k.
    """

    def __init__(self, mixture: GaussianMixture, schedule: NoiseSchedule, prediction: str = "eps"):
        super().__init__()
        if not isinstance(mixture, GaussianMixture):
            raise ValueError(f"mixture must be a GaussianMixture, got {type(mixture).__name__}")
        if not isinstance(schedule, NoiseSchedule):
            raise ValueError(f"schedule must be a NoiseSchedule, got {type(schedule).__name__}")
        self.mixture, self.schedule = mixture, schedule
        self.prediction = check_prediction(prediction)

    def _flat(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """x as (B, d), after shape checks only (no value checks: this runs at every sampler step)."""
        if not torch.is_tensor(x) or not x.is_floating_point() or x.ndim < 1:
            raise ValueError("x must be a floating-point tensor of shape (B, ...)")
        flat = x.reshape(x.shape[0], -1)
        if flat.shape[1] != self.mixture.dim:
            raise ValueError(f"x of shape {tuple(x.shape)} flattens to {flat.shape[1]} per sample, but the "
                             f"mixture has dimension {self.mixture.dim}")
        if not torch.is_tensor(t) or t.ndim > 1 or t.numel() not in (1, x.shape[0]):
            raise ValueError(f"t must be a LongTensor of shape (B,) = ({x.shape[0]},) (or one step for all)")
        return flat

    def _component_terms(self, x: torch.Tensor, t: torch.Tensor):
        """Per-sample abar (B,), component posteriors r_k (B, K), noised variances (B, K, d)."""
        m = self.mixture
        a = self.schedule.alpha_bar(t.to(self.schedule.device)).to(torch.float64).cpu().to(x.device)
        means, s2 = m.means.to(x.device), (m.stds**2).to(x.device)
        mean_t = a.sqrt()[:, None, None] * means                     # (B, K, d)
        var_t = a[:, None, None] * s2 + (1 - a)[:, None, None]         # (B, K, d)
        diff = x.to(torch.float64)[:, None, :] - mean_t
        log_r = m.weights.to(x.device).log() - 0.5 * (diff**2 / var_t + var_t.log()).sum(-1)
        return a, torch.softmax(log_r, dim=1), diff, var_t

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The optimal output of type ``self.prediction`` at (x_t, t); for "eps":
        E[eps | x_t] = sum_k r_k(x_t) sqrt(1 - abar_t) (x_t - sqrt(abar_t) mu_k) / (abar_t s_k^2 + 1 - abar_t)."""
        shape, flat = x.shape, self._flat(x, t)
        a, r, diff, var_t = self._component_terms(flat, t)
        if self.prediction != "x0":
            eps = (1 - a).sqrt()[:, None] * (r[..., None] * diff / var_t).sum(1)
        if self.prediction != "eps":
            x0 = self._x0(a, r, diff, var_t)
        out = eps if self.prediction == "eps" else x0 if self.prediction == "x0" else \
            a.sqrt()[:, None] * eps - (1 - a).sqrt()[:, None] * x0
        return out.to(x.dtype).reshape(shape)

    def _x0(self, a, r, diff, var_t) -> torch.Tensor:
        s2 = (self.mixture.stds**2).to(diff.device)
        x0_k = self.mixture.means.to(diff.device) + a.sqrt()[:, None, None] * s2 * diff / var_t
        return (r[..., None] * x0_k).sum(1)

    def posterior_mean(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """E[x_0 | x_t] from the component posteriors: sum_k r_k (mu_k + sqrt(abar) s_k^2 (x_t - sqrt(abar) mu_k) / v_k)."""
        shape, flat = x.shape, self._flat(x, t)
        a, r, diff, var_t = self._component_terms(flat, t)
        return self._x0(a, r, diff, var_t).to(x.dtype).reshape(shape)


# ---- 2-D toy data sets ---------------------------------------------------------------------------
TOY2D_NAMES = ("swiss_roll", "two_moons", "eight_gaussians", "checkerboard")


def toy2d(name: str, n: int, generator: torch.Generator | None = None,
          dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """n points of a 2-D toy set, shape (n, 2), roughly standardised to [-2, 2]^2."""
    if name not in TOY2D_NAMES:
        raise ValueError(f"unknown toy data set {name!r}; choose one of {', '.join(TOY2D_NAMES)}")
    if n < 1:
        raise ValueError(f"n must be positive, got {n}")
    g = generator
    u = torch.rand(n, generator=g, dtype=torch.float64)
    noise = torch.randn(n, 2, generator=g, dtype=torch.float64)
    if name == "swiss_roll":
        theta = 1.5 * math.pi * (1 + 2 * u)
        pts = torch.stack([theta * theta.cos(), theta * theta.sin()], 1) / 5.0 + 0.05 * noise
    elif name == "two_moons":
        upper = torch.rand(n, generator=g) < 0.5
        angle = math.pi * u
        x = torch.where(upper, angle.cos(), 1 - angle.cos())
        y = torch.where(upper, angle.sin(), 0.5 - angle.sin())
        pts = torch.stack([x - 0.5, y - 0.25], 1) * 1.5 + 0.06 * noise
    elif name == "eight_gaussians":
        pts = GaussianMixture.ring(8, 2.0, 0.1).sample(n, generator=g)
    else:  # checkerboard: 8 unit squares of a 4x4 board on [-2, 2]^2
        x = 4 * torch.rand(n, generator=g, dtype=torch.float64) - 2
        y = torch.rand(n, generator=g, dtype=torch.float64) + 2 * torch.randint(0, 2, (n,), generator=g) - 2
        y = y + (torch.floor(x) % 2)
        pts = torch.stack([x, y], 1)
    return pts.to(dtype)
