"""Denoisers whose error can be dialled, and exact-law divergences to measure what it costs.

``DialledEps`` is eps_c(x, t) = eps*(x, t) + c e(x, t): the exact denoiser of a Gaussian mixture
(``OracleEps``) plus c times a fixed smooth error field e, scaled so that E||e(x_t, t)||^2 / d = 1
under q(x_t) at every t. So the per-t error E||eps_c - eps*||^2 / d is exactly c^2: c = 0 is the
oracle, c = 1 an error as large as the noise itself. The field is a random-feature field (fixed seed),
whose mean square under a Gaussian mixture has a closed form (``RandomFeatureField.mean_sq``).

The divergence is the squared maximum mean discrepancy to the *exact* law, with the Gaussian
kernel's expectations over the mixture in closed form (``mmd2``), a delete-a-group jackknife for
standard errors, and ``eta_trend`` / ``detectable_effect`` for a trend test in eta with its power.
``plausibility`` scores decoded digits (classifier confidence, nearest-neighbour distance, k-NN
precision indicator) with ``ddim_lib.metrics``.
"""
from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from statistics import NormalDist

import numpy as np
import torch
from torch import nn

from .sampler import sample
from .schedule import NoiseSchedule
from .toy import GaussianMixture, OracleEps

__all__ = ["GRID_FILE", "load_grid", "INTERP_FILE", "load_interpolation", "paired_difference", "flip", "RandomFeatureField", "DialledEps", "table1_laws", "bandwidth", "GRID_SAMPLERS",
           "grid_chunks", "grid_key", "grid_samples", "per_t_error", "kernel_mean", "kernel_self", "mmd2",
           "jackknife_se", "eta_trend", "detectable_effect", "fingerprint", "interpolation_latents", "plausibility", "seed_for"]


GRID_FILE = Path(__file__).resolve().parents[1] / "results" / "dial_grid.json"


