"""The ``ddim`` command's files: output paths, .npy arrays written atomically, PNG grids and scatter plots."""
from __future__ import annotations

import math
import os
import tempfile
from pathlib import Path

import numpy as np
import torch

def out_path(out: str, suffix: str) -> Path:
    path = Path(out)
    if path.suffix.lower() != suffix:
        raise ValueError(f"--out must name a {suffix} file, got {out}")
    if path.is_dir():
        raise ValueError(f"--out {out} is a directory; name a {suffix} file")
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def write_atomic(path: Path, write, suffix: str = ".tmp") -> None:
    """Write ``path`` through ``write(temporary path)``: a ``mkstemp`` file in the same folder, moved
    into place with ``os.replace``. Never writes through a symlink (a symlink at ``path`` is replaced
    by the file, its target left untouched)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    os.close(fd)
    try:
        os.chmod(tmp, 0o666 & ~_umask())      # mkstemp's 0600 would make every output private
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def save_npy(path: Path, array: torch.Tensor) -> None:
    def write(tmp):
        with open(tmp, "wb") as f:
            np.save(f, array.numpy())
    write_atomic(path, write)


def write_text(path: Path, text: str) -> None:
    """``text`` into ``path`` atomically, never through a symlink."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, lambda tmp: Path(tmp).write_text(text))


NPY_MAGIC = b"\x93NUMPY"


def load_npy(path: str, name: str) -> torch.Tensor:
    """A real-valued array (N, ...) from a .npy file as float32; one-line ValueError for anything else."""
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"no {name} file at {path}")
    with open(file, "rb") as f:
        head = f.read(len(NPY_MAGIC))
    if head != NPY_MAGIC:
        raise ValueError(f"--{name} {path} is not a .npy file (no NumPy header: a text or other file?); "
                         "write it with numpy.save")
    try:
        array = np.load(file, allow_pickle=False)
    except (ValueError, OSError, EOFError) as err:
        raise ValueError(f"--{name} {path} is not a readable .npy array ({str(err).splitlines()[0]})") from None
    if not np.issubdtype(array.dtype, np.floating):
        raise ValueError(f"--{name} {path} holds {array.dtype} values; expected floating-point data "
                         "(images scaled to [-1, 1], points or latents as floats)")
    if array.ndim < 2 or array.shape[0] == 0:
        raise ValueError(f"--{name} {path} must hold a batch (N, ...) with N >= 1, got shape {array.shape}")
    x = torch.from_numpy(np.asarray(array, dtype=np.float32))
    if not torch.isfinite(x).all():
        bad = int((~torch.isfinite(x)).sum())
        raise ValueError(f"--{name} {path} holds {bad} non-finite value(s) (NaN or inf)")
    return x


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
    write_atomic(path, lambda tmp: _draw(tmp, x, ncol, title, reference, paths), suffix=".png")


def _draw(tmp: str, x: torch.Tensor, ncol, title, reference, paths) -> None:
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
