"""Training data, all local: nothing is downloaded at run time.

- "digits": scikit-learn's 1797 8x8 digits (shipped inside scikit-learn), 0..16 -> [-1, 1], (N, 1, 8, 8).
- "cifar10": the official python-pickle batches ``data_batch_1..5`` (or ``test_batch``) in
  ``cifar-10-batches-py/`` under ``root``, (N, 3, 32, 32) in [-1, 1].
- "celeba" / "folder": every .png/.jpg/.jpeg under ``root`` (recursively, sorted), centre-cropped
  to a square and resized to 64x64 with Pillow, (N, 3, 64, 64) in [-1, 1]. For the aligned CelebA
  images (178x218) the crop is the official DDIM code's 128x128 box around the face.
- a 2-D toy name ("swiss_roll", ...): ``ddim_lib.toy.toy2d`` points, (N, 2).
"""
from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import torch

from .toy import TOY2D_NAMES, toy2d

__all__ = ["load_dataset", "DATASETS", "IMAGE_SIZE"]

DATASETS = ("digits", "cifar10", "cifar10-test", "celeba", "folder", *TOY2D_NAMES)
IMAGE_SIZE = 64                   # side of the images read from a folder (CelebA 64x64, as in DDIM)
TOY_SIZE = 50_000                 # points in a 2-D toy training set when n is not given
CELEBA_ALIGNED = (178, 218)       # (width, height) of img_align_celeba images
CELEBA_BOX = (25, 57, 153, 185)   # (left, top, right, bottom): DDIM's crop centred at (89, 121)
CIFAR_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CELEBA_URL = "https://mmlab.ie.cuhk.edu.hk/projects/CelebA.html (img_align_celeba)"


def load_dataset(name: str, root: str | Path | None = None, n: int | None = None,
                 generator: torch.Generator | None = None) -> torch.Tensor:
    """The data set ``name`` as a float32 tensor (N, ...); images in [-1, 1].

    n: keep n samples (a random subset drawn with ``generator`` if given, else the first n; for
    2-D toys the number of points generated, default 50,000).
    """
    if name in TOY2D_NAMES:
        return toy2d(name, TOY_SIZE if n is None else _check_n(n), generator=generator)
    if name == "digits":
        data = _digits()
    elif name in ("cifar10", "cifar10-test"):
        data = _cifar10(root, test=name == "cifar10-test")
    elif name in ("celeba", "folder"):
        data = _image_folder(root, celeba=name == "celeba")
    else:
        raise ValueError(f"unknown data set {name!r}; known: {', '.join(DATASETS)}")
    return _subset(data, n, generator)


def _check_n(n) -> int:
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}")
    return n


def _subset(data: torch.Tensor, n: int | None, generator: torch.Generator | None) -> torch.Tensor:
    if n is None:
        return data
    n = _check_n(n)
    if n > len(data):
        raise ValueError(f"n = {n} exceeds the {len(data)} samples available")
    if generator is None:
        return data[:n].clone()
    return data[torch.randperm(len(data), generator=generator)[:n]]


def _to_unit_range(pixels: np.ndarray, max_value: float) -> torch.Tensor:
    """Map 0..max_value to [-1, 1] as float32."""
    return torch.from_numpy(pixels.astype(np.float32) / np.float32(max_value / 2) - 1.0)


def _digits() -> torch.Tensor:
    from sklearn.datasets import load_digits

    images = load_digits().images                                 # (1797, 8, 8), values 0..16
    return _to_unit_range(images, 16.0)[:, None]                   # (1797, 1, 8, 8)


def _require_root(root, name: str, what: str, where: str) -> Path:
    if root is None:
        raise ValueError(f"the {name} data set needs a data root holding {what}; get it from {where}")
    path = Path(root).expanduser()
    if not path.exists():
        raise ValueError(f"data root {path} does not exist: it should hold {what} (from {where})")
    return path


class _CifarUnpickler(pickle.Unpickler):
    """Unpickles the CIFAR-10 batch format only: dicts, lists, bytes, str and numbers, plus the numpy
    array reconstruction the batches use. Any other global (``os.system``, ``builtins.eval``, ...) is
    refused, so a planted batch file cannot execute code."""

    _ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
                ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
                ("numpy._core.multiarray", "scalar"), ("numpy.core.numeric", "_frombuffer"),
                ("numpy._core.numeric", "_frombuffer"), ("_codecs", "encode")}   # bytes under protocol 2

    def find_class(self, module: str, name: str):
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refused to load {module}.{name}: a CIFAR-10 batch holds only "
                                     "dicts, lists, bytes and numpy arrays")