def _load_shipped(path: str | Path, script: str, kind: str, keys: tuple[str, ...]) -> dict:
    """A shipped results file of ``scripts/<script>`` as a dict, with ``keys`` present; else one ValueError."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"no results file {path.name}: run scripts/{script}")
    data = json.loads(path.read_text())
    if not isinstance(data, dict) or any(k not in data for k in keys):
        raise ValueError(f"{path.name} is not {kind} (no {' or '.join(keys)})")
    return data


def load_grid(path: str | Path = GRID_FILE) -> dict:
    """The shipped controlled grid of ``scripts/dial_grid.py``: {"manifest", "cells", "unet_error"}."""
    return _load_shipped(path, "dial_grid.py", "a dial grid", ("cells", "manifest"))


INTERP_FILE = Path(__file__).resolve().parents[1] / "results" / "dial_interp.json"


def load_interpolation(path: str | Path = INTERP_FILE) -> dict:
    """The shipped interpolation scores of ``scripts/dial_interp.py``: {"manifest", "scores"}, where
    scores[kind][measure] is a list (lambdas) of lists (pairs), kind "slerp" or "lerp"."""
    return _load_shipped(path, "dial_interp.py", "an interpolation result", ("scores", "manifest"))


def paired_difference(cell_a: dict, cell_b: dict) -> tuple[float, float]:
    """value(a) - value(b) for two grid cells on the same latents and groups, and its jackknife s.e."""
    if len(cell_a["left_out"]) != len(cell_b["left_out"]) or cell_a["n"] != cell_b["n"]:
        raise ValueError("cells are not paired: different n or jackknife groups")
    diff = torch.tensor(cell_a["left_out"], dtype=torch.float64) - torch.tensor(cell_b["left_out"], dtype=torch.float64)
    return cell_a["value"] - cell_b["value"], jackknife_se(diff)


def flip(cells: dict, law: str, S: int, z_crit: float = 2.50) -> dict:
    """Where the ordering of eta = 0 and eta = 1 flips with c in a grid's cells, for one law and S.

    z(c) = (MMD^2(eta = 1) - MMD^2(eta = 0)) / s.e. (paired). Returns {"z": {c: z}, "wins": the c with
    z > z_crit (DDIM resolved better), "loses": the c with z < -z_crit, "c_win": max(wins) or None,
    "c_lose": min(loses) or None}.
    """
    z = {}
    for c in sorted({cell["c"] for cell in cells.values()}):
        a, b = cells.get(grid_key(law, c, S, "eta = 1.0")), cells.get(grid_key(law, c, S, "eta = 0.0"))
        if a is not None and b is not None:
            diff, se = paired_difference(a, b)
            z[c] = diff / se
    wins = [c for c in z if z[c] > z_crit]
    loses = [c for c in z if z[c] < -z_crit]
    return {"z": z, "wins": wins, "loses": loses, "c_win": max(wins, default=None),
            "c_lose": min(loses, default=None)}


# ---- the error field ---------------------------------------------------------------------------
class RandomFeatureField:
    """g(x) = sqrt(2 / J) W cos(Omega x + b): a smooth deterministic field R^d -> R^d.

    Omega (J, d) ~ N(0, 1 / length_scale^2), b ~ U(0, 2 pi), W (d, J) ~ N(0, 1), all from ``seed``.
    Its length scale is that of the noise (1 by default), so it varies smoothly over a mode.
    """

    def __init__(self, dim: int, n_features: int = 128, length_scale: float = 1.0, seed: int = 0):
        if dim < 1 or n_features < 1:
            raise ValueError(f"dim and n_features must be positive, got {dim} and {n_features}")
        if not length_scale > 0:
            raise ValueError(f"length_scale must be positive, got {length_scale}")
        g = torch.Generator().manual_seed(seed)
        self.dim, self.n_features = dim, n_features
        self.omega = torch.randn(n_features, dim, generator=g, dtype=torch.float64) / length_scale
        self.phase = 2 * math.pi * torch.rand(n_features, generator=g, dtype=torch.float64)
        self.weight = torch.randn(dim, n_features, generator=g, dtype=torch.float64)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """g(x) for x of shape (B, d), in float64."""
        feats = torch.cos(x.to(torch.float64) @ self.omega.T + self.phase)          # (B, J)
        return math.sqrt(2 / self.n_features) * feats @ self.weight.T

    def mean_sq(self, mixture: GaussianMixture) -> float:
        """E ||g(x)||^2 / d for x ~ mixture, exactly.

        cos a cos b = (cos(a - b) + cos(a + b)) / 2, and for x ~ N(mu, diag(s^2)),
        E cos(v.x + c) = cos(v.mu + c) exp(-sum_l v_l^2 s_l^2 / 2).
        """
        if mixture.dim != self.dim:
            raise ValueError(f"mixture has dimension {mixture.dim}, the field {self.dim}")
        total = torch.zeros((), dtype=torch.float64)
        gram = self.weight.T @ self.weight                                            # (J, J)
        for sign in (-1.0, 1.0):
            v = self.omega[:, None, :] + sign * self.omega[None]                     # (J, J, d)
            c = self.phase[:, None] + sign * self.phase[None]                         # (J, J)
            for mu, s, w in zip(mixture.means, mixture.stds, mixture.weights):
                m = torch.cos(v @ mu + c) * torch.exp(-0.5 * (v**2 * s**2).sum(-1))  # E cos(.), (J, J)
                total = total + 0.5 * w * (m * gram).sum()
        return (2 / self.n_features * total / self.dim).item()


class DialledEps(nn.Module):
    """eps_c(x, t) = eps*(x, t) + c g(x) / sqrt(E_{q(x_t)} ||g||^2 / d): per-t error exactly c^2 per dim.

    ``mixture``: the data law (its exact eps* is ``OracleEps``); ``field``: a ``RandomFeatureField``
    of the mixture's dimension (default: seed 0, 128 features, length scale 1). Usable as a model.
    """

    def __init__(self, mixture: GaussianMixture, schedule: NoiseSchedule, c: float,
                 field: RandomFeatureField | None = None):
        super().__init__()
        if not (isinstance(c, (int, float)) and math.isfinite(c) and c >= 0):
            raise ValueError(f"c must be a finite non-negative number, got {c!r}")
        self.oracle = OracleEps(mixture, schedule)
        self.mixture, self.schedule, self.c = mixture, schedule, float(c)
        self.field = RandomFeatureField(mixture.dim) if field is None else field
        if self.field.dim != mixture.dim:
            raise ValueError(f"field has dimension {self.field.dim}, the mixture {mixture.dim}")
        self._scale: dict[int, float] = {}

    def scale(self, t: int) -> float:
        """1 / sqrt(E ||g(x_t)||^2 / d) under q(x_t), computed once per t."""
        if t not in self._scale:
            a = self.schedule.alpha_bars[t].item()
            self._scale[t] = 1 / math.sqrt(self.field.mean_sq(self.mixture.noised(a)))
        return self._scale[t]

    def error(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """c e(x, t), the added error, float64 of shape (B, d)."""
        flat = x.reshape(x.shape[0], -1).to(torch.float64)
        steps, index = torch.unique(t.cpu(), return_inverse=True)
        scales = torch.tensor([self.scale(int(s)) for s in steps.tolist()], dtype=torch.float64)[index]
        return self.c * scales[:, None] * self.field(flat)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """eps*(x, t) + c e(x, t), in x's dtype and shape."""
        eps = self.oracle(x, t).reshape(x.shape[0], -1).to(torch.float64)
        if self.c:
            eps = eps + self.error(x, t)
        return eps.to(x.dtype).reshape(x.shape)


