"""Classifier-free guidance (Ho & Salimans 2022) and the exact conditionals of a labelled mixture.

The guided noise prediction is eps_w(x, t | y) = (1 + w) eps(x, t | y) - w eps(x, t), so that
eps_w = -sqrt(1 - abar_t) grad log [q_t(x | y)^(1 + w) q_t(x)^(-w)]: the exact eps of a "tilted"
law at every t. (Diffusers' ``guidance_scale`` is 1 + w.) A labelled Gaussian mixture, each
component carrying a class label, gives the exact eps(x, t | y) (the oracle of the class's
components) and eps(x, t) (the oracle of the whole mixture), so the guided eps is exact too, and
what DDIM does with it can be measured against the tilted law p(x | y)^(1 + w) p(x)^(-w) at t = 0.
"""
from __future__ import annotations

import math
import numbers
from collections.abc import Callable

import torch
from torch import nn

from .schedule import NoiseSchedule
from .toy import GaussianMixture, OracleEps

__all__ = ["GuidedEps", "class_mixture", "class_prior", "conditional_oracles", "guided_oracle",
           "tilted_log_prob", "sample_tilted", "tilted_cdf_1d", "mmd2_unbiased", "mmd2_blocks"]

Model = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _check_w(w) -> float:
    if isinstance(w, bool) or not isinstance(w, numbers.Real) or not math.isfinite(w):
        raise ValueError(f"w (the guidance weight) must be a finite real number, got {w!r}")
    return float(w)


class GuidedEps(nn.Module):
    """eps_w(x, t) = (1 + w) cond(x, t) - w uncond(x, t) (Ho & Salimans 2022, eq. 6).

    ``cond`` and ``uncond`` are models ``m(x, t)`` predicting eps (e.g. the class-conditional and
    the unconditional oracle); the result is a model of the same signature, usable with ``sample``
    and ``encode``. w = 0 returns ``cond`` alone (``uncond`` is not evaluated), w = -1 ``uncond``.
    The two models may predict x0 or v instead of eps (pass the same ``prediction=`` to the sampler):
    each conversion is eps = c_x x_t + c_o output and (1 + w) - w = 1, so guiding x0 or v outputs
    gives the same eps_w as guiding the eps outputs.
    """

    def __init__(self, cond: Model, uncond: Model, w: float):
        super().__init__()
        if not callable(cond) or not callable(uncond):
            raise ValueError("cond and uncond must be models called as m(x, t)")
        self.cond, self.uncond, self.w = cond, uncond, _check_w(w)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """(1 + w) cond(x, t) - w uncond(x, t)."""
        e_cond = self.cond(x, t)
        if self.w == 0:
            return e_cond
        e_uncond = self.uncond(x, t)
        if e_uncond.shape != e_cond.shape:
            raise ValueError(f"cond and uncond must return the same shape, got {tuple(e_cond.shape)} "
                             f"and {tuple(e_uncond.shape)}")
        return (1 + self.w) * e_cond - self.w * e_uncond


# ---- a labelled Gaussian mixture --------------------------------------------------------------
def _check_labels(mixture: GaussianMixture, labels) -> torch.Tensor:
    if not isinstance(mixture, GaussianMixture):
        raise ValueError(f"mixture must be a GaussianMixture, got {type(mixture).__name__}")
    labels = torch.as_tensor(labels)
    K = mixture.means.shape[0]
    if labels.shape != (K,) or labels.is_floating_point() or labels.dtype == torch.bool:
        raise ValueError(f"labels must be K = {K} integer class labels, one per component, "
                         f"got shape {tuple(labels.shape)} and dtype {labels.dtype}")
    return labels.long()


def _class_index(mixture: GaussianMixture, labels, y) -> torch.Tensor:
    labels = _check_labels(mixture, labels)
    if isinstance(y, bool) or not isinstance(y, numbers.Integral):
        raise ValueError(f"y must be an integer class label, got {y!r}")
    idx = (labels == int(y)).nonzero().flatten()
    if idx.numel() == 0 or mixture.weights[idx].sum() <= 0:
        raise ValueError(f"class y = {y} has no component of positive weight; labels are {sorted(set(labels.tolist()))}")
    return idx


