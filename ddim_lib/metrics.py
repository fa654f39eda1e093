"""Sample-quality measures with standard errors, beyond the Frechet distance of ``evaluate``.

All inputs are feature sets (N, k) (arrays or tensors; computed in float64). Each measure returns
its value with a standard error, so that two samplers are ranked only where the errors allow:

* ``kid``: the kernel inception distance (Binkowski et al. 2018), the unbiased estimate of the
  squared maximum mean discrepancy with the cubic polynomial kernel k(x, y) = (x.y / d + 1)^3, and
  its standard error from the first-order variance of the two-sample U-statistic.
* ``precision_recall``: Kynkaanniemi et al. (2019): a set's manifold is the union of balls around
  its points, each with radius the distance to its k-th nearest neighbour in the set; precision is
  the fraction of generated points inside the real manifold, recall the fraction of real points
  inside the generated manifold.
* ``nearest_neighbour_distances`` and ``quantiles_with_se``: per-sample distance to the closest
  reference point, summarised by quantiles (robust to a tail of bad samples) with bootstrap errors.
* ``frechet_with_se``, ``frechet_floor``: the Frechet distance to fixed reference statistics with a
  bootstrap standard error, and what real data score at the same n.
* ``paired_bootstrap``: the difference of a statistic between two cells that share their latents
  (common random numbers), resampling the same sample indices in both.
"""
from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch

from .evaluate import FrechetReference, _as_features, gaussian_stats

__all__ = ["polynomial_kernel", "kid", "kid_difference", "knn_radii", "precision_recall", "nearest_neighbour_distances",
           "quantiles_with_se", "frechet_with_se", "frechet_floor", "paired_bootstrap"]


def _pair(a, b, names=("feats_a", "feats_b")) -> tuple[np.ndarray, np.ndarray]:
    a, b = _as_features(a, names[0]), _as_features(b, names[1])
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"feature sets differ in dimension: {a.shape[1]} and {b.shape[1]}")
    return a, b


def _rng(rng) -> np.random.Generator:
    return rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)


# ---- KID ------------------------------------------------------------------------------------------
def polynomial_kernel(a, b, degree: int = 3, coef0: float = 1.0) -> np.ndarray:
    """The kernel matrix (x.y / d + coef0)^degree between rows of a (m, d) and b (n, d), float64."""
    a, b = np.atleast_2d(np.asarray(a, np.float64)), np.atleast_2d(np.asarray(b, np.float64))
    if a.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"kernel inputs must be (m, d) and (n, d), got {a.shape} and {b.shape}")
    return (a @ b.T / a.shape[1] + coef0) ** degree


def kid(feats_x, feats_y, degree: int = 3, coef0: float = 1.0) -> tuple[float, float]:
    """Unbiased MMD^2 between the laws of x (m, d) and y (n, d) with the polynomial kernel, and its s.e.

    MMD^2_u = mean_{i != j} k(x_i, x_j) + mean_{i != j} k(y_i, y_j) - 2 mean_{i, j} k(x_i, y_j)
    (Gretton et al. 2012, eq. 3; Binkowski et al. 2018 use it with degree 3, coef0 1 as "KID").
    Standard error: sqrt(4 Var(g_x) / m + 4 Var(g_y) / n) with the U-statistic's projections
    g_x(i) = mean_{j != i} k(x_i, x_j) - mean_j k(x_i, y_j) and g_y likewise; it is first order, so
    it understates the error when the two laws are equal (then MMD^2 is degenerate and ~ 1/(mn)).
    """
    x, y = _pair(feats_x, feats_y, ("feats_x", "feats_y"))
    m, n = len(x), len(y)
    kxx, kyy, kxy = (polynomial_kernel(x, x, degree, coef0), polynomial_kernel(y, y, degree, coef0),
                     polynomial_kernel(x, y, degree, coef0))
    row_xx = (kxx.sum(1) - np.diag(kxx)) / (m - 1)
    row_yy = (kyy.sum(1) - np.diag(kyy)) / (n - 1)
    value = row_xx.mean() + row_yy.mean() - 2 * kxy.mean()
    g_x, g_y = row_xx - kxy.mean(1), row_yy - kxy.mean(0)
    se = math.sqrt(4 * g_x.var(ddof=1) / m + 4 * g_y.var(ddof=1) / n)
    return float(value), se