@torch.no_grad()
def per_t_error(model, reference, law: GaussianMixture, schedule: NoiseSchedule, ts, n: int,
                generator: torch.Generator | None = None, shape=None, batch: int = 128,
                model_dtype: torch.dtype = torch.float32):
    """E ||model(x_t, t) - reference(x_t, t)||^2 / d under x_t ~ q(x_t) of ``law``, with its s.e.

    Returns {t: (mean, standard error)} for each t in ``ts``, from n draws per t (x_0 ~ law, then
    the forward process). ``shape``: the model's input shape per sample (default (d,));
    ``model_dtype``: the dtype ``model`` is fed (the reference always gets float64).
    """
    if n < 2:
        raise ValueError(f"n must be at least 2, got {n}")
    d = law.dim
    shape = (d,) if shape is None else tuple(shape)
    out = {}
    for t in ts:
        a = schedule.alpha_bars[t].item()
        errs = []
        for start in range(0, n, batch):
            m = min(batch, n - start)
            x0 = law.sample(m, generator)
            x_t = math.sqrt(a) * x0 + math.sqrt(1 - a) * torch.randn(m, d, generator=generator, dtype=torch.float64)
            tt = torch.full((m,), t, dtype=torch.long)
            got = model(x_t.to(model_dtype).reshape(m, *shape), tt).reshape(m, d).to(torch.float64)
            ref = reference(x_t.reshape(m, *shape), tt).reshape(m, d).to(torch.float64)
            errs.append(((got - ref)**2).mean(1))
        errs = torch.cat(errs)
        out[int(t)] = (errs.mean().item(), errs.std().item() / math.sqrt(n))
    return out


# ---- the laws of chapter 6 ---------------------------------------------------------------------
def table1_laws() -> dict[str, GaussianMixture]:
    """Chapter 6's two exact laws: "ring" (8 components on a circle of radius 2, std 0.1, d = 2) and
    "cube" (4 corners of [-0.8, 0.8]^16 drawn with seed 6, weights 0.4/0.3/0.2/0.1, std 0.1), in float64."""
    gen = torch.Generator().manual_seed(6)
    # The corners are +-0.8 rounded to float32 (0.800000011920929), as the shipped grid was computed; an
    # explicit value keeps the law the same whatever torch's default dtype is.
    corner = float(torch.tensor(0.8, dtype=torch.float32))
    corners = torch.where(torch.rand(4, 16, generator=gen, dtype=torch.float64) < 0.5, -corner, corner).to(torch.float64)
    return {"ring": GaussianMixture.ring(k=8, radius=2.0, std=0.1),
            "cube": GaussianMixture(corners, 0.1, [0.4, 0.3, 0.2, 0.1])}


def bandwidth(mixture: GaussianMixture, component_std: float = 0.1) -> float:
    """The MMD bandwidth ell = s sqrt(2 d): the typical distance between two draws of one component."""
    return component_std * math.sqrt(2 * mixture.dim)


GRID_SAMPLERS = {"eta = 0.0": dict(eta=0.0), "eta = 0.2": dict(eta=0.2), "eta = 0.5": dict(eta=0.5),
                 "eta = 1.0": dict(eta=1.0), "sigma_hat": dict(variance="sigma_hat")}


def grid_chunks(S: int) -> tuple[int, int]:
    """(chunk size, number of chunks) of a grid cell with S steps; the jackknife groups are the chunks."""
    return (250, 8) if S == 1000 else (1000, 16)


def grid_key(law: str, c: float, S: int, sampler: str) -> str:
    """The name of a grid cell in results/dial_grid.json, e.g. "ring|c=0.1|S=10|eta = 0.0"."""
    return f"{law}|c={c:g}|S={S}|{sampler}"


