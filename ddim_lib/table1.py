"""The digits Table 1 grid as shipped in ``results/table1_digits.json``: its cells, its chunked
sampler and the fingerprints that tie the shipped numbers to this code and this model.

``scripts/table1_digits.py`` generates every cell in chunks of ``CHUNK`` samples; chunk c of every
cell starts from the same latents (seed ``LATENT_SEED + c``) and draws its sampling noise from a
generator seeded ``NOISE_SEED + c`` (common random numbers, so cells are compared on paired
samples). ``run_chunk`` is that computation; the book and the tests re-run chunk 0 of a cell and
compare its first 64 samples with the shipped ``fingerprint``.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from .sampler import sample
from .timesteps import timesteps

__all__ = ["CHUNK", "LATENT_SEED", "NOISE_SEED", "ROWS", "S_SMALL", "cell_key", "chunk_latents", "run_chunk",
           "fingerprint", "fingerprints_match", "load_results", "RESULTS_FILE"]

CHUNK = 250
LATENT_SEED, NOISE_SEED = 1000, 2000
ROWS = {  # row name -> keyword arguments of ddim_lib.sample
    "eta=0": dict(eta=0.0),
    "eta=0.2": dict(eta=0.2),
    "eta=0.5": dict(eta=0.5),
    "eta=1": dict(eta=1.0),
    "sigma_hat (x0 clamped)": dict(variance="sigma_hat", clip_x0=True),   # as the official code ran it
    "sigma_hat (unclamped)": dict(variance="sigma_hat"),
}
S_SMALL = (10, 20, 50, 100)
RESULTS_FILE = Path(__file__).resolve().parents[1] / "results" / "table1_digits.json"


def cell_key(row: str, spacing: str, S: int) -> str:
    """The cell's name in the results file, e.g. "eta=0|uniform|10"."""
    if row not in ROWS:
        raise ValueError(f"unknown row {row!r}; rows: {', '.join(ROWS)}")
    if spacing not in ("uniform", "quadratic"):
        raise ValueError(f"spacing must be 'uniform' or 'quadratic', got {spacing!r}")
    return f"{row}|{spacing}|{int(S)}"


def chunk_latents(chunk: int, shape=(1, 8, 8)) -> torch.Tensor:
    """Chunk ``chunk``'s latents x_T (CHUNK, *shape), the same for every cell."""
    return torch.randn(CHUNK, *shape, generator=torch.Generator().manual_seed(LATENT_SEED + chunk))


def run_chunk(model, schedule, row: str, spacing: str, S: int, chunk: int = 0) -> torch.Tensor:
    """Samples (CHUNK, 1, 8, 8) of one chunk of one cell, exactly as the script computed them."""
    cell_key(row, spacing, S)
    tau = timesteps(schedule.T, S, spacing)
    return sample(model, chunk_latents(chunk), schedule, tau,
                  generator=torch.Generator().manual_seed(NOISE_SEED + chunk), **ROWS[row])


def fingerprint(samples, m: int = 64) -> dict:
    """A few float summaries of the first m samples (N, ...): per-sample sums and sums of squares
    (m numbers each), the total sum and sum of squares, and the first 8 values of sample 0."""
    x = torch.as_tensor(samples)[:m].double().reshape(min(m, len(samples)), -1)
    if len(x) < m:
        raise ValueError(f"a fingerprint needs at least {m} samples, got {len(x)}")
    return {"m": m, "sum": float(x.sum()), "sum_sq": float((x**2).sum()),
            "per_sample_sum": [round(float(v), 6) for v in x.sum(1)],
            "per_sample_sum_sq": [round(float(v), 6) for v in (x**2).sum(1)],
            "first_values": [round(float(v), 6) for v in x[0, :8]]}


def fingerprints_match(a: dict, b: dict, atol: float = 1e-3) -> bool:
    """Whether two fingerprints agree to float32 round-off accumulated over the sampler's steps.

    Per-sample sums run over 64 pixels of O(1) each; float32 differences between machines (other
    SIMD paths) are ~1e-6 per pixel per step and stay below atol = 1e-3 on the sums, while a
    different latent, seed, step rule or model changes them by O(1).
    """
    if a["m"] != b["m"]:
        return False
    for k in ("per_sample_sum", "per_sample_sum_sq", "first_values"):
        if not np.allclose(a[k], b[k], rtol=0, atol=atol):
            return False
    return abs(a["sum"] - b["sum"]) <= atol * a["m"] and abs(a["sum_sq"] - b["sum_sq"]) <= atol * a["m"]


def load_results(path: str | Path = RESULTS_FILE) -> dict:
    """The shipped results file (JSON) with its cells; a missing or malformed file raises ValueError."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"no results file {path.name}: run scripts/table1_digits.py")
    data = json.loads(path.read_text())
    for key in ("manifest", "cells"):
        if key not in data:
            raise ValueError(f"{path.name} has no {key!r} section")
    return data