def _load_cifar_batch(file: Path) -> np.ndarray:
    """The (N, 3072) uint8 pixels of one CIFAR-10 python batch, read with the restricted unpickler."""
    try:
        with open(file, "rb") as f:
            batch = _CifarUnpickler(f, encoding="bytes").load()
    except Exception as exc:  # a damaged, foreign or malicious file: say which one
        raise ValueError(f"{file} is not a CIFAR-10 python batch ({type(exc).__name__}: "
                         f"{' '.join(str(exc).split())[:200]})") from None
    if not isinstance(batch, dict) or b"data" not in batch:
        raise ValueError(f"{file} is not a CIFAR-10 python batch (expected a dict with a b'data' entry)")
    data = batch[b"data"]
    if not isinstance(data, (np.ndarray, list)):
        raise ValueError(f"{file}: b'data' must be an array, got {type(data).__name__}")
    try:
        pixels = np.asarray(data)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{file}: b'data' is not an array ({exc})") from None
    if pixels.dtype != np.uint8 and not (np.issubdtype(pixels.dtype, np.integer) and pixels.size
                                         and 0 <= pixels.min() and pixels.max() <= 255):
        raise ValueError(f"{file}: expected uint8 pixels, got {pixels.dtype}")
    return pixels.astype(np.uint8)


def _cifar10(root, test: bool) -> torch.Tensor:
    """Read the official CIFAR-10 python batches (dicts pickled with Python 2; hence encoding="bytes").

    Pickle is the data set's official format; the batches are read with a restricted unpickler that
    accepts that format only (dicts, lists, bytes, numpy arrays) and refuses anything else.
    """
    names = ["test_batch"] if test else [f"data_batch_{i}" for i in range(1, 6)]
    what = f"cifar-10-batches-py/{{{','.join(names)}}}"
    path = _require_root(root, "cifar10", what, CIFAR_URL + " (unpack it under the root)")
    folder = path / "cifar-10-batches-py" if (path / "cifar-10-batches-py").is_dir() else path
    missing = [b for b in names if not (folder / b).is_file()]
    if missing:
        raise ValueError(f"CIFAR-10 batch file(s) {', '.join(missing)} missing in {folder}; "
                         f"download and unpack {CIFAR_URL}")
    arrays = []
    for b in names:
        pixels = _load_cifar_batch(folder / b)
        if pixels.ndim != 2 or pixels.shape[1] != 3 * 32 * 32:
            raise ValueError(f"{folder / b}: expected data of shape (N, 3072), got {pixels.shape}")
        arrays.append(pixels.reshape(-1, 3, 32, 32))
    return _to_unit_range(np.concatenate(arrays), 255.0)


def _image_folder(root, celeba: bool) -> torch.Tensor:
    from PIL import Image

    name = "celeba" if celeba else "folder"
    where = CELEBA_URL if celeba else "any folder of images"
    path = _require_root(root, name, "image files (.png, .jpg, .jpeg)", where)
    files = sorted(p for p in path.rglob("*") if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
    if not files:
        raise ValueError(f"no .png/.jpg/.jpeg images found under {path} (for {name}: {where})")
    out = np.empty((len(files), IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
    for i, file in enumerate(files):
        try:
            with Image.open(file) as img:
                img = img.convert("RGB")
                box = CELEBA_BOX if celeba and img.size == CELEBA_ALIGNED else _centre_square(*img.size)
                out[i] = np.asarray(img.crop(box).resize((IMAGE_SIZE, IMAGE_SIZE), Image.BICUBIC))
        except Image.DecompressionBombError as exc:
            raise ValueError(f"refused image {file}: {' '.join(str(exc).split())[:200]} (a decompression "
                             "bomb? PIL's limit is Image.MAX_IMAGE_PIXELS)") from None
        except (OSError, SyntaxError, ValueError) as exc:   # PIL reports some damaged files as SyntaxError
            raise ValueError(f"cannot read image {file}: {' '.join(str(exc).split())[:200]}") from None
    return _to_unit_range(out.transpose(0, 3, 1, 2), 255.0)       # (N, 3, 64, 64)


def _centre_square(width: int, height: int) -> tuple[int, int, int, int]:
    """The largest centred square (left, top, right, bottom)."""
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    return left, top, left + side, top + side