@torch.no_grad()
def grid_samples(model, law: str, mixture: GaussianMixture, schedule: NoiseSchedule, S: int, sampler: str,
                 chunks: int | None = None) -> torch.Tensor:
    """The samples of one grid cell (scripts/dial_grid.py), chunk by chunk, float64 (n, d).

    Chunk k starts from x_T drawn with seed ``seed_for("xT", law, S, k)`` and uses sampler noise from
    ``seed_for("noise", law, S, k)``: the same for every c and sampler (paired), and the first chunks
    are the same whatever ``chunks`` is (default: all of ``grid_chunks(S)``).
    """
    if sampler not in GRID_SAMPLERS:
        raise ValueError(f"sampler must be one of {', '.join(GRID_SAMPLERS)}, got {sampler!r}")
    size, n_chunks = grid_chunks(S)
    out = []
    for k in range(n_chunks if chunks is None else chunks):
        g_x = torch.Generator().manual_seed(seed_for("xT", law, S, k))
        g_noise = torch.Generator().manual_seed(seed_for("noise", law, S, k))
        x_T = torch.randn(size, mixture.dim, generator=g_x, dtype=torch.float64)
        out.append(sample(model, x_T, schedule, S, generator=g_noise, **GRID_SAMPLERS[sampler]))
    return torch.cat(out)


# ---- the divergence ----------------------------------------------------------------------------
def kernel_mean(mixture: GaussianMixture, x: torch.Tensor, ell: float) -> torch.Tensor:
    """E_{y ~ p} k(x, y) for each row of x (n, d), k(x, y) = exp(-||x - y||^2 / (2 ell^2)): Gaussian integrals."""
    v = ell**2 + mixture.stds**2                                              # (K, d)
    x = x.to(torch.float64)
    log_k = (0.5 * torch.log(ell**2 / v) - (x[:, None, :] - mixture.means)**2 / (2 * v)).sum(-1)
    return (mixture.weights * log_k.exp()).sum(1)


def kernel_self(mixture: GaussianMixture, ell: float) -> float:
    """E_{y, y' ~ p} k(y, y'), exactly."""
    v = ell**2 + mixture.stds[:, None, :]**2 + mixture.stds[None]**2          # (K, K, d)
    log_k = (0.5 * torch.log(ell**2 / v) - (mixture.means[:, None] - mixture.means[None])**2 / (2 * v)).sum(-1)
    return (mixture.weights[:, None] * mixture.weights[None] * log_k.exp()).sum().item()


def mmd2(x: torch.Tensor, mixture: GaussianMixture, ell: float, groups: int = 10):
    """Unbiased MMD^2(samples, p) = E k(x, x') - 2 E k(x, y) + E k(y, y'), and jackknife replicates.

    Only E k(x, x') is estimated (the U-statistic over the n rows of x); the other terms are exact.
    Returns (estimate, left_out (groups,), within (groups,)): the delete-a-group replicates and each
    group's own estimate. Rows beyond a multiple of ``groups`` are dropped. Computed in blocks.
    """
    if not ell > 0:
        raise ValueError(f"ell must be positive, got {ell}")
    if groups < 2 or x.shape[0] < 2 * groups:
        raise ValueError(f"need groups >= 2 and at least 2 rows per group, got {x.shape[0]} rows, {groups} groups")
    m = x.shape[0] // groups
    x = x[: m * groups].reshape(m * groups, -1).to(torch.float64)
    parts = x.reshape(groups, m, -1)
    blocks = torch.zeros(groups, groups, dtype=torch.float64)
    for i in range(groups):
        for j in range(i, groups):
            k = torch.exp(-torch.cdist(parts[i], parts[j])**2 / (2 * ell**2))
            s = k.sum() - (k.diagonal().sum() if i == j else 0)
            blocks[i, j] = blocks[j, i] = s
    g = kernel_mean(mixture, x, ell).reshape(groups, m).sum(1)
    c = kernel_self(mixture, ell)

    def estimate(k_sum, g_sum, size):
        return k_sum / (size * (size - 1)) - 2 * g_sum / size + c

    full = estimate(blocks.sum(), g.sum(), m * groups)
    left_out = torch.stack([estimate(blocks.sum() - blocks[i].sum() - blocks[:, i].sum() + blocks[i, i],
                                     g.sum() - g[i], m * (groups - 1)) for i in range(groups)])
    within = torch.stack([estimate(blocks[i, i], g[i], m) for i in range(groups)])
    return full.item(), left_out, within


def jackknife_se(left_out) -> float:
    """Delete-a-group jackknife standard error from the replicates (G,)."""
    left_out = torch.as_tensor(left_out, dtype=torch.float64)
    G = len(left_out)
    if G < 2:
        raise ValueError("need at least 2 replicates")
    return math.sqrt((G - 1) / G * ((left_out - left_out.mean())**2).sum().item())


