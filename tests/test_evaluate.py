"""ddim_lib.evaluate: the Frechet distance against closed forms, and the shipped digits features.

Tolerances: every closed-form comparison is float64 arithmetic on O(1) numbers through one sqrtm of
a k x k matrix (k <= 8), whose round-off is ~1e-13 relative; we allow 1e-9 relative (with an
absolute floor of 1e-9 for values near zero), which leaves room for the Schur method's error
estimate but would catch any wrong term (those err by O(1)).
"""
from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ddim_lib.evaluate import (DIGITS_CLASSIFIER_DIR, DigitsFeatures, FrechetReference, InceptionFeatures, digits_split,
                               frechet_distance, frechet_distance_from_stats, gaussian_stats,
                               get_features, pixel_features, reference_fd)

REL, ABS = 1e-9, 1e-9


def with_exact_moments(n: int, mean: np.ndarray, cov_factor: np.ndarray, seed: int) -> np.ndarray:
    """n points whose sample mean is exactly ``mean`` and unbiased sample covariance exactly A A^T."""
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((n, len(mean)))
    z -= z.mean(0)
    chol = np.linalg.cholesky(np.cov(z, rowvar=False))
    z = np.linalg.solve(chol, z.T).T                      # now cov(z) = I exactly (up to round-off)
    return mean + z @ cov_factor.T


def random_orthogonal(k: int, seed: int) -> np.ndarray:
    q, r = np.linalg.qr(np.random.default_rng(seed).standard_normal((k, k)))
    return q * np.sign(np.diag(r))


def fd_by_eigh(mu_a, cov_a, mu_b, cov_b) -> float:
    """An independent route: Tr (S_a S_b)^(1/2) = Tr (S_a^(1/2) S_b S_a^(1/2))^(1/2), all symmetric."""
    w, v = np.linalg.eigh(cov_a)
    root_a = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    inner = np.linalg.eigvalsh(root_a @ cov_b @ root_a)
    return float(np.sum((mu_a - mu_b) ** 2) + np.trace(cov_a) + np.trace(cov_b)
                 - 2 * np.sum(np.sqrt(np.clip(inner, 0, None))))


# ---- the distance ---------------------------------------------------------------------------------
def test_identical_sets_have_zero_distance():
    x = np.random.default_rng(0).standard_normal((400, 6)) * [1, 2, 3, 0.5, 0.1, 4]
    assert abs(frechet_distance(x, x)) < ABS * np.trace(np.cov(x, rowvar=False))


@settings(max_examples=40, deadline=None)
@given(k=st.integers(1, 8), seed=st.integers(0, 10_000))
def test_diagonal_gaussians_closed_form(k, seed):
    """Diagonal covariances commute, so sqrtm is elementwise: FD = |dmu|^2 + sum (sqrt(a) - sqrt(b))^2."""
    rng = np.random.default_rng(seed)
    mu_a, mu_b = rng.normal(size=k), rng.normal(size=k)
    var_a, var_b = rng.uniform(0.01, 4, k), rng.uniform(0.01, 4, k)
    expected = np.sum((mu_a - mu_b) ** 2) + np.sum((np.sqrt(var_a) - np.sqrt(var_b)) ** 2)
    got = frechet_distance_from_stats(mu_a, np.diag(var_a), mu_b, np.diag(var_b))
    assert got == pytest.approx(expected, rel=REL, abs=ABS)


def test_feature_sets_with_known_moments_match_the_closed_form():
    """Through gaussian_stats too: sets built to have exact means and covariances diag(a), diag(b)."""
    k = 5
    var_a, var_b = np.array([1.0, 0.25, 4.0, 2.0, 0.5]), np.array([0.5, 1.0, 1.0, 3.0, 0.5])
    mu_a, mu_b = np.arange(k, dtype=float), np.arange(k, dtype=float)[::-1] * 0.5
    a = with_exact_moments(300, mu_a, np.diag(np.sqrt(var_a)), seed=1)
    b = with_exact_moments(500, mu_b, np.diag(np.sqrt(var_b)), seed=2)
    expected = np.sum((mu_a - mu_b) ** 2) + np.sum((np.sqrt(var_a) - np.sqrt(var_b)) ** 2)
    assert frechet_distance(a, b) == pytest.approx(expected, rel=REL)
    assert frechet_distance(torch.from_numpy(a), torch.from_numpy(b)) == pytest.approx(expected, rel=REL)


@settings(max_examples=30, deadline=None)
@given(k=st.integers(1, 6), seed=st.integers(0, 10_000))
def test_general_covariances_match_the_symmetric_formula(k, seed):
    """Full covariances (non-commuting): sqrtm(S_a S_b) agrees with the symmetric eigh route."""
    rng = np.random.default_rng(seed)
    fa, fb = rng.normal(size=(k, k)), rng.normal(size=(k, k))
    cov_a, cov_b = fa @ fa.T + 0.1 * np.eye(k), fb @ fb.T + 0.1 * np.eye(k)
    mu_a, mu_b = rng.normal(size=k), rng.normal(size=k)
    got = frechet_distance_from_stats(mu_a, cov_a, mu_b, cov_b)
    assert got == pytest.approx(fd_by_eigh(mu_a, cov_a, mu_b, cov_b), rel=1e-7, abs=1e-7)
    assert got >= -1e-9


