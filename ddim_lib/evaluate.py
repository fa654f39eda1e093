"""Sample quality: the Frechet distance between feature sets, and the features to compute it on.

FD(a, b) = ||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^(1/2)) between Gaussians fitted to two
feature sets (N, k) (Heusel et al. 2017; "FID" when the features are Inception's). Features here:
``pixel_features`` (the flattened sample: raw pixels, or 2-D points themselves), ``DigitsFeatures``
(the penultimate layer of a small classifier trained on scikit-learn's digits and shipped with the
package), and ``InceptionFeatures`` (a local TorchScript Inception file, never downloaded).
"""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import scipy.linalg
import torch
from torch import nn

__all__ = ["frechet_distance", "frechet_distance_from_stats", "gaussian_stats", "pixel_features", "FrechetReference",
           "DigitsClassifier", "DigitsFeatures", "digits_split", "InceptionFeatures", "reference_fd", "get_features",
           "FEATURE_NAMES", "DIGITS_CLASSIFIER_DIR"]

DIGITS_CLASSIFIER_DIR = Path(__file__).resolve().parent / "pretrained" / "digits_classifier"
FEATURE_NAMES = ("pixel", "digits", "inception")


# ---- the distance -------------------------------------------------------------------------------
def _as_features(feats, name: str) -> np.ndarray:
    """A float64 array of shape (N, k) with N >= 2 and finite entries."""
    if torch.is_tensor(feats):
        feats = feats.detach().cpu().double().numpy()
    feats = np.asarray(feats, dtype=np.float64)
    if feats.ndim != 2:
        raise ValueError(f"{name} must have shape (N, k), got {feats.shape}")
    if feats.shape[0] < 2:
        raise ValueError(f"{name} needs at least 2 rows to estimate a covariance, got {feats.shape[0]}")
    if not np.isfinite(feats).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    return feats


def gaussian_stats(feats) -> tuple[np.ndarray, np.ndarray]:
    """Mean (k,) and unbiased covariance (k, k) of features (N, k), in float64."""
    feats = _as_features(feats, "features")
    return feats.mean(0), np.atleast_2d(np.cov(feats, rowvar=False))


def frechet_distance_from_stats(mu_a, cov_a, mu_b, cov_b) -> float:
    """||mu_a - mu_b||^2 + Tr(cov_a + cov_b - 2 sqrtm(cov_a cov_b)), with scipy's sqrtm in float64.

    sqrtm of the product of two PSD matrices has real eigenvalues, but round-off can give it tiny
    imaginary parts (dropped, when below 1e-3 of the trace scale) or, for singular covariances,
    non-finite entries (then both covariances get 1e-6 * scale on the diagonal, as pytorch-fid does).
    """
    mu_a, mu_b = np.atleast_1d(np.asarray(mu_a, np.float64)), np.atleast_1d(np.asarray(mu_b, np.float64))
    cov_a, cov_b = np.atleast_2d(np.asarray(cov_a, np.float64)), np.atleast_2d(np.asarray(cov_b, np.float64))
    k = mu_a.shape[0]
    if mu_b.shape != (k,) or cov_a.shape != (k, k) or cov_b.shape != (k, k):
        raise ValueError(f"statistics disagree in shape: means {mu_a.shape}, {mu_b.shape}; "
                         f"covariances {cov_a.shape}, {cov_b.shape}")
    scale = max(np.trace(cov_a), np.trace(cov_b), 1e-300) / k
    with warnings.catch_warnings():
        # Constant features (the digits' blank corner pixels) make the covariances singular; sqrtm
        # warns, yet agrees with the symmetric route to ~1e-7 relative (tests/test_evaluate.py).
        warnings.simplefilter("ignore", scipy.linalg.LinAlgWarning)
        covmean = scipy.linalg.sqrtm(cov_a @ cov_b)
    if not np.isfinite(covmean).all():
        offset = 1e-6 * scale * np.eye(k)
        covmean = scipy.linalg.sqrtm((cov_a + offset) @ (cov_b + offset))
    if np.iscomplexobj(covmean):
        worst = np.abs(covmean.imag).max()
        if worst > 1e-3 * scale:
            raise ValueError(f"sqrtm(cov_a cov_b) has an imaginary part of {worst:.3g}: the covariances "
                             "are too ill-conditioned (use more samples than feature dimensions)")
        covmean = covmean.real
    diff = mu_a - mu_b
    return float(diff @ diff + np.trace(cov_a) + np.trace(cov_b) - 2 * np.trace(covmean))


