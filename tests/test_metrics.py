"""ddim_lib.metrics: KID, precision/recall, nearest-neighbour quantiles and bootstrap errors.

Exact checks are float64 against hand computations (explicit loops, tiny point sets) or closed
forms (the population MMD^2 of two Gaussians under the cubic kernel, from their first three
moments). Monte Carlo checks state their tolerance: a mean within 4 standard errors of its target
(fails by chance with probability 6e-5), a standard error within a factor 1.25 of the Monte Carlo
standard deviation estimated from R replications (relative error of that estimate ~ 1/sqrt(2R)).
"""
from __future__ import annotations

import math

import numpy as np
import pytest

from ddim_lib.metrics import (frechet_floor, frechet_with_se, kid, kid_difference, knn_radii, nearest_neighbour_distances,
                              paired_bootstrap, polynomial_kernel, precision_recall, quantiles_with_se)
from ddim_lib.evaluate import frechet_distance_from_stats, gaussian_stats


# ---- KID ------------------------------------------------------------------------------------------
def kid_by_loops(x, y):
    k = lambda a, b: (sum(ai * bi for ai, bi in zip(a, b)) / len(a) + 1.0) ** 3   # noqa: E731
    m, n = len(x), len(y)
    kxx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    kyy = sum(k(y[i], y[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    kxy = sum(k(a, b) for a in x for b in y) / (m * n)
    return kxx + kyy - 2 * kxy


def test_kid_matches_explicit_loops():
    x = [[0.5, -1.0], [2.0, 0.0], [1.0, 1.0]]
    y = [[0.0, 0.0], [-1.0, 3.0], [0.25, 0.5], [1.5, -2.0]]
    assert kid(x, y)[0] == pytest.approx(kid_by_loops(x, y), rel=1e-12)
    assert polynomial_kernel([[1.0, 2.0]], [[3.0, -1.0]])[0, 0] == pytest.approx((1 / 2 + 1) ** 3, rel=1e-15)


def gaussian_kernel_mean(mu1, cov1, mu2, cov2):
    """E (x.y / d + 1)^3 for independent x ~ N(mu1, cov1), y ~ N(mu2, cov2), from their moments:
    E x.y = mu1.mu2, E (x.y)^2 = <M1, M2> with M = cov + mu mu^T, E (x.y)^3 = <T1, T2> with the third
    moments T_ijk = mu_i mu_j mu_k + mu_i C_jk + mu_j C_ik + mu_k C_ij."""
    d = len(mu1)

    def third(mu, c):
        return (np.einsum("i,j,k->ijk", mu, mu, mu) + np.einsum("i,jk->ijk", mu, c)
                + np.einsum("j,ik->ijk", mu, c) + np.einsum("k,ij->ijk", mu, c))

    e1 = mu1 @ mu2
    e2 = np.sum((cov1 + np.outer(mu1, mu1)) * (cov2 + np.outer(mu2, mu2)))
    e3 = np.sum(third(mu1, cov1) * third(mu2, cov2))
    return e3 / d**3 + 3 * e2 / d**2 + 3 * e1 / d + 1


def test_kid_is_unbiased_for_the_gaussian_closed_form_and_its_se_matches_the_spread():
    d, m, n, reps = 3, 150, 200, 300
    mu1, mu2 = np.array([0.5, 0.0, -0.3]), np.zeros(3)
    a = np.array([[1.0, 0.3, 0.0], [0.0, 0.8, 0.2], [0.1, 0.0, 1.2]])
    cov1, cov2 = a @ a.T, np.eye(3)
    exact = (gaussian_kernel_mean(mu1, cov1, mu1, cov1) + gaussian_kernel_mean(mu2, cov2, mu2, cov2)
             - 2 * gaussian_kernel_mean(mu1, cov1, mu2, cov2))
    rng = np.random.default_rng(0)
    vals, ses = [], []
    for _ in range(reps):
        x = rng.multivariate_normal(mu1, cov1, m)
        y = rng.multivariate_normal(mu2, cov2, n)
        v, s = kid(x, y)
        vals.append(v)
        ses.append(s)
    vals = np.array(vals)
    assert exact > 0.1                                   # far from degenerate: the first-order s.e. applies
    assert abs(vals.mean() - exact) < 4 * vals.std(ddof=1) / math.sqrt(reps), (vals.mean(), exact)
    assert 1 / 1.25 < np.mean(ses) / vals.std(ddof=1) < 1.25, (np.mean(ses), vals.std(ddof=1))


def test_kid_of_equal_laws_averages_zero():
    rng = np.random.default_rng(1)
    vals = np.array([kid(rng.standard_normal((60, 4)), rng.standard_normal((80, 4)))[0] for _ in range(300)])
    assert abs(vals.mean()) < 4 * vals.std(ddof=1) / math.sqrt(len(vals))
    assert (vals < 0).any()                              # unbiased, so negative values occur


def test_kid_difference_is_the_difference_and_its_se_matches_the_spread():
    rng = np.random.default_rng(10)
    y = rng.standard_normal((300, 3))
    a = rng.standard_normal((200, 3)) + [0.3, 0, 0]
    b = a + 0.2 * rng.standard_normal((200, 3))
    diff, se = kid_difference(a, b, y)
    assert diff == pytest.approx(kid(a, y)[0] - kid(b, y)[0], rel=1e-10)
    assert kid_difference(a, a, y) == (0.0, 0.0)
    diffs, ses = [], []
    for _ in range(300):                # fresh paired sets, same reference y (the s.e. is conditional on y)
        a = rng.standard_normal((200, 3)) + [0.3, 0, 0]
        d, s = kid_difference(a, a + 0.2 * rng.standard_normal((200, 3)), y)
        diffs.append(d)
        ses.append(s)
    assert 1 / 1.25 < np.mean(ses) / np.std(diffs, ddof=1) < 1.25, (np.mean(ses), np.std(diffs, ddof=1))


# ---- precision / recall ---------------------------------------------------------------------------
REAL_1D = np.array([[0.0], [1.0], [2.0], [10.0]])
FAKE_1D = np.array([[0.5], [5.0], [20.0]])


def test_knn_radii_by_hand():
    np.testing.assert_allclose(knn_radii(REAL_1D, k=1), [1, 1, 1, 8])
    np.testing.assert_allclose(knn_radii(REAL_1D, k=2), [2, 1, 2, 9])
    np.testing.assert_allclose(knn_radii(FAKE_1D, k=1), [4.5, 4.5, 15])


def test_precision_recall_by_hand():
    # real balls (k = 1): [-1, 1], [0, 2], [1, 3], [2, 18]; fake 0.5 and 5 are inside, 20 is not: 2/3.
    # fake balls: [-4, 5], [0.5, 9.5], [5, 35]: real 0, 1, 2 and 10 are all inside: recall 1.
    pr = precision_recall(REAL_1D, FAKE_1D, k=1, blocks=1)
    assert pr["precision"] == pytest.approx(2 / 3, abs=1e-15) and pr["recall"] == 1.0
    assert pr["precision_se"] == pytest.approx(math.sqrt(2 / 9 / 3), rel=1e-12)


def test_precision_recall_extremes():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((200, 5))
    same = precision_recall(x, x, k=3)
    assert same["precision"] == 1.0 and same["recall"] == 1.0
    far = precision_recall(x, x + 100.0, k=3)
    assert far["precision"] == 0.0 and far["recall"] == 0.0


def test_precision_drops_when_samples_leave_the_data_and_recall_when_they_collapse():
    rng = np.random.default_rng(3)
    real = rng.standard_normal((400, 2))
    spread = precision_recall(real, 3.0 * rng.standard_normal((400, 2)), k=3)
    collapsed = precision_recall(real, 0.1 * rng.standard_normal((400, 2)), k=3)
    assert spread["precision"] < 0.6 and collapsed["precision"] > 0.95
    assert collapsed["recall"] < 0.2 and collapsed["recall_se"] > 0


# ---- nearest neighbours and quantiles -------------------------------------------------------------
def test_nearest_neighbour_distances_by_hand():
    ref = np.array([[0.0, 0.0], [2.0, 0.0]])
    s = np.array([[0.0, 1.0], [2.0, 2.0], [1.0, 0.0]])
    np.testing.assert_allclose(nearest_neighbour_distances(s, ref), np.array([1, 2, 1]) / math.sqrt(2))
    np.testing.assert_allclose(nearest_neighbour_distances(ref, ref, exclude_self=True), [2 / math.sqrt(2)] * 2)
    with pytest.raises(ValueError, match="dimension"):
        nearest_neighbour_distances(s, np.zeros((2, 3)))


def test_median_standard_error_matches_the_asymptotic_formula():
    """For N(0, 1) the sample median has s.e. sqrt(pi / 2) / sqrt(n)."""
    v = np.random.default_rng(4).standard_normal(2000)
    out = quantiles_with_se(v, qs=(0.5,), n_boot=800, rng=0)
    assert out[0.5][0] == pytest.approx(np.median(v), abs=1e-15)
    assert out[0.5][1] == pytest.approx(math.sqrt(math.pi / 2 / 2000), rel=0.25)


# ---- Frechet errors and floor ---------------------------------------------------------------------
def test_frechet_bootstrap_se_matches_the_spread_over_fresh_samples():
    rng = np.random.default_rng(5)
    ref = rng.standard_normal((4000, 3))
    mu, cov = gaussian_stats(ref)
    draws = [rng.standard_normal((300, 3)) * [1.5, 1.0, 0.7] + [0.4, 0, 0] for _ in range(200)]
    fresh = np.array([frechet_distance_from_stats(*gaussian_stats(d), mu, cov) for d in draws])
    ses = [frechet_with_se(d, ref, n_boot=100, rng=i)[1] for i, d in enumerate(draws[:20])]
    assert 1 / 1.25 < np.mean(ses) / fresh.std(ddof=1) < 1.25, (np.mean(ses), fresh.std(ddof=1))
    assert frechet_with_se(draws[0], ref, n_boot=0)[0] == pytest.approx(fresh[0], rel=1e-8)


def test_frechet_floor_is_the_mean_over_resampled_data_and_shrinks_like_one_over_n():
    real = np.random.default_rng(6).standard_normal((500, 4))
    mu, cov = gaussian_stats(real)
    rng = np.random.default_rng(7)
    by_hand = [frechet_distance_from_stats(*gaussian_stats(real[rng.integers(0, 500, 100)]), mu, cov)
               for _ in range(10)]
    assert frechet_floor(real, 100, draws=10, rng=7)[0] == pytest.approx(np.mean(by_hand), rel=1e-8)
    small, large = frechet_floor(real, 50, draws=40)[0], frechet_floor(real, 800, draws=40)[0]
    assert 8 < small / large < 32        # bias ~ 1/n: a factor 16 between n = 50 and 800


# ---- paired differences ---------------------------------------------------------------------------
def test_paired_bootstrap_cancels_the_shared_noise():
    a = np.random.default_rng(8).standard_normal(500)
    diff, se = paired_bootstrap(np.mean, a, a + 0.25)
    assert diff == pytest.approx(-0.25, abs=1e-14) and se < 1e-12
    b = np.random.default_rng(9).standard_normal(500)
    diff, se = paired_bootstrap(np.mean, a, b, n_boot=800)
    assert se == pytest.approx(math.sqrt(2 / 500), rel=0.2)


@pytest.mark.parametrize("call, match", [
    (lambda: kid(np.zeros((5, 2)), np.zeros((5, 3))), "dimension"),
    (lambda: knn_radii(np.zeros((3, 2)), k=3), "k must"),
    (lambda: quantiles_with_se([1.0]), "1-D sample"),
    (lambda: frechet_floor(np.zeros((5, 2)), 1), "n must"),
    (lambda: paired_bootstrap(np.mean, np.zeros(3), np.zeros(4)), "same number"),
])
def test_bad_inputs_raise_one_clear_value_error(call, match):
    with pytest.raises(ValueError, match=match):
        call()