def test_commuting_covariances_sqrt_of_eigenvalues():
    """S_a = Q diag(l_a) Q^T, S_b = Q diag(l_b) Q^T: FD = sum (sqrt(l_a) - sqrt(l_b))^2 (equal means)."""
    q = random_orthogonal(4, seed=3)
    l_a, l_b = np.array([3.0, 1.0, 0.2, 0.05]), np.array([1.0, 1.0, 2.0, 0.8])
    got = frechet_distance_from_stats(np.zeros(4), q @ np.diag(l_a) @ q.T, np.zeros(4), q @ np.diag(l_b) @ q.T)
    assert got == pytest.approx(np.sum((np.sqrt(l_a) - np.sqrt(l_b)) ** 2), rel=REL)


@settings(max_examples=30, deadline=None)
@given(k=st.integers(1, 8), seed=st.integers(0, 10_000))
def test_frechet_reference_agrees_with_the_general_formula(k, seed):
    """The eigvalsh route of FrechetReference against sqrtm of the product (and the closed form)."""
    rng = np.random.default_rng(seed)
    ref = rng.standard_normal((50, k)) @ rng.standard_normal((k, k))
    other = rng.standard_normal((40, k)) * rng.uniform(0.1, 3, k) + rng.normal(size=k)
    expected = frechet_distance(other, ref)
    assert FrechetReference(ref)(other) == pytest.approx(expected, rel=1e-7, abs=1e-9)
    k = max(k, 2)                                  # the exact-moment construction needs k >= 2
    var_a, var_b = rng.uniform(0.01, 4, k), rng.uniform(0.01, 4, k)
    with_diag = with_exact_moments(200, np.zeros(k), np.diag(np.sqrt(var_b)), seed)
    got = FrechetReference(with_diag).from_stats(np.ones(k), np.diag(var_a))
    assert got == pytest.approx(k + np.sum((np.sqrt(var_a) - np.sqrt(var_b)) ** 2), rel=1e-9)


def test_symmetric():
    rng = np.random.default_rng(4)
    a = rng.standard_normal((200, 4)) @ rng.normal(size=(4, 4))
    b = rng.standard_normal((300, 4)) * 2 + 1
    assert frechet_distance(a, b) == pytest.approx(frechet_distance(b, a), rel=REL)


@pytest.mark.parametrize("shift", [0.0, 0.1, 1.0, 3.0])
def test_mean_shift_adds_its_squared_norm(shift):
    """Same covariance, means apart by d: FD = |d|^2 exactly (the trace term vanishes)."""
    rng = np.random.default_rng(5)
    x = rng.standard_normal((500, 3)) @ rng.normal(size=(3, 3))
    direction = np.array([1.0, -2.0, 0.5]) / np.sqrt(5.25)
    assert frechet_distance(x + shift * direction, x) == pytest.approx(shift**2, rel=REL, abs=ABS)


def test_invariant_under_a_common_rotation_and_translation():
    rng = np.random.default_rng(6)
    a, b = rng.standard_normal((300, 5)), rng.standard_normal((300, 5)) * 1.5 + 0.3
    q, c = random_orthogonal(5, seed=7), rng.normal(size=5)
    assert frechet_distance(a @ q + c, b @ q + c) == pytest.approx(frechet_distance(a, b), rel=1e-8)


def test_one_dimensional_case():
    """k = 1: FD = (m_a - m_b)^2 + (s_a - s_b)^2 with the unbiased standard deviations."""
    a = np.array([[0.0], [1.0], [2.0], [5.0]])
    b = np.array([[1.0], [-1.0], [0.5]])
    sa, sb = a.std(ddof=1), b.std(ddof=1)
    expected = (a.mean() - b.mean()) ** 2 + (sa - sb) ** 2
    assert frechet_distance(a, b) == pytest.approx(expected, rel=REL)


def test_rank_deficient_sets_stay_finite():
    """Fewer samples than dimensions: singular covariances; the distance of a set to itself stays ~0."""
    x = np.random.default_rng(8).standard_normal((10, 30))
    fd = frechet_distance(x, x)
    assert np.isfinite(fd) and abs(fd) < 1e-3 * np.trace(np.cov(x, rowvar=False))