def frechet_distance(feats_a, feats_b) -> float:
    """The Frechet distance between Gaussians fitted to two feature sets (N_a, k) and (N_b, k)."""
    feats_a, feats_b = _as_features(feats_a, "feats_a"), _as_features(feats_b, "feats_b")
    if feats_a.shape[1] != feats_b.shape[1]:
        raise ValueError(f"feature sets differ in dimension: {feats_a.shape[1]} and {feats_b.shape[1]}")
    return frechet_distance_from_stats(*gaussian_stats(feats_a), *gaussian_stats(feats_b))


class FrechetReference:
    """Fixed reference statistics for many Frechet distances (bootstraps, grids of samplers).

    With the reference covariance S_r = R^2 (R its symmetric square root, computed once),
    Tr (S S_r)^(1/2) = Tr (R S R)^(1/2): the eigenvalues of a symmetric PSD matrix, so each distance
    costs one ``eigvalsh`` instead of a general ``sqrtm`` (the two routes agree to round-off:
    tests/test_evaluate.py). ``FrechetReference(feats)(other_feats)`` is the FD between their fits.
    """

    def __init__(self, feats):
        self.mu, self.cov = gaussian_stats(feats)
        w, v = np.linalg.eigh(self.cov)
        self.root = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
        self.trace = float(np.trace(self.cov))

    def from_stats(self, mu, cov) -> float:
        """FD between N(mu, cov) and the reference's Gaussian fit."""
        mu, cov = np.asarray(mu, np.float64), np.atleast_2d(np.asarray(cov, np.float64))
        if mu.shape != self.mu.shape or cov.shape != self.cov.shape:
            raise ValueError(f"statistics of dimension {mu.shape} do not match the reference's {self.mu.shape}")
        inner = np.linalg.eigvalsh(self.root @ cov @ self.root)
        diff = mu - self.mu
        return float(diff @ diff + np.trace(cov) + self.trace - 2 * np.sum(np.sqrt(np.clip(inner, 0, None))))

    def __call__(self, feats) -> float:
        return self.from_stats(*gaussian_stats(feats))


def reference_fd(data: torch.Tensor, n: int, features, generator: torch.Generator | None = None) -> float:
    """FD between two disjoint random halves of ``data`` with n rows each: the floor a perfect model
    reaches with n samples (FD is biased upwards at finite n, so compare samples at the same n)."""
    if 2 * n > data.shape[0]:
        raise ValueError(f"two disjoint halves of n = {n} need {2 * n} data points, only {data.shape[0]} given")
    perm = torch.randperm(data.shape[0], generator=generator)
    return frechet_distance(features(data[perm[:n]]), features(data[perm[n:2 * n]]))


# ---- features -----------------------------------------------------------------------------------
def pixel_features(x) -> np.ndarray:
    """Flatten samples (N, ...) to float64 features (N, prod(...)): raw pixels, or 2-D points as is."""
    if torch.is_tensor(x):
        x = x.detach().cpu().double().numpy()
    x = np.asarray(x, dtype=np.float64)
    if x.ndim < 2:
        raise ValueError(f"samples must have shape (N, ...), got {x.shape}")
    return x.reshape(x.shape[0], -1)


class DigitsClassifier(nn.Module):
    """An MLP for 8x8 digits in [-1, 1]: 64 -> hidden -> features -> 10 logits (SiLU)."""

    def __init__(self, hidden: int = 128, features: int = 64):
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(64, hidden), nn.SiLU(),
                                  nn.Linear(hidden, features), nn.SiLU())
        self.head = nn.Linear(features, 10)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate activations (N, features) for x of shape (N, 1, 8, 8) or (N, 64)."""
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


def digits_split(test_size: float = 0.2, random_state: int = 0):
    """The split the shipped classifier was trained on: (x_train, x_test, y_train, y_test).

    scikit-learn's digits scaled to [-1, 1] as x / 8 - 1 (as ``load_dataset("digits")``), images
    (N, 1, 8, 8) float32 and labels (N,) long; ``train_test_split`` stratified by label.
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = torch.tensor(digits.images / 8.0 - 1.0, dtype=torch.float32)[:, None]
    y = torch.tensor(digits.target, dtype=torch.long)
    idx_train, idx_test = train_test_split(np.arange(len(y)), test_size=test_size,
                                           random_state=random_state, stratify=digits.target)
    return x[idx_train], x[idx_test], y[idx_train], y[idx_test]