def class_prior(mixture: GaussianMixture, labels, y: int) -> float:
    """p(y) = sum of the weights of the components labelled y."""
    return mixture.weights[_class_index(mixture, labels, y)].sum().item()


def class_mixture(mixture: GaussianMixture, labels, y: int) -> GaussianMixture:
    """p(x | y): the components labelled y, their weights renormalised to sum to 1."""
    idx = _class_index(mixture, labels, y)
    w = mixture.weights[idx]
    return GaussianMixture(mixture.means[idx], mixture.stds[idx], w / w.sum(), dtype=mixture.means.dtype)


def conditional_oracles(mixture: GaussianMixture, labels, schedule: NoiseSchedule):
    """The exact eps*(x, t | y) for every class y, and eps*(x, t): ``({y: OracleEps}, OracleEps)``."""
    labels = _check_labels(mixture, labels)
    classes = sorted({int(v) for v, wt in zip(labels.tolist(), mixture.weights.tolist()) if wt > 0})
    cond = {y: OracleEps(class_mixture(mixture, labels, y), schedule) for y in classes}
    return cond, OracleEps(mixture, schedule)


def guided_oracle(mixture: GaussianMixture, labels, y: int, schedule: NoiseSchedule, w: float) -> GuidedEps:
    """The exact guided eps_w(x, t | y) = (1 + w) eps*(x, t | y) - w eps*(x, t) for a labelled mixture."""
    return GuidedEps(OracleEps(class_mixture(mixture, labels, y), schedule), OracleEps(mixture, schedule), w)


# ---- the tilted law p(x | y)^(1 + w) p(x)^(-w) -------------------------------------------------
def tilted_log_prob(mixture: GaussianMixture, labels, y: int, w: float, x: torch.Tensor) -> torch.Tensor:
    """Unnormalised log density of the tilted law: (1 + w) log p(x | y) - w log p(x), x (n, d) -> (n,)."""
    w = _check_w(w)
    cond = class_mixture(mixture, labels, y)
    return (1 + w) * cond.log_prob(x) - w * mixture.log_prob(x)


def sample_tilted(mixture: GaussianMixture, labels, y: int, w: float, n: int,
                  generator: torch.Generator | None = None, max_rounds: int = 1000) -> torch.Tensor:
    """n exact draws from p_w(x | y) proportional to p(x | y)^(1 + w) p(x)^(-w), for w >= 0, by rejection.

    p_w(x | y) / p(x | y) is proportional to p(y | x)^w <= 1, so a draw x ~ p(x | y) accepted with
    probability p(y | x)^w = (p(y) p(x | y) / p(x))^w is an exact draw of the tilted law.
    """
    w = _check_w(w)
    if w < 0:
        raise ValueError(f"sample_tilted needs w >= 0 (the rejection bound p(y | x)^w <= 1), got {w}")
    if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}")
    cond, log_py = class_mixture(mixture, labels, y), math.log(class_prior(mixture, labels, y))
    out, have = [], 0
    for _ in range(max_rounds):
        x = cond.sample(max(2 * (n - have), 256), generator=generator)
        log_post = (log_py + cond.log_prob(x) - mixture.log_prob(x)).clamp(max=0.0)   # log p(y | x)
        u = torch.rand(x.shape[0], generator=generator, dtype=x.dtype)
        keep = x[u.log() < w * log_post]
        out.append(keep)
        have += keep.shape[0]
        if have >= n:
            return torch.cat(out)[:n]
    raise ValueError(f"acceptance too low: {have} of {n} draws after {max_rounds} rounds (w = {w} too large?)")