def test_singular_pixel_covariances_of_the_digits():
    """The digits have constant (always blank) pixels, so their pixel covariance is singular; sqrtm
    then warns but still agrees with the symmetric eigh route. Measured: 4.34e-1 both ways, relative
    gap 1.1e-7 (halves of 500); we allow 1e-5."""
    x = torch.cat(digits_split()[:2]).reshape(-1, 64).double().numpy()
    assert np.linalg.eigvalsh(np.cov(x, rowvar=False))[0] < 1e-12           # singular indeed
    perm = np.random.default_rng(0).permutation(len(x))
    a, b = x[perm[:500]], x[perm[500:1000]]
    assert frechet_distance(a, b) == pytest.approx(fd_by_eigh(*gaussian_stats(a), *gaussian_stats(b)), rel=1e-5)


def test_gaussian_stats_are_the_unbiased_moments():
    x = np.array([[1.0, 2.0], [3.0, 0.0], [2.0, 4.0]])
    mu, cov = gaussian_stats(x)
    np.testing.assert_allclose(mu, [2.0, 2.0])
    np.testing.assert_allclose(cov, [[1.0, -1.0], [-1.0, 4.0]])   # sum of outer products / (N - 1)


@pytest.mark.parametrize("a, b, match", [
    (np.zeros((5, 2)), np.zeros((5, 3)), "dimension"),
    (np.zeros(5), np.zeros((5, 1)), "shape"),
    (np.zeros((1, 2)), np.zeros((5, 2)), "at least 2"),
    (np.full((5, 2), np.nan), np.zeros((5, 2)), "NaN"),
])
def test_bad_feature_sets_raise_value_error(a, b, match):
    with pytest.raises(ValueError, match=match):
        frechet_distance(a, b)


def test_reference_fd_needs_two_disjoint_halves():
    data = torch.randn(100, 2)
    assert reference_fd(data, 50, pixel_features, torch.Generator().manual_seed(0)) > 0
    with pytest.raises(ValueError, match="disjoint"):
        reference_fd(data, 51, pixel_features)


# ---- features ---------------------------------------------------------------------------------------
def test_pixel_features_flatten():
    x = torch.arange(24.0).reshape(2, 3, 2, 2)
    f = pixel_features(x)
    assert f.dtype == np.float64 and f.shape == (2, 12)
    np.testing.assert_array_equal(f[1], np.arange(12.0, 24.0))


def test_digits_classifier_held_out_accuracy():
    """The shipped weights reach the accuracy their manifest records on the held-out 20 % (360 images).

    Measured: 0.9722 (350 / 360). We require >= 0.95, and equality with the manifest to one image.
    """
    features = DigitsFeatures()
    _, x_test, _, y_test = digits_split()
    accuracy = float((features.predict(x_test) == y_test.numpy()).mean())
    manifest = json.loads((DIGITS_CLASSIFIER_DIR / "manifest.json").read_text())
    assert accuracy >= 0.95
    assert abs(accuracy - manifest["test_accuracy"]) <= 1 / len(y_test)
    assert features(x_test).shape == (len(x_test), 64)


def test_digits_features_separate_digits_from_noise():
    """Two random halves of the real digits are far closer in digits-feature FD than digits and noise."""
    x = torch.cat(digits_split()[:2])
    g = torch.Generator().manual_seed(0)
    features = DigitsFeatures()
    halves = reference_fd(x, 800, features, g)
    noise = torch.rand(800, 1, 8, 8, generator=g) * 2 - 1
    assert frechet_distance(features(noise), features(x[:800])) > 10 * halves


def test_digits_features_reject_other_shapes(tmp_path):
    with pytest.raises(ValueError, match="8, 8"):
        DigitsFeatures()(torch.zeros(3, 1, 4, 4))
    with pytest.raises(FileNotFoundError, match="train_digits_classifier"):
        DigitsFeatures(tmp_path)


class _FakeInception(torch.nn.Module):
    """A TorchScript stand-in with the interface of inception-2015-12-05.pt: mean pixel per channel."""

    def forward(self, x: torch.Tensor, return_features: bool = False) -> torch.Tensor:
        feats = x.mean(dim=(2, 3))
        return feats if return_features else feats.sum(1, keepdim=True)


def test_inception_features_feed_0_255_rgb_in_batches(tmp_path):
    path = tmp_path / "inception.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.script(_FakeInception()).save(str(path))
    extract = InceptionFeatures(path, batch_size=3)
    grey = torch.linspace(-1, 1, 7)[:, None, None, None].expand(7, 1, 4, 4)
    feats = extract(grey)
    expected = ((torch.linspace(-1, 1, 7) + 1) * 127.5).double()[:, None].expand(7, 3)
    np.testing.assert_allclose(feats, expected.numpy(), rtol=1e-6)


def test_inception_features_need_a_local_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="inception"):
        InceptionFeatures(tmp_path / "missing.pt")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not torchscript")
    with pytest.raises(ValueError, match="TorchScript"):
        InceptionFeatures(bad)
    with pytest.raises(ValueError, match="path"):
        get_features("inception")
    with pytest.raises(ValueError, match="unknown features"):
        get_features("clip")