def eta_trend(etas, values, left_out):
    """Least-squares slope of the divergence on eta, with its jackknife s.e.

    ``values`` (k,) at ``etas`` (k,) and ``left_out`` (k, G) their paired replicates (same groups).
    Returns (slope, se).
    """
    etas = np.asarray(etas, dtype=np.float64)
    values, left_out = np.asarray(values, np.float64), np.asarray(left_out, np.float64)
    if etas.ndim != 1 or len(etas) < 2 or values.shape != etas.shape or left_out.shape[0] != len(etas):
        raise ValueError("etas, values and left_out must describe the same k >= 2 samplers")
    w = (etas - etas.mean()) / ((etas - etas.mean())**2).sum()
    return float(w @ values), jackknife_se(torch.as_tensor(w @ left_out))


def detectable_effect(se: float, alpha: float = 0.05, power: float = 0.8) -> float:
    """The true effect a one-sided z-test at level ``alpha`` detects with probability ``power``:
    (z_{1 - alpha} + z_power) se (2.49 se for 0.05 and 0.8)."""
    if not (0 < alpha < 1 and 0 < power < 1) or not se >= 0:
        raise ValueError(f"need 0 < alpha, power < 1 and se >= 0, got {alpha}, {power}, {se}")
    z = NormalDist()
    return (z.inv_cdf(1 - alpha) + z.inv_cdf(power)) * se


# ---- bookkeeping --------------------------------------------------------------------------------
def fingerprint(x: torch.Tensor, k: int = 64) -> list[float]:
    """Seven numbers that identify the first k samples of x (B, ...) up to round-off: projections of
    their mean on 4 fixed unit directions, their mean square, and the first and k-th sample on one."""
    x = x[:k].reshape(min(k, x.shape[0]), -1).to(torch.float64)
    d = x.shape[1]
    u = torch.randn(4, d, generator=torch.Generator().manual_seed(12345), dtype=torch.float64)
    u = u / u.norm(dim=1, keepdim=True)
    return ((x.mean(0) @ u.T).tolist() + [(x**2).sum(1).mean().item(), (x[0] @ u[0]).item(), (x[-1] @ u[0]).item()])


def seed_for(*parts) -> int:
    """A stable 63-bit seed from any printable parts (the same on every machine and Python)."""
    text = "/".join(str(p) for p in parts)
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") >> 1


def interpolation_latents(pairs: int, lambdas, seed: int = 2, dim: int = 64) -> dict[str, torch.Tensor]:
    """Latent paths for chapter 10's interpolation: z0, z1 ~ N(0, I_dim) (float64, ``seed``), and
    {"slerp": (L, pairs, dim), "lerp": (L, pairs, dim)} at the L values of ``lambdas``."""
    from .sampler import slerp

    if pairs < 1:
        raise ValueError(f"pairs must be positive, got {pairs}")
    z0, z1 = torch.randn(2, pairs, dim, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    lams = torch.as_tensor(lambdas, dtype=torch.float64)
    return {"slerp": torch.stack([slerp(z0, z1, lam) for lam in lams]),
            "lerp": torch.stack([(1 - lam) * z0 + lam * z1 for lam in lams])}


def plausibility(images: torch.Tensor, real: torch.Tensor, features=None, k: int = 3) -> dict[str, np.ndarray]:
    """Per-image plausibility of digit images (N, 1, 8, 8) against real digits (M, 1, 8, 8), clamped to [-1, 1]:

    * "confidence": the shipped digits classifier's largest class probability;
    * "nn": RMS pixel distance to the nearest real digit (``metrics.nearest_neighbour_distances``);
    * "inside": inside the k-NN manifold of the real digits' classifier features (the per-sample
      indicator whose mean is Kynkaanniemi et al.'s precision; ``metrics.knn_radii``).

    ``features``: a ``DigitsFeatures`` (loaded if None). Returns float64 arrays (N,).
    """
    from .evaluate import DigitsFeatures
    from .metrics import knn_radii, nearest_neighbour_distances

    if images.ndim != 4 or images.shape[1:] != (1, 8, 8) or real.ndim != 4 or real.shape[1:] != (1, 8, 8):
        raise ValueError(f"images and real must have shape (N, 1, 8, 8), got {tuple(images.shape)} and {tuple(real.shape)}")
    features = DigitsFeatures() if features is None else features
    x = images.detach().to(torch.float32).clamp(-1, 1)
    with torch.no_grad():
        probs = torch.softmax(features.classifier(x.reshape(len(x), 64)), dim=1)
    real_feats = features(real)
    inside = (torch.cdist(torch.as_tensor(features(x)), torch.as_tensor(real_feats))
              <= torch.as_tensor(knn_radii(real_feats, k))[None]).any(1)
    return {"confidence": probs.max(1).values.double().numpy(),
            "nn": nearest_neighbour_distances(x.double(), real.double()),
            "inside": inside.double().numpy()}