def tilted_cdf_1d(mixture: GaussianMixture, labels, y: int, w: float, x, n_grid: int = 200_001) -> torch.Tensor:
    """The CDF of the 1-D tilted law at the points x, normalised numerically (trapezoid rule).

    The grid spans every component mean +- 12 standard deviations; the tilted density is at most
    p(x | y) / p(y)^w, so it is negligible beyond that range.
    """
    w = _check_w(w)
    if mixture.dim != 1:
        raise ValueError(f"tilted_cdf_1d needs a 1-D mixture, got dimension {mixture.dim}")
    lo = (mixture.means - 12 * mixture.stds).min().item()
    hi = (mixture.means + 12 * mixture.stds).max().item()
    grid = torch.linspace(lo, hi, n_grid, dtype=torch.float64)
    logp = tilted_log_prob(mixture, labels, y, w, grid[:, None])
    dens = (logp - logp.max()).exp()
    cdf = torch.cat([torch.zeros(1, dtype=torch.float64),
                     torch.cumsum((dens[1:] + dens[:-1]) / 2 * (grid[1:] - grid[:-1]), 0)])
    cdf = cdf / cdf[-1]
    x = torch.as_tensor(x, dtype=torch.float64).flatten()
    i = torch.searchsorted(grid, x.clamp(lo, hi)).clamp(1, n_grid - 1)
    frac = (x.clamp(lo, hi) - grid[i - 1]) / (grid[i] - grid[i - 1])
    return cdf[i - 1] + frac * (cdf[i] - cdf[i - 1])


# ---- a divergence between samples ---------------------------------------------------------------
def mmd2_unbiased(x: torch.Tensor, y: torch.Tensor, bandwidth: float) -> float:
    """Unbiased MMD^2 (Gretton et al. 2012, eq. 3) with k(a, b) = exp(-|a - b|^2 / (2 h^2)).

    MMD^2_u = mean_{i != j} k(x_i, x_j) + mean_{i != j} k(y_i, y_j) - 2 mean_{i, j} k(x_i, y_j);
    its expectation is MMD^2 >= 0, zero iff the two laws are equal. x (m, d), y (n, d), m, n >= 2.
    """
    if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1] or x.shape[0] < 2 or y.shape[0] < 2:
        raise ValueError(f"x and y must have shapes (m, d) and (n, d) with m, n >= 2, got "
                         f"{tuple(x.shape)} and {tuple(y.shape)}")
    if not (isinstance(bandwidth, numbers.Real) and math.isfinite(bandwidth) and bandwidth > 0):
        raise ValueError(f"bandwidth must be a positive number, got {bandwidth!r}")
    x, y = x.double(), y.double()

    def k(a, b):
        return torch.exp(-torch.cdist(a, b).pow(2) / (2 * bandwidth**2))

    m, n = x.shape[0], y.shape[0]
    kxx, kyy = k(x, x), k(y, y)
    within_x = (kxx.sum() - kxx.diagonal().sum()) / (m * (m - 1))
    within_y = (kyy.sum() - kyy.diagonal().sum()) / (n * (n - 1))
    return (within_x + within_y - 2 * k(x, y).mean()).item()


def mmd2_blocks(x: torch.Tensor, y: torch.Tensor, bandwidth: float, blocks: int) -> tuple[float, float]:
    """MMD^2_u averaged over ``blocks`` disjoint equal blocks of x and y, with its standard error.

    The block estimates are independent and unbiased, so their mean is unbiased and
    sd / sqrt(blocks) is its standard error. Returns (mean, standard error).
    """
    if isinstance(blocks, bool) or not isinstance(blocks, numbers.Integral) or blocks < 2:
        raise ValueError(f"blocks must be an integer >= 2, got {blocks!r}")
    m = min(x.shape[0], y.shape[0]) // blocks
    if m < 2:
        raise ValueError(f"too few points ({min(x.shape[0], y.shape[0])}) for {blocks} blocks of at least 2")
    est = torch.tensor([mmd2_unbiased(x[i * m:(i + 1) * m], y[i * m:(i + 1) * m], bandwidth)
                        for i in range(blocks)], dtype=torch.float64)
    return est.mean().item(), (est.std() / math.sqrt(blocks)).item()
