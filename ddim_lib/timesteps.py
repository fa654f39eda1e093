"""Timestep subsequences tau (App. D.2): which of the T training steps a sampler visits.

All sequences are code indices in 0..T-1, strictly increasing; sampling walks them backwards.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["timesteps", "official_quadratic_timesteps", "SPACINGS"]


def _check_T_S(T: int, S: int) -> None:
    for name, v in (("T", T), ("S", S)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
            raise ValueError(f"{name} must be an integer, got {v!r}")
    if T < 1:
        raise ValueError(f"T must be at least 1, got {T}")
    if not 1 <= S <= T:
        raise ValueError(f"the number of sampling steps S must lie in 1..T = 1..{T}, got {S}")


def _uniform(T: int, S: int) -> list[int]:
    """range(0, T, T // S) when S divides T (the official code, diffusers' "leading"); else floor(i T / S)."""
    if T % S == 0:
        return list(range(0, T, T // S))
    # range(0, T, T // S) would give more than S steps here; floor(i T / S) gives exactly S distinct ones.
    return [(i * T) // S for i in range(S)]


def _leading(T: int, S: int) -> list[int]:
    """diffusers' "leading" spacing (DDIMScheduler.set_timesteps, steps_offset = 0): i * (T // S), i = 0..S-1.

    Equal to "uniform" when S divides T; otherwise it stops short of T - T // S (T = 10, S = 4:
    leading [0, 2, 4, 6], uniform [0, 2, 5, 7]).
    """
    return [i * (T // S) for i in range(S)]


def _trailing(T: int, S: int) -> list[int]:
    """diffusers' "trailing" spacing (Lin et al. 2023, Table 2): round(arange(T, 0, -T / S)) - 1, increasing.

    The same float arithmetic as diffusers' DDIMScheduler.set_timesteps (numpy's arange, then round
    half to even), so ties such as T (S - i) / S = k + 1/2 resolve as there. One difference: numpy's
    arange counts its length in floats and returns S + 1 values for some (T, S) (T = 1000: S = 61,
    103, ...; 62 of the 1000), the last about 0, which diffusers turns into a timestep -1; only the
    first S values are kept here. Always visits T - 1; the smallest step is round(T / S) - 1 >= 0.
    """
    values = np.round(np.arange(T, 0, -T / S)[:S]).astype(np.int64) - 1
    return sorted(int(v) for v in values)


def _linspace(T: int, S: int) -> list[int]:
    """diffusers' "linspace" spacing: round(linspace(0, T - 1, S)) (half to even). Visits 0 and T - 1."""
    return [int(v) for v in np.round(np.linspace(0, T - 1, S))]


def official_quadratic_timesteps(T: int, S: int) -> list[int]:
    """The official DDIM code's rule: int(c i^2), i = 0..S-1, from 0 to 0.8 T (may repeat steps)."""
    _check_T_S(T, S)
    return [int(s) for s in np.linspace(0, np.sqrt(T * 0.8), S) ** 2]


def _quadratic(T: int, S: int) -> list[int]:
    """App. D.2's tau_i = floor(c i^2) ending near 0.8 T, made strictly increasing.

    The official rule (``official_quadratic_timesteps``) repeats steps whenever its first gap
    0.8 T / (S - 1)^2 drops below 1: for T = 1000 that is every S >= 30, so it evaluates the model
    twice at the same step and visits fewer than S distinct steps. Here each step is pushed up to
    at least one past its predecessor (and, near T, pulled down below its successor), so exactly S
    distinct steps in 0..T-1 come back, identical to the official ones when those do not repeat.
    """
    seq = official_quadratic_timesteps(T, S)
    for i in range(1, S):
        seq[i] = max(seq[i], seq[i - 1] + 1)
    seq[-1] = min(seq[-1], T - 1)
    for i in range(S - 2, -1, -1):
        seq[i] = min(seq[i], seq[i + 1] - 1)
    return seq


def _validate_sequence(T: int, seq: Sequence[int]) -> list[int]:
    try:
        arr = np.asarray(list(seq))
    except TypeError:
        raise ValueError(f"spacing must be one of {', '.join(SPACINGS)} or a sequence of ints, got {seq!r}") from None
    if arr.ndim != 1 or arr.size == 0:
        raise ValueError("a timestep sequence must be a non-empty 1-D sequence of integers")
    if not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"timesteps must be integers, got dtype {arr.dtype}")
    if arr.min() < 0 or arr.max() > T - 1:
        raise ValueError(f"timesteps must lie in 0..T-1 = 0..{T - 1}, got min {arr.min()}, max {arr.max()}")
    if np.any(np.diff(arr) <= 0):
        raise ValueError("timesteps must be strictly increasing (sampling walks them backwards)")
    return [int(v) for v in arr]


SPACINGS = ("uniform", "quadratic", "leading", "trailing", "linspace")


def timesteps(T: int, S: int | None = None, spacing: str | Sequence[int] = "uniform") -> list[int]:
    """The increasing subsequence tau of 0..T-1 with S steps.

    ``spacing``: "uniform" (``range(0, T, T // S)`` when S divides T, else floor(i T / S)),
    "quadratic" (App. D.2, strictly increasing), diffusers' DDIMScheduler spacings (Lin et al. 2023,
    Table 2) "leading" (i * (T // S); equal to "uniform" exactly when S divides T), "trailing"
    (round(T - i T / S) - 1: includes T - 1) and "linspace" (round(linspace(0, T - 1, S)): includes
    0 and T - 1), or an explicit increasing sequence (then S may be None or its length).
    Examples (T = 1000, S = 10): uniform and leading [0, 100, ..., 900]; quadratic [0, 9, 39, ...,
    800]; trailing [99, 199, ..., 999]; linspace [0, 111, 222, ..., 999].
    Neither "uniform" nor "leading" nor "quadratic" visits the last training step T - 1 (code 999):
    see the book, chapter 6. Every result is checked: S distinct, increasing steps in 0..T-1.
    """
    if isinstance(spacing, str):
        if S is None:
            raise ValueError("S (the number of sampling steps) is required for a named spacing")
        _check_T_S(T, S)
        T, S = int(T), int(S)
        rules = {"uniform": _uniform, "quadratic": _quadratic, "leading": _leading,
                 "trailing": _trailing, "linspace": _linspace}
        if spacing not in rules:
            raise ValueError(f"unknown spacing {spacing!r}: use one of {', '.join(SPACINGS)} or a sequence")
        seq = rules[spacing](T, S)
        if len(seq) != S:   # cannot happen for 1 <= S <= T; guards the rules above
            raise ValueError(f"spacing {spacing!r} gave {len(seq)} steps for S = {S}")
        return _validate_sequence(T, seq)
    if isinstance(T, bool) or not isinstance(T, (int, np.integer)) or T < 1:
        raise ValueError(f"T must be a positive integer, got {T!r}")
    seq = _validate_sequence(T, spacing)
    if S is not None and S != len(seq):
        raise ValueError(f"S = {S} but the given sequence has {len(seq)} steps")
    return seq
