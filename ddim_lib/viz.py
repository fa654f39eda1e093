"""Plain matplotlib helpers for the chapters and their widget explorers (no notebook state).

Images are tensors or arrays (N, 1, H, W) or (N, H, W) in [-1, 1]; 2-D points are (N, 2). Every
``plot_*`` function draws on the ``ax`` it is given (or a new figure) and returns the Axes, so a
widget callback and a static cell can share one function.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import matplotlib.pyplot as plt
import numpy as np
import torch

__all__ = ["image_grid", "moving_average", "eps_field", "plot_images", "plot_points",
           "plot_eps_field", "plot_loss", "plot_sample_grid", "plot_consistency"]

Model = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


# ---- arrays ------------------------------------------------------------------------------------
def _images(images) -> np.ndarray:
    """(N, H, W) float64 from (N, 1, H, W) or (N, H, W), tensor or array."""
    if torch.is_tensor(images):
        images = images.detach().cpu().double().numpy()
    images = np.asarray(images, dtype=np.float64)
    if images.ndim == 4 and images.shape[1] == 1:
        images = images[:, 0]
    if images.ndim != 3 or images.shape[0] < 1:
        raise ValueError(f"images must have shape (N, 1, H, W) or (N, H, W) with N >= 1, got {images.shape}")
    return images


def image_grid(images, ncol: int | None = None, pad: int = 1, pad_value: float = 1.0) -> np.ndarray:
    """Tile N grey images in [-1, 1] into one array in [0, 1]: image k at row k // ncol, column k % ncol.

    ``ncol`` defaults to ceil(sqrt(N)); tiles are separated by ``pad`` pixels of ``pad_value``;
    values outside [-1, 1] are clipped. Returns (rows * (H + pad) - pad, ncol * (W + pad) - pad).
    """
    images = _images(images)
    n, h, w = images.shape
    ncol = int(np.ceil(np.sqrt(n))) if ncol is None else ncol
    if ncol < 1 or pad < 0:
        raise ValueError(f"ncol must be positive and pad non-negative, got {ncol}, {pad}")
    nrow = -(-n // ncol)
    grid = np.full((nrow * (h + pad) - pad, ncol * (w + pad) - pad), pad_value, dtype=np.float64)
    for k, img in enumerate(np.clip((images + 1) / 2, 0, 1)):
        r, c = divmod(k, ncol)
        grid[r * (h + pad):r * (h + pad) + h, c * (w + pad):c * (w + pad) + w] = img
    return grid


def moving_average(values: Sequence[float], window: int) -> np.ndarray:
    """Mean of each run of ``window`` consecutive values: length len(values) - window + 1."""
    values = np.asarray(values, dtype=np.float64)
    if values.ndim != 1 or not 1 <= window <= len(values):
        raise ValueError(f"need a 1-D sequence of at least window = {window} values, got shape {values.shape}")
    csum = np.concatenate([[0.0], np.cumsum(values)])
    return (csum[window:] - csum[:-window]) / window


@torch.no_grad()
def eps_field(model: Model, t: int, lim: float = 3.0, n: int = 21, dtype=torch.float32):
    """The 2-D field eps_theta(x, t) on an n x n grid over [-lim, lim]^2.

    Returns (X, Y, U, V), each (n, n): grid coordinates and the two components of eps at (X, Y).
    """
    if n < 2 or lim <= 0:
        raise ValueError(f"need n >= 2 grid points and lim > 0, got n = {n}, lim = {lim}")
    axis = torch.linspace(-lim, lim, n, dtype=dtype)
    X, Y = torch.meshgrid(axis, axis, indexing="xy")
    pts = torch.stack([X.reshape(-1), Y.reshape(-1)], 1)                 # (n*n, 2)
    eps = model(pts, torch.full((n * n,), int(t), dtype=torch.long)).double()
    return X.double().numpy(), Y.double().numpy(), eps[:, 0].reshape(n, n).numpy(), eps[:, 1].reshape(n, n).numpy()


# ---- pictures ----------------------------------------------------------------------------------
def _axes(ax, figsize=(4, 4)):
    if ax is None:
        _, ax = plt.subplots(figsize=figsize)
    return ax


def plot_images(images, ncol: int | None = None, ax=None, title: str | None = None):
    """One grid of grey images in [-1, 1] (black = -1, white = 1), no ticks."""
    ax = _axes(ax)
    ax.imshow(image_grid(images, ncol, pad_value=1.0), cmap="gray", vmin=0, vmax=1,
              interpolation="nearest")
    ax.set_xticks([]), ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=9)
    return ax


def plot_points(points, ax=None, lim: float = 3.0, title: str | None = None, **scatter_kw):
    """A scatter of 2-D points (N, 2) in a square window [-lim, lim]^2."""
    pts = points.detach().cpu().double().numpy() if torch.is_tensor(points) else np.asarray(points, float)
    if pts.ndim != 2 or pts.shape[1] != 2:
        raise ValueError(f"points must have shape (N, 2), got {pts.shape}")
    ax = _axes(ax)
    ax.scatter(pts[:, 0], pts[:, 1], **{"s": 2, "alpha": 0.5, **scatter_kw})
    ax.set_xlim(-lim, lim), ax.set_ylim(-lim, lim), ax.set_aspect("equal")
    if title:
        ax.set_title(title, fontsize=9)
    return ax


def plot_eps_field(model: Model, t: int, ax=None, lim: float = 3.0, n: int = 21, data=None):
    """Quiver of -eps_theta(x, t) (the direction that removes noise, along the score) over data points."""
    X, Y, U, V = eps_field(model, t, lim, n)
    ax = _axes(ax)
    if data is not None:
        plot_points(data, ax=ax, lim=lim, color="0.7")
    ax.quiver(X, Y, -U, -V, angles="xy", color="C3", width=0.004)
    ax.set_xlim(-lim, lim), ax.set_ylim(-lim, lim), ax.set_aspect("equal")
    ax.set_title(f"$-\\epsilon_\\theta(x, t)$ at code t = {t}", fontsize=9)
    return ax


def plot_loss(losses: Sequence[float], steps: Sequence[int] | None = None, window: int = 1, ax=None):
    """A training loss curve (log scale), optionally smoothed by a moving average of ``window`` points."""
    losses = np.asarray(losses, dtype=np.float64)
    steps = np.arange(1, len(losses) + 1) if steps is None else np.asarray(steps)
    ax = _axes(ax, figsize=(5, 3))
    ax.plot(steps, losses, color="0.75", lw=0.8, label="logged")
    if window > 1:
        ax.plot(steps[window - 1:], moving_average(losses, window), color="C0", label=f"mean of {window}")
    ax.set_yscale("log"), ax.set_xlabel("training step"), ax.set_ylabel("$L_{simple}$")
    ax.legend(fontsize=8)
    return ax


def plot_sample_grid(model: Model, schedule, shape: tuple[int, ...], S: int, eta: float, seed: int,
                     n: int = 16, variance: str = "eta", ax=None):
    """Sample n images with S steps and ``eta`` from the x_T drawn with ``seed``; draw their grid."""
    from .sampler import sample

    x_T = torch.randn((n, *shape), generator=torch.Generator().manual_seed(seed))
    x0 = sample(model, x_T, schedule, S, eta=eta, variance=variance,
                generator=torch.Generator().manual_seed(seed + 1))
    label = "$\\hat\\sigma$" if variance == "sigma_hat" else f"$\\eta$ = {eta:g}"
    return plot_images(x0, ax=ax, title=f"S = {S}, {label}, seed {seed}")


def plot_consistency(model: Model, schedule, x_T: torch.Tensor, S_values: Sequence[int], eta: float,
                     seed: int = 0, axes=None):
    """Decode the same x_T (n, ...) with each S in ``S_values``: one row of n images per S."""
    from .sampler import sample

    if axes is None:
        _, axes = plt.subplots(len(S_values), 1, figsize=(0.6 * x_T.shape[0] + 1, 0.75 * len(S_values) + 0.3))
    axes = np.atleast_1d(axes)
    if len(axes) != len(S_values):
        raise ValueError(f"need one axis per S value: {len(S_values)} values, {len(axes)} axes")
    for ax, S in zip(axes, S_values):
        x0 = sample(model, x_T, schedule, S, eta=eta, generator=torch.Generator().manual_seed(seed))
        plot_images(x0, ncol=x_T.shape[0], ax=ax)
        ax.set_ylabel(f"S = {S}", rotation=0, ha="right", va="center", fontsize=8)
    axes[0].set_title(f"same $x_T$, $\\eta$ = {eta:g}", fontsize=9)
    return axes
