"""ddim_lib.measures: the consistency, path-smoothness and reconstruction measures of chapter 10."""
from __future__ import annotations

import math

import pytest
import torch

import ddim_lib as dl
from ddim_lib.measures import consistency, decode_paths, path_smoothness, reconstruction_error, rms_distance

SCHEDULE = dl.NoiseSchedule.linear(1000)


def zero_model(x, t):
    return torch.zeros_like(x)


def test_rms_distance_by_hand():
    a = torch.tensor([[0.0, 0.0], [1.0, 3.0]], dtype=torch.float64)
    b = torch.tensor([[3.0, 4.0], [1.0, 3.0]], dtype=torch.float64)
    torch.testing.assert_close(rms_distance(a, b), torch.tensor([math.sqrt(12.5), 0.0], dtype=torch.float64))
    with pytest.raises(ValueError, match="same shape"):
        rms_distance(a, b[:1])


def test_consistency_is_zero_for_the_same_S_and_falls_with_S_for_ddim():
    law = dl.GaussianMixture([[1.0, -1.0], [-1.0, 1.0]], 0.2)
    oracle = dl.OracleEps(law, SCHEDULE)
    x_T = torch.randn(32, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    outputs = {}
    rows = consistency(oracle, x_T, SCHEDULE, [10, 100, 1000], 0.0, outputs=outputs)
    assert rows[1000] == (0.0, 0.0)              # eta = 0 is deterministic: the same S gives the same x_0
    assert rows[10][0] > rows[100][0] > 0        # Euler's error shrinks with S
    assert set(outputs) == {10, 100, 1000}
    noisy = consistency(oracle, x_T, SCHEDULE, [100], 1.0)
    assert noisy[100][0] > 10 * rows[100][0]     # eta = 1: fresh noise, not the same flow map


def test_path_smoothness_of_a_straight_evenly_spaced_path_is_one_over_the_steps():
    ends = torch.randn(2, 5, 1, 8, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    lam = torch.linspace(0, 1, 11, dtype=torch.float64)[:, None, None, None, None]
    path = (1 - lam) * ends[0] + lam * ends[1]
    torch.testing.assert_close(path_smoothness(path), torch.full((5,), 0.1, dtype=torch.float64))
    with pytest.raises(ValueError, match="shape"):
        path_smoothness(path[:1])


def test_decode_paths_keeps_points_and_paths_apart():
    latents = torch.randn(3, 4, 64, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    images = decode_paths(zero_model, latents, SCHEDULE, S=10)
    assert images.shape == (3, 4, 1, 8, 8)
    # eps = 0: DDIM scales by 1 / sqrt(abar at the first step), the same for every point
    scale = 1 / math.sqrt(SCHEDULE.alpha_bars[dl.timesteps(1000, 10)[-1]].item())
    torch.testing.assert_close(images, latents.reshape(3, 4, 1, 8, 8) * scale)
    with pytest.raises(ValueError, match="shape"):
        decode_paths(zero_model, latents[:, :, :10], SCHEDULE)


def test_reconstruction_is_exact_for_a_model_that_ignores_x():
    # eps independent of x: every encoding step is undone exactly by the decoding step
    x0 = torch.rand(6, 1, 8, 8, generator=torch.Generator().manual_seed(3), dtype=torch.float64) * 2 - 1
    mean, median, worst = reconstruction_error(zero_model, x0, SCHEDULE, 20)
    assert worst < 1e-26 and 0 <= median <= worst and mean <= worst


def test_reconstruction_error_units_and_decrease_with_S():
    law = dl.GaussianMixture(torch.tensor([[0.5] * 4, [-0.5] * 4]), 0.1)
    oracle = dl.OracleEps(law, SCHEDULE)
    x0 = law.sample(16, generator=torch.Generator().manual_seed(4))
    coarse, fine = reconstruction_error(oracle, x0, SCHEDULE, 10), reconstruction_error(oracle, x0, SCHEDULE, 100)
    assert fine[0] < coarse[0]
    # data_range rescales the squared error by 1 / range^2
    assert reconstruction_error(oracle, x0, SCHEDULE, 10, data_range=1.0)[0] == pytest.approx(4 * coarse[0], rel=1e-12)
    with pytest.raises(ValueError, match="data_range"):
        reconstruction_error(oracle, x0, SCHEDULE, 10, data_range=0.0)
