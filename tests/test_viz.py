"""ddim_lib.viz: the arrays behind the pictures are exact; the plotting functions draw what they say."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import ddim_lib as dl  # noqa: E402
from ddim_lib import viz  # noqa: E402


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


@settings(max_examples=30, deadline=None)
@given(n=st.integers(1, 11), ncol=st.integers(1, 5), pad=st.integers(0, 2))
def test_image_grid_places_image_k_at_row_k_div_ncol(n, ncol, pad):
    h, w = 3, 2
    images = torch.linspace(-1, 1, n * h * w, dtype=torch.float64).reshape(n, 1, h, w)
    grid = viz.image_grid(images, ncol=ncol, pad=pad, pad_value=-5.0)
    nrow = -(-n // ncol)
    assert grid.shape == (nrow * (h + pad) - pad, ncol * (w + pad) - pad)
    filled = np.zeros(grid.shape, bool)
    for k in range(n):
        r, c = divmod(k, ncol)
        tile = (slice(r * (h + pad), r * (h + pad) + h), slice(c * (w + pad), c * (w + pad) + w))
        np.testing.assert_array_equal(grid[tile], (images[k, 0].numpy() + 1) / 2)   # [-1, 1] -> [0, 1] exactly
        filled[tile] = True
    assert (grid[~filled] == -5.0).all(), "everything outside the tiles is padding"


def test_image_grid_clips_and_accepts_three_dims():
    images = np.array([[[-3.0, 0.0], [1.0, 7.0]]])          # (1, 2, 2), outside [-1, 1] on purpose
    np.testing.assert_array_equal(viz.image_grid(images, pad=0), [[0.0, 0.5], [1.0, 1.0]])


@pytest.mark.parametrize("bad", [np.zeros((2, 3, 4, 4)), np.zeros(5), np.zeros((0, 4, 4))])
def test_image_grid_rejects_non_images(bad):
    with pytest.raises(ValueError, match="images must have shape"):
        viz.image_grid(bad)


@settings(max_examples=30, deadline=None)
@given(values=st.lists(st.floats(-1e3, 1e3), min_size=1, max_size=40), data=st.data())
def test_moving_average_is_the_mean_of_each_window(values, data):
    window = data.draw(st.integers(1, len(values)))
    expected = [np.mean(values[i:i + window]) for i in range(len(values) - window + 1)]
    # cumulative sums of numbers up to 1e3: round-off stays below 1e-9 relative to the largest value
    np.testing.assert_allclose(viz.moving_average(values, window), expected, rtol=0, atol=1e-9 * 1e3)


def test_moving_average_rejects_a_window_longer_than_the_data():
    with pytest.raises(ValueError):
        viz.moving_average([1.0, 2.0], 3)


def test_eps_field_evaluates_the_model_on_the_grid_at_t():
    seen = []

    def model(x, t):                       # an analytic "network": eps = (t + 1) * (x, -x)
        seen.append(t)
        return (t[:, None] + 1).to(x.dtype) * torch.cat([x[:, :1], -x[:, 1:]], 1)

    X, Y, U, V = viz.eps_field(model, t=4, lim=2.0, n=5)
    assert all((t == 4).all() and t.dtype == torch.long for t in seen)
    np.testing.assert_allclose(X[0], np.linspace(-2, 2, 5), atol=1e-6)   # float32 grid
    np.testing.assert_allclose(Y[:, 0], np.linspace(-2, 2, 5), atol=1e-6)
    np.testing.assert_allclose(U, 5 * X, atol=1e-5)
    np.testing.assert_allclose(V, -5 * Y, atol=1e-5)


def test_eps_field_of_the_oracle_points_away_from_a_single_gaussian():
    """For data N(0, I) the exact eps*(x_t) = sqrt(1 - abar_t) x_t (x_t ~ N(0, I) at every t)."""
    schedule = dl.NoiseSchedule.linear()
    oracle = dl.OracleEps(dl.GaussianMixture([[0.0, 0.0]], 1.0), schedule)
    X, Y, U, V = viz.eps_field(oracle, t=300, n=4)
    c = float((1 - schedule.alpha_bars[300]).sqrt())
    np.testing.assert_allclose(U, c * X, atol=1e-6)
    np.testing.assert_allclose(V, c * Y, atol=1e-6)


def test_plot_functions_draw_their_content():
    images = torch.rand(6, 1, 8, 8) * 2 - 1
    ax = viz.plot_images(images, ncol=3, title="six")
    np.testing.assert_array_equal(ax.images[0].get_array(), viz.image_grid(images, 3))
    assert ax.get_title() == "six"

    ax = viz.plot_points(torch.zeros(10, 2), lim=2.5)
    assert ax.collections[0].get_offsets().shape == (10, 2) and ax.get_xlim() == (-2.5, 2.5)

    ax = viz.plot_loss([4.0, 3.0, 2.0, 1.0], window=2)
    np.testing.assert_allclose(ax.lines[1].get_ydata(), [3.5, 2.5, 1.5])


def test_plot_sample_grid_and_consistency_with_the_oracle():
    """eta = 0 sampling is deterministic: the pictured samples are the library's sample(...)."""
    schedule = dl.NoiseSchedule.linear()
    oracle = dl.OracleEps(dl.GaussianMixture(torch.full((2, 4), 0.5) * torch.tensor([[1.0], [-1.0]]), 0.2),
                          schedule)
    ax = viz.plot_sample_grid(oracle, schedule, (1, 2, 2), S=5, eta=0.0, seed=3, n=4)
    x_T = torch.randn((4, 1, 2, 2), generator=torch.Generator().manual_seed(3))
    expected = dl.sample(oracle, x_T, schedule, 5)     # the oracle flattens (B, 1, 2, 2) itself
    np.testing.assert_allclose(ax.images[0].get_array(), viz.image_grid(expected), atol=1e-6)
    axes = viz.plot_consistency(oracle, schedule, x_T, [5, 10], eta=1.0)
    assert len(axes) == 2 and all(len(a.images) == 1 for a in axes)
    with pytest.raises(ValueError, match="one axis per S"):
        viz.plot_consistency(oracle, schedule, x_T, [5, 10], eta=0.0, axes=[axes[0]])
