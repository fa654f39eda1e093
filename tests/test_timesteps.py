"""Timestep subsequences tau (App. D.2): uniform, quadratic, the official rule, user sequences.

Everything here is integer arithmetic: every comparison is exact.
"""
from __future__ import annotations

import math
from fractions import Fraction

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


# ---- diffusers' spacings (Lin et al. 2023, Table 2): leading, trailing, linspace --------------------------
GRID = [(T, S) for T in (1, 2, 7, 10, 50, 1000) for S in range(1, T + 1) if T < 60 or S % 7 in (0, 1, 3)]


@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
def test_new_spacings_are_valid(spacing):
    for T, S in GRID:
        assert_valid(timesteps(T, S, spacing), T, S)


def test_leading_is_i_times_T_div_S_and_uniform_when_S_divides_T():
    for T, S in GRID:
        seq = timesteps(T, S, "leading")
        assert seq == [i * (T // S) for i in range(S)]
        if T % S == 0:
            assert seq == timesteps(T, S, "uniform")
    assert timesteps(10, 4, "leading") == [0, 2, 4, 6] and timesteps(10, 4, "uniform") == [0, 2, 5, 7]


def test_trailing_is_round_T_minus_i_T_over_S_minus_one():
    """Exact rational value q_i = T (S - i) / S: tau = round(q_i) - 1, except that at an exact tie
    (q_i = k + 1/2) float arithmetic may land on either neighbour; T - 1 is always visited."""
    for T, S in GRID:
        seq = sorted(timesteps(T, S, "trailing"), reverse=True)
        assert seq[0] == T - 1
        for i, t in enumerate(seq):
            q = Fraction(T * (S - i), S)
            if q - math.floor(q) == Fraction(1, 2):
                assert t + 1 in (math.floor(q), math.ceil(q)), (T, S, i)
            else:
                assert t + 1 == round(q), (T, S, i)
    assert timesteps(1000, 10, "trailing") == list(range(99, 1000, 100))


def test_linspace_is_round_linspace():
    for T, S in GRID:
        seq = timesteps(T, S, "linspace")
        assert seq[0] == 0 and seq[-1] == T - 1 if S > 1 else seq == [0]
        step = Fraction(T - 1, S - 1) if S > 1 else 0
        for i, t in enumerate(seq):
            assert abs(t - i * step) <= Fraction(1, 2), (T, S, i)


@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
def test_spacings_match_diffusers_ddim_scheduler(spacing):
    """DDIMScheduler(num_train_timesteps=T, timestep_spacing=spacing, steps_offset=0).set_timesteps(S),
    reversed. numpy's arange returns S + 1 values for some (T, S) under "trailing" (62 of the
    S = 1..1000 for T = 1000): diffusers then returns S + 1 timesteps ending at -1, we the first S.
    Skipped when diffusers (the bench extra) is not installed."""
    DDIMScheduler = pytest.importorskip("diffusers").DDIMScheduler
    extra = []
    for T in (1000, 50, 7):
        sched = DDIMScheduler(num_train_timesteps=T, timestep_spacing=spacing, steps_offset=0)
        for S in range(1, T + 1):
            sched.set_timesteps(S)
            theirs = sorted(sched.timesteps.tolist())
            ours = timesteps(T, S, spacing)
            if len(theirs) == S + 1 and spacing == "trailing":
                assert theirs[0] == -1 and theirs[1:] == ours, (T, S)
                extra.append((T, S))
            else:
                assert theirs == ours, (T, S)
    if spacing == "trailing":
        assert len([s for T, s in extra if T == 1000]) == 62 and (1000, 61) in extra
    else:
        assert extra == []


def test_unknown_spacing_names_the_choices():
    with pytest.raises(ValueError, match="uniform, quadratic, leading, trailing, linspace"):
        timesteps(1000, 10, "Trailing")
