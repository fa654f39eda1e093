"""The ``ddim`` command's files: output paths, .npy arrays written atomically, PNG grids and scatter plots."""
from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import torch

def out_path(out: str, suffix: str) -> Path:
    path = Path(out)
    if path.suffix.lower() != suffix:
        raise ValueError(f"--out must name a {suffix} file, got {out}")
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def save_npy(path: Path, array: torch.Tensor) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        np.save(f, array.numpy())
    os.replace(tmp, path)


def load_npy(path: str, name: str) -> torch.Tensor:
    if not Path(path).is_file():
        raise FileNotFoundError(f"no {name} file at {path}")
    try:
        array = np.load(path, allow_pickle=False)
    except (ValueError, OSError) as err:
        raise ValueError(f"{path} is not a readable .npy array ({str(err).splitlines()[0]})") from None
    return torch.from_numpy(np.asarray(array, dtype=np.float32))


def check_shape(x: torch.Tensor, shape: tuple, what: str) -> torch.Tensor:
    if tuple(x.shape[1:]) != tuple(shape):
        raise ValueError(f"{what} must have shape (N, {', '.join(map(str, shape))}), got {tuple(x.shape)}")
    return x


# ---- pictures -----------------------------------------------------------------------------------
def image_grid(x: torch.Tensor, ncol: int | None = None, min_cell: int = 32) -> np.ndarray:
    """(N, C, H, W) in [-1, 1] -> uint8 grid (rows, cols[, 3]), cells upscaled to >= min_cell pixels."""
    n, c, h, w = x.shape
    ncol = ncol or math.ceil(math.sqrt(n))
    nrow = math.ceil(n / ncol)
    scale = max(1, min_cell // max(h, w))
    cells = ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).numpy()
    cells = cells.repeat(scale, axis=2).repeat(scale, axis=3)
    h, w, pad = h * scale, w * scale, 2
    grid = np.full((c, nrow * (h + pad) + pad, ncol * (w + pad) + pad), 255, dtype=np.uint8)
    for i in range(n):
        r, col = divmod(i, ncol)
        grid[:, pad + r * (h + pad):pad + r * (h + pad) + h, pad + col * (w + pad):pad + col * (w + pad) + w] = cells[i]
    return grid[0] if c == 1 else grid.transpose(1, 2, 0)


def save_png(path: Path, x: torch.Tensor, ncol: int | None = None, title: str = "",
              reference: torch.Tensor | None = None, paths: bool = False) -> None:
    """Images as a grid; 2-D points as a scatter plot (over ``reference`` points in grey)."""
    tmp = path.with_name(f".{path.name}.tmp.png")
    if x.ndim == 4:
        from PIL import Image
        Image.fromarray(image_grid(x, ncol)).save(tmp)
    elif x.ndim in (2, 3) and x.shape[-1] == 2:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        fig, ax = plt.subplots(figsize=(5, 5))
        if reference is not None:
            ax.scatter(*reference.T, s=2, c="0.8", label="data")
        if paths and x.ndim == 3:            # interpolation rows: (rows, frames, 2)
            for row in x:
                ax.plot(*row.T, "-o", ms=3)
        else:
            pts = x.reshape(-1, 2)
            ax.scatter(*pts.T, s=3, c="C0", label="samples")
        ax.set_aspect("equal")
        ax.set_title(title, fontsize=9)
        fig.savefig(tmp, dpi=100, bbox_inches="tight")
        plt.close(fig)
    else:
        raise ValueError(f"cannot draw samples of shape {tuple(x.shape)} (images or 2-D points only)")
    os.replace(tmp, path)