def kid_difference(feats_a, feats_b, feats_y, degree: int = 3, coef0: float = 1.0) -> tuple[float, float]:
    """KID(a, y) - KID(b, y) for paired sets a, b (m, d) (row i of both from the same latent), and s.e.

    The reference y is common, so its own term cancels; the error, conditional on y, is first order
    in the paired projections: 2 sd(g_a - g_b) / sqrt(m), with g as in ``kid``.
    """
    a, y = _pair(feats_a, feats_y, ("feats_a", "feats_y"))
    b, _ = _pair(feats_b, feats_y, ("feats_b", "feats_y"))
    if a.shape != b.shape:
        raise ValueError(f"paired sets need the same shape, got {a.shape} and {b.shape}")
    m = len(a)

    def parts(x):
        kxx = polynomial_kernel(x, x, degree, coef0)
        return (kxx.sum(1) - np.diag(kxx)) / (m - 1), polynomial_kernel(x, y, degree, coef0).mean(1)

    (row_a, cross_a), (row_b, cross_b) = parts(a), parts(b)
    value = (row_a - row_b).mean() - 2 * (cross_a - cross_b).mean()      # the k(y, y) terms cancel
    g = (row_a - cross_a) - (row_b - cross_b)
    return float(value), float(2 * g.std(ddof=1) / math.sqrt(m))


# ---- precision and recall -------------------------------------------------------------------------
def knn_radii(feats, k: int = 3) -> np.ndarray:
    """Distance from each row of feats (N, d) to its k-th nearest other row (N,)."""
    f = _as_features(feats, "feats")
    if not 1 <= k < len(f):
        raise ValueError(f"k must lie in 1..N-1 = 1..{len(f) - 1}, got {k}")
    d = torch.cdist(torch.from_numpy(f), torch.from_numpy(f)).numpy()
    np.fill_diagonal(d, np.inf)
    return np.partition(d, k - 1, axis=1)[:, k - 1]


def _inside(points: np.ndarray, centres: np.ndarray, radii: np.ndarray) -> np.ndarray:
    """Whether each point lies in at least one ball (centre, radius): ||p - c|| <= r."""
    d = torch.cdist(torch.from_numpy(points), torch.from_numpy(centres)).numpy()
    return (d <= radii[None, :]).any(1)


def precision_recall(real, fake, k: int = 3, blocks: int = 20) -> dict:
    """Improved precision and recall (Kynkaanniemi et al. 2019) with k-NN manifolds, and s.e.'s.

    Returns {"precision", "precision_se", "recall", "recall_se"}. Precision is a mean of independent
    indicators over generated points given the real set: binomial s.e. Recall depends on the whole
    generated set (its radii), so its s.e. is a delete-one-block jackknife over ``blocks`` blocks
    of the generated points.
    """
    real, fake = _pair(real, fake, ("real", "fake"))
    inside_real = _inside(fake, real, knn_radii(real, k))
    p = float(inside_real.mean())
    covered = _inside(real, fake, knn_radii(fake, k))
    r = float(covered.mean())
    blocks = min(blocks, len(fake))
    if blocks < 2 or len(fake) - len(fake) // blocks <= k:
        r_se = math.nan
    else:
        parts = np.array_split(np.arange(len(fake)), blocks)
        jack = np.array([_inside(real, np.delete(fake, part, 0), knn_radii(np.delete(fake, part, 0), k)).mean()
                         for part in parts])
        r_se = float(math.sqrt((blocks - 1) / blocks * np.sum((jack - jack.mean()) ** 2)))
    return {"precision": p, "precision_se": math.sqrt(p * (1 - p) / len(fake)), "recall": r, "recall_se": r_se}


