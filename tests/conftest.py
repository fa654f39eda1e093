"""Shared fixtures for the core-mathematics tests (schedule, forward, timesteps, sampler, theory, toy).

Everything is float64 unless a test says otherwise. Randomness always comes from seeded
``torch.Generator``s or ``numpy.random.default_rng`` so every run sees the same numbers.
"""
from __future__ import annotations

import pytest
import torch

from ddim_lib import GaussianMixture, NoiseSchedule, OracleEps


@pytest.fixture
def single_thread():
    """Run a test on one intra-op thread: the tests make thousands of tiny tensor calls on tiny models, which
    thread hand-offs slow down about eightfold on a shared 2-core machine. Restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def linear1000() -> NoiseSchedule:
    """DDPM's schedule: T = 1000, beta linear from 1e-4 to 0.02 (float64)."""
    return NoiseSchedule.linear(1000)


@pytest.fixture(scope="session")
def short_schedule() -> NoiseSchedule:
    """A short schedule (T = 50) that still ends almost at pure noise (alpha_bar_T ~ 1.5e-3),
    for Monte Carlo tests that simulate every step."""
    return NoiseSchedule.linear(50, beta_start=1e-3, beta_end=0.25)


@pytest.fixture(scope="session")
def mixture1d() -> GaussianMixture:
    """A skewed, bimodal 1-D mixture: 0.3 N(-1.5, 0.3^2) + 0.7 N(1, 0.5^2)."""
    return GaussianMixture([[-1.5], [1.0]], [0.3, 0.5], [0.3, 0.7])


@pytest.fixture(scope="session")
def ring() -> GaussianMixture:
    """The "8 Gaussians" toy: 8 components of std 0.1 on a circle of radius 2 (2-D)."""
    return GaussianMixture.ring(8, 2.0, 0.1)


@pytest.fixture(scope="session")
def ring_oracle(ring, linear1000) -> OracleEps:
    return OracleEps(ring, linear1000)
