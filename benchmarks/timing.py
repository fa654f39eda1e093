"""Alternating timers: time two (or more) callables in turn and report medians, spreads and ratios."""
from __future__ import annotations

import gc
import statistics
import time
from collections.abc import Callable


def time_once(fn: Callable[[], object]) -> float:
    """Wall time of one call of ``fn`` in seconds (garbage collected before, not during)."""
    gc.collect()
    gc.disable()
    try:
        start = time.perf_counter()
        fn()
        return time.perf_counter() - start
    finally:
        gc.enable()


def alternate(fns: dict[str, Callable[[], object]], repeats: int, warmup: int = 1) -> dict[str, list[float]]:
    """Call every function ``warmup`` times (untimed), then ``repeats`` rounds of all of them in turn.

    Returns the timed seconds per name, in round order. Rounds start with a different function each
    time (round-robin rotation) so that neither side always runs first after the other.
    """
    if repeats < 1 or warmup < 0:
        raise ValueError(f"need repeats >= 1 and warmup >= 0, got {repeats} and {warmup}")
    names = list(fns)
    for _ in range(warmup):
        for name in names:
            fns[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeats):
        for name in names[r % len(names):] + names[:r % len(names)]:
            times[name].append(time_once(fns[name]))
    return times


def summary(seconds: list[float]) -> dict:
    """Median, minimum and maximum of a list of timings (seconds)."""
    return {"median_s": statistics.median(seconds), "min_s": min(seconds), "max_s": max(seconds),
            "n": len(seconds), "all_s": list(seconds)}


def ratio(num: list[float], den: list[float]) -> dict:
    """median(num) / median(den), and the spread of the per-round ratios num[r] / den[r].

    Rounds pair timings taken back to back, so the per-round ratios show how much the load moved
    the figure: ``low`` and ``high`` are their minimum and maximum.
    """
    if len(num) != len(den) or not num:
        raise ValueError("ratio needs two equally long, non-empty lists of timings")
    per_round = [a / b for a, b in zip(num, den)]
    return {"ratio": statistics.median(num) / statistics.median(den), "low": min(per_round),
            "high": max(per_round), "per_round": per_round, "ratio_of_minima": min(num) / min(den)}