# ---- nearest-neighbour distances ------------------------------------------------------------------
def nearest_neighbour_distances(samples, reference, exclude_self: bool = False) -> np.ndarray:
    """RMS distance (per coordinate) from each sample (N, ...) to its closest reference row (M, ...).

    ``exclude_self``: samples *are* the reference (same rows): skip each row's zero self-distance.
    """
    s = _as_features(torch.as_tensor(np.asarray(samples)).reshape(len(samples), -1), "samples")
    r = _as_features(torch.as_tensor(np.asarray(reference)).reshape(len(reference), -1), "reference")
    if s.shape[1] != r.shape[1]:
        raise ValueError(f"samples and reference differ in dimension: {s.shape[1]} and {r.shape[1]}")
    d = torch.cdist(torch.from_numpy(s), torch.from_numpy(r)).numpy()
    if exclude_self:
        if s.shape != r.shape:
            raise ValueError("exclude_self needs samples and reference to be the same rows")
        np.fill_diagonal(d, np.inf)
    return d.min(1) / math.sqrt(s.shape[1])


def quantiles_with_se(values, qs=(0.1, 0.5, 0.9), n_boot: int = 500, rng=0) -> dict:
    """{q: (quantile, bootstrap s.e.)} of a 1-D sample (numpy's default linear interpolation)."""
    v = np.asarray(values, dtype=np.float64)
    if v.ndim != 1 or len(v) < 2:
        raise ValueError(f"values must be a 1-D sample of at least 2 numbers, got shape {v.shape}")
    rng = _rng(rng)
    boot = np.quantile(v[rng.integers(0, len(v), (n_boot, len(v)))], qs, axis=1)   # (len(qs), n_boot)
    return {float(q): (float(np.quantile(v, q)), float(boot[i].std(ddof=1))) for i, q in enumerate(qs)}


# ---- Frechet distance with errors -----------------------------------------------------------------
def frechet_with_se(feats, reference, n_boot: int = 200, rng=0) -> tuple[float, float]:
    """FD between the Gaussian fit of feats (N, k) and a fixed reference, with bootstrap s.e.

    ``reference``: a ``FrechetReference`` or the reference features themselves. The reference is
    held fixed (it is common to every sampler compared), so the error is the generated set's: the
    standard deviation of FD over ``n_boot`` resamples of its rows.
    """
    f = _as_features(feats, "feats")
    ref = reference if isinstance(reference, FrechetReference) else FrechetReference(reference)
    rng = _rng(rng)
    boot = [ref(f[rng.integers(0, len(f), len(f))]) for _ in range(n_boot)]
    return ref(f), float(np.std(boot, ddof=1)) if n_boot > 1 else math.nan


def frechet_floor(real_feats, n: int, draws: int = 50, rng=0) -> tuple[float, float]:
    """What the data's own law scores: FD of n rows drawn with replacement from real_feats (M, k)
    against all of real_feats, mean and standard deviation over ``draws`` draws.

    Drawing with replacement samples the empirical law, so n may exceed M; this is the score of a
    model that reproduces the (training) data exactly, the same reference the samples face.
    """
    f = _as_features(real_feats, "real_feats")
    if n < 2:
        raise ValueError(f"n must be at least 2, got {n}")
    rng = _rng(rng)
    ref = FrechetReference(f)
    vals = [ref(f[rng.integers(0, len(f), n)]) for _ in range(draws)]
    return float(np.mean(vals)), float(np.std(vals, ddof=1))


# ---- comparing two cells --------------------------------------------------------------------------
def paired_bootstrap(statistic: Callable[[np.ndarray], float], a, b, n_boot: int = 200,
                     rng=0) -> tuple[float, float]:
    """statistic(a) - statistic(b) and its bootstrap s.e., resampling the SAME rows of a and b.

    a and b (N, ...) are paired: row i of both comes from the same latent (common random numbers),
    so their errors are correlated and the difference is much better determined than either.
    """
    a, b = np.asarray(a), np.asarray(b)
    if len(a) != len(b) or len(a) < 2:
        raise ValueError(f"paired sets need the same number (>= 2) of rows, got {len(a)} and {len(b)}")
    rng = _rng(rng)
    diff = statistic(a) - statistic(b)
    boot = []
    for _ in range(n_boot):
        idx = rng.integers(0, len(a), len(a))
        boot.append(statistic(a[idx]) - statistic(b[idx]))
    return float(diff), float(np.std(boot, ddof=1))