class DigitsFeatures:
    """Digits features: the shipped classifier's penultimate layer (64-d), for samples in [-1, 1].

    ``DigitsFeatures()(x)`` with x of shape (N, 1, 8, 8) or (N, 64) returns float64 (N, 64);
    ``.predict(x)`` the predicted labels (N,). ``.manifest`` records how the weights were trained
    (``scripts/train_digits_classifier.py``) and their held-out accuracy.
    """

    def __init__(self, path: str | Path = DIGITS_CLASSIFIER_DIR, device: str | torch.device = "cpu"):
        from safetensors.torch import load_file

        path = Path(path)
        weights, manifest = path / "model.safetensors", path / "manifest.json"
        for f in (weights, manifest):
            if not f.is_file():
                raise FileNotFoundError(f"no digits classifier at {path} (missing {f.name}); "
                                        "run scripts/train_digits_classifier.py")
        self.manifest = json.loads(manifest.read_text())
        arch = self.manifest.get("architecture", {})
        self.classifier = DigitsClassifier(arch.get("hidden", 128), arch.get("features", 64))
        try:
            self.classifier.load_state_dict(load_file(weights))
        except Exception as err:  # safetensors raises its own error types for corrupt files
            raise ValueError(f"cannot load the digits classifier from {weights}: {err}") from None
        self.device = torch.device(device)
        self.classifier.to(self.device).eval()

    def _input(self, x) -> torch.Tensor:
        x = torch.as_tensor(x)
        if x.ndim < 2 or x[0].numel() != 64:
            raise ValueError(f"digits features need samples of shape (N, 1, 8, 8) or (N, 64), got {tuple(x.shape)}")
        return x.reshape(x.shape[0], 64).to(self.device, torch.float32)

    @torch.no_grad()
    def __call__(self, x) -> np.ndarray:
        return self.classifier.features(self._input(x)).double().cpu().numpy()

    @torch.no_grad()
    def predict(self, x) -> np.ndarray:
        return self.classifier(self._input(x)).argmax(1).cpu().numpy()


class InceptionFeatures:
    """Inception-v3 pool features (2048-d) from a local TorchScript file, for FID on real images.

    ``path``: the TorchScript Inception used by StyleGAN2-ADA / clean-fid metrics,
    ``inception-2015-12-05.pt`` (it is not shipped and never downloaded here: fetch it yourself,
    e.g. from NVIDIA's StyleGAN metrics URL, and pass its path). Its forward takes float images
    (N, 3, H, W) in [0, 255], resizes them to 299 internally, and returns features with
    ``return_features=True``. Our samples in [-1, 1] are mapped to [0, 255] (grey images repeated to
    3 channels) and fed in batches of ``batch_size``.
    """

    def __init__(self, path: str | Path, device: str | torch.device = "cpu", batch_size: int = 100):
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no Inception TorchScript file at {path} (expected e.g. "
                                    "inception-2015-12-05.pt from the StyleGAN2-ADA metrics)")
        self.device = torch.device(device)
        try:
            with warnings.catch_warnings():   # TorchScript is deprecated, but it is the file's format
                warnings.simplefilter("ignore", DeprecationWarning)
                self.model = torch.jit.load(str(path), map_location=self.device).eval()
        except Exception as err:
            raise ValueError(f"{path} is not a loadable TorchScript file: {err}".splitlines()[0]) from None
        self.batch_size = batch_size

    @torch.no_grad()
    def __call__(self, x) -> np.ndarray:
        x = torch.as_tensor(x)
        if x.ndim != 4 or x.shape[1] not in (1, 3):
            raise ValueError(f"Inception features need images (N, 1 or 3, H, W), got {tuple(x.shape)}")
        out = []
        for batch in x.split(self.batch_size):
            batch = ((batch.float().clamp(-1, 1) + 1) * 127.5).to(self.device)
            if batch.shape[1] == 1:
                batch = batch.repeat(1, 3, 1, 1)
            out.append(self.model(batch, return_features=True).double().cpu())
        return torch.cat(out).numpy()


def get_features(name: str, inception_path: str | Path | None = None, device="cpu"):
    """A feature extractor by name: "pixel", "digits" or "inception" (which needs ``inception_path``)."""
    if name == "pixel":
        return pixel_features
    if name == "digits":
        return DigitsFeatures(device=device)
    if name == "inception":
        if inception_path is None:
            raise ValueError("inception features need the path of a local TorchScript Inception file")
        return InceptionFeatures(inception_path, device=device)
    raise ValueError(f"unknown features {name!r}; choose one of {', '.join(FEATURE_NAMES)}")
