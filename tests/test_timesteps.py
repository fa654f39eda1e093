"""Timestep subsequences tau (App. D.2): uniform, quadratic, the official rule, user sequences.

Everything here is integer arithmetic: every comparison is exact.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ddim_lib import official_quadratic_timesteps, timesteps


def assert_valid(seq: list[int], T: int, S: int) -> None:
    assert len(seq) == S == len(set(seq)), "exactly S distinct steps"
    assert all(isinstance(v, int) for v in seq)
    assert all(b > a for a, b in zip(seq, seq[1:])), "strictly increasing"
    assert 0 <= seq[0] and seq[-1] <= T - 1


@pytest.mark.parametrize("T, S", [(1000, 10), (1000, 20), (1000, 50), (1000, 100), (1000, 1000),
                                  (1000, 1), (100, 25), (7, 7)])
def test_uniform_is_the_official_range_when_S_divides_T(T, S):
    assert timesteps(T, S) == list(range(0, T, T // S))
    assert timesteps(T, S, "uniform") == timesteps(T, S)


@pytest.mark.parametrize("T, S", [(1000, 30), (1000, 999), (1000, 501), (10, 3), (7, 6)])
def test_uniform_gives_exactly_S_steps_otherwise(T, S):
    assert len(range(0, T, T // S)) != S, "the official range would not give S steps here"
    seq = timesteps(T, S)
    assert_valid(seq, T, S)
    assert seq[0] == 0


def test_quadratic_examples():
    # App. D.2 / the official code for T = 1000, S = 10: int(c i^2), c = 800 / 81.
    expected = [int((i * np.sqrt(800) / 9) ** 2) for i in range(10)]
    assert timesteps(1000, 10, "quadratic") == expected == official_quadratic_timesteps(1000, 10)
    assert expected[:3] == [0, 9, 39] and expected[-1] == 800


@pytest.mark.parametrize("S", range(2, 60))
def test_official_rule_repeats_for_T1000_exactly_when_S_at_least_30(S):
    """The first gap int(800 / (S - 1)^2) is 0 iff 800 / (S - 1)^2 < 1, i.e. S - 1 > sqrt(800) = 28.28."""
    official = official_quadratic_timesteps(1000, S)
    has_repeats = len(set(official)) < len(official)
    assert has_repeats == (800 / (S - 1) ** 2 < 1) == (S >= 30)
    ours = timesteps(1000, S, "quadratic")
    assert_valid(ours, 1000, S)
    if not has_repeats:
        assert ours == official


@pytest.mark.parametrize("T, S", [(1000, 1000), (1000, 999), (10, 10), (5, 4), (1, 1), (2, 1)])
def test_quadratic_extreme_S(T, S):
    assert_valid(timesteps(T, S, "quadratic"), T, S)


@settings(deadline=None, max_examples=200)
@given(T=st.integers(1, 2000), data=st.data())
def test_timestep_invariants_property(T, data):
    S = data.draw(st.integers(1, T), label="S")
    for spacing in ("uniform", "quadratic"):
        assert_valid(timesteps(T, S, spacing), T, S)
    official = official_quadratic_timesteps(T, S)
    if len(set(official)) == S:
        assert timesteps(T, S, "quadratic") == official
    if T % S == 0:
        assert timesteps(T, S) == list(range(0, T, T // S))


@settings(deadline=None, max_examples=100)
@given(seq=st.lists(st.integers(0, 499), min_size=1, max_size=50, unique=True))
def test_user_sequences_round_trip_property(seq):
    seq = sorted(seq)
    assert timesteps(500, None, seq) == seq
    assert timesteps(500, len(seq), np.array(seq)) == seq
    assert timesteps(500, None, torch.tensor(seq).tolist()) == seq


@pytest.mark.parametrize("seq, message", [
    ([0, 5, 5, 9], "strictly increasing"),
    ([9, 5, 0], "strictly increasing"),
    ([0, 5, 10], r"0\.\.T-1 = 0\.\.9"),
    ([-1, 5], r"0\.\.T-1 = 0\.\.9"),
    ([0.0, 1.5], "integers"),
    ([0.0, 1.0], "integers"),
    ([], "non-empty"),
    ([[0, 1], [2, 3]], "1-D"),
    (5.0, "sequence of ints"),
])
def test_invalid_user_sequences_raise(seq, message):
    with pytest.raises(ValueError, match=message):
        timesteps(10, None, seq)


@pytest.mark.parametrize("T, S, spacing, message", [
    (1000, 0, "uniform", r"S must lie in 1\.\.T = 1\.\.1000"),
    (1000, 1001, "uniform", r"S must lie in 1\.\.T = 1\.\.1000"),
    (1000, -3, "quadratic", r"S must lie in 1\.\.T = 1\.\.1000"),
    (1000, 2.5, "uniform", "S must be an integer"),
    (1000, True, "uniform", "S must be an integer"),
    (0, 1, "uniform", "T must be at least 1"),
    (10.0, 5, "uniform", "T must be an integer"),
    (1000, None, "uniform", "S .* is required"),
    (1000, 10, "cubic", "unknown spacing 'cubic'"),
    (10, 3, [0, 1], r"S = 3 but the given sequence has 2 steps"),
    (0, None, [0], "T must be a positive integer"),
])
def test_bad_T_S_spacing_raise(T, S, spacing, message):
    with pytest.raises(ValueError, match=message):
        timesteps(T, S, spacing)


def test_official_rule_validates_too():
    with pytest.raises(ValueError, match=r"S must lie in 1\.\.T"):
        official_quadratic_timesteps(1000, 0)
