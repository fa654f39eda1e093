"""The measures behind the paper's section 5.2-5.4 claims (chapter 10): consistency (E3),
smoothness of decoded interpolation paths (E4) and reconstruction error (E5, Table 2).

Each takes a model ``model(x, t)`` that predicts eps, as ``sample`` and ``encode`` do.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from .sampler import Model, encode, sample
from .schedule import NoiseSchedule

__all__ = ["rms_distance", "consistency", "decode_paths", "path_smoothness", "reconstruction_error"]


def rms_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-sample root-mean-square distance between batches (B, ...) -> (B,): sqrt(mean((a - b)^2))."""
    if a.shape != b.shape or a.ndim < 1:
        raise ValueError(f"a and b must be batches of the same shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    return (a - b).reshape(a.shape[0], -1).pow(2).mean(1).sqrt()


def consistency(model: Model, x_T: torch.Tensor, schedule: NoiseSchedule, S_values: Sequence[int], eta: float,
                seed: int = 0, outputs: dict | None = None, reference_steps: int = 1000) -> dict[int, tuple[float, float]]:
    """E3 (sec. 5.2): mean and standard error over the batch of the RMS distance between the S-step and
    the ``reference_steps``-step outputs from the same x_T, for each S. With eta = 0 both approximate
    the ODE's flow map F(x_T), so the distance falls like 1/S; with eta > 0 fresh noise enters each step.

    Noise seeds: the reference uses ``seed``, the S-step run ``seed + S``. The outputs are stored in
    ``outputs[S]`` (the reference under ``reference_steps``) when a dict is given.
    """
    if x_T.shape[0] < 2:
        raise ValueError("consistency needs a batch of at least 2 latents for a standard error")
    reference = sample(model, x_T, schedule, reference_steps, eta=eta, generator=torch.Generator().manual_seed(seed))
    rows = {}
    for S in S_values:
        out = sample(model, x_T, schedule, S, eta=eta, generator=torch.Generator().manual_seed(seed + S))
        dist = rms_distance(out, reference)
        rows[S] = (dist.mean().item(), dist.std().item() / math.sqrt(len(dist)))
        if outputs is not None:
            outputs[S] = out
    if outputs is not None:
        outputs[reference_steps] = reference
    return rows


def decode_paths(model: Model, latents: torch.Tensor, schedule: NoiseSchedule, S: int = 50,
                 shape: Sequence[int] = (1, 8, 8)) -> torch.Tensor:
    """Decode latents (L, P, d) along L points of P paths with eta = 0 and S steps -> (L, P, *shape)."""
    if latents.ndim != 3 or math.prod(shape) != latents.shape[2]:
        raise ValueError(f"latents must have shape (L, P, d) with d = {math.prod(shape)}, got {tuple(latents.shape)}")
    L, P = latents.shape[:2]
    return sample(model, latents.reshape(L * P, *shape), schedule, S).reshape(L, P, *shape)


def path_smoothness(images: torch.Tensor) -> torch.Tensor:
    """Largest step between consecutive decoded images over the distance between the path's ends,
    per path: images (L, P, ...) -> (P,). A path of L equally spaced points on a line gives 1 / (L - 1)."""
    if images.ndim < 3 or images.shape[0] < 2:
        raise ValueError(f"images must have shape (L >= 2, P, ...), got {tuple(images.shape)}")
    flat = images.reshape(images.shape[0], images.shape[1], -1)
    steps = (flat[1:] - flat[:-1]).norm(dim=2)
    return steps.max(0).values / (flat[-1] - flat[0]).norm(dim=1)


def reconstruction_error(model: Model, x0: torch.Tensor, schedule: NoiseSchedule, S: int,
                         data_range: float = 2.0) -> tuple[float, float, float]:
    """E5 / Table 2: per-dimension squared error of decode(encode(x0)) with S steps (eta = 0), in units
    where the data spans 1 (so divided by ``data_range``^2; images in [-1, 1] have range 2, as the paper
    reports errors for pixels in [0, 1]). Returns mean, median and max over the batch."""
    if not (math.isfinite(data_range) and data_range > 0):
        raise ValueError(f"data_range must be positive, got {data_range!r}")
    x_rec = sample(model, encode(model, x0, schedule, S), schedule, S)
    per_sample = (x_rec - x0).reshape(x0.shape[0], -1).pow(2).mean(1) / data_range**2
    return per_sample.mean().item(), per_sample.median().item(), per_sample.max().item()
