"""Dialled-error denoisers and the exact-law divergence (ddim_lib.dial), in float64."""
import hashlib
import math

import numpy as np
import pytest
import torch

import ddim_lib as dl
from ddim_lib.dial import (GRID_SAMPLERS, flip, interpolation_latents, load_grid, load_interpolation, paired_difference, DialledEps, RandomFeatureField, bandwidth, detectable_effect, eta_trend,
                           fingerprint, grid_chunks, grid_key, grid_samples, jackknife_se, kernel_mean, kernel_self,
                           mmd2, plausibility, per_t_error, seed_for, table1_laws)

SCHEDULE = dl.NoiseSchedule.linear(T=1000)


def _law():
    """A 3-D mixture with unequal weights and per-coordinate stds (a harder case than chapter 6's)."""
    return dl.GaussianMixture([[0.5, -1.0, 0.2], [-0.7, 0.4, 1.1]], [[0.2, 0.5, 0.1], [0.3, 0.1, 0.4]], [0.3, 0.7])


@pytest.mark.parametrize("abar", [1.0, 0.6, 0.02])
def test_field_mean_square_is_exact(abar):
    law = _law().noised(abar) if abar < 1 else _law()
    field = RandomFeatureField(3, n_features=32, length_scale=0.7, seed=3)
    g = torch.Generator().manual_seed(0)
    values = (field(law.sample(200_000, g))**2).mean(1)
    z = (values.mean() - field.mean_sq(law)) / (values.std() / math.sqrt(len(values)))
    assert abs(z) < 4, z


def test_dialled_error_is_c_squared_per_dimension():
    law = _law()
    gen = torch.Generator().manual_seed(1)
    model = DialledEps(law, SCHEDULE, 0.3)
    err = per_t_error(model, model.oracle, law, SCHEDULE, [3, 300, 990], 20_000, gen, model_dtype=torch.float64,
                      batch=5000)
    for t, (mean, se) in err.items():
        assert abs(mean - 0.09) < 4 * se, (t, mean, se)
    x = torch.randn(7, 3, generator=gen, dtype=torch.float64)
    t = torch.tensor([0, 5, 5, 100, 500, 900, 999])
    torch.testing.assert_close(DialledEps(law, SCHEDULE, 0.0)(x, t), model.oracle(x, t), rtol=0, atol=0)
    # linear in c
    torch.testing.assert_close(DialledEps(law, SCHEDULE, 0.6)(x, t) - model.oracle(x, t),
                               2 * (model(x, t) - model.oracle(x, t)), rtol=1e-12, atol=1e-12)


def test_kernel_expectations_match_monte_carlo():
    law, ell = _law(), 0.4
    g = torch.Generator().manual_seed(2)
    x = torch.randn(4, 3, generator=g, dtype=torch.float64)
    y = law.sample(400_000, g)
    draws = torch.exp(-torch.cdist(x, y)**2 / (2 * ell**2))
    z = (draws.mean(1) - kernel_mean(law, x, ell)) / (draws.std(1) / math.sqrt(y.shape[0]))
    assert z.abs().max() < 4, z
    y2 = law.sample(400_000, g)
    pair = torch.exp(-((y - y2)**2).sum(1) / (2 * ell**2))
    assert abs(pair.mean() - kernel_self(law, ell)) < 4 * pair.std() / math.sqrt(len(pair))


def test_mmd2_is_the_u_statistic_and_unbiased():
    law, ell = _law(), 0.5
    g = torch.Generator().manual_seed(3)
    x = law.sample(600, g)
    value, left_out, within = mmd2(x, law, ell, groups=6)
    k = torch.exp(-torch.cdist(x, x)**2 / (2 * ell**2))
    n = x.shape[0]
    direct = (k.sum() - k.diagonal().sum()) / (n * (n - 1)) - 2 * kernel_mean(law, x, ell).mean() + kernel_self(law, ell)
    assert value == pytest.approx(direct.item(), rel=1e-10, abs=1e-14)
    first = x[:100]
    kf = torch.exp(-torch.cdist(first, first)**2 / (2 * ell**2))
    direct0 = (kf.sum() - kf.diagonal().sum()) / (100 * 99) - 2 * kernel_mean(law, first, ell).mean() + kernel_self(law, ell)
    assert within[0].item() == pytest.approx(direct0.item(), rel=1e-10, abs=1e-14)
    # Exact samples: zero within 4 s.e.; a shifted law: far from zero.
    value, left_out, _ = mmd2(law.sample(4000, g), law, ell)
    assert abs(value) < 4 * jackknife_se(left_out)
    value, left_out, _ = mmd2(law.sample(4000, g) + 0.3, law, ell)
    assert value > 10 * jackknife_se(left_out)


def test_eta_trend_is_the_least_squares_slope():
    etas = [0.0, 0.2, 0.5, 1.0]
    g = torch.Generator().manual_seed(4)
    left_out = torch.randn(4, 10, generator=g, dtype=torch.float64).numpy()
    values = np.array([1.0, 1.3, 1.4, 2.2])
    slope, se = eta_trend(etas, values, left_out)
    assert slope == pytest.approx(np.polyfit(etas, values, 1)[0], rel=1e-12)
    slopes = [np.polyfit(etas, left_out[:, j], 1)[0] for j in range(10)]
    assert se == pytest.approx(jackknife_se(slopes), rel=1e-10)
    with pytest.raises(ValueError, match="etas"):
        eta_trend([0.0], [1.0], [[1.0]])


def test_detectable_effect_is_the_normal_power_formula():
    # z_0.95 = 1.6449, z_0.80 = 0.8416
    assert detectable_effect(1.0) == pytest.approx(1.644854 + 0.841621, abs=1e-5)
    assert detectable_effect(2.0, alpha=0.025, power=0.5) == pytest.approx(2 * 1.959964, abs=1e-5)
    with pytest.raises(ValueError, match="alpha"):
        detectable_effect(1.0, alpha=1.5)


def test_grid_cells_are_paired_and_prefix_stable():
    laws = table1_laws()
    assert set(laws) == {"ring", "cube"} and laws["cube"].dim == 16
    assert bandwidth(laws["cube"]) == pytest.approx(0.1 * math.sqrt(32))
    ring = laws["ring"]
    oracle = dl.OracleEps(ring, SCHEDULE)
    one = grid_samples(oracle, "ring", ring, SCHEDULE, 10, "eta = 1.0", chunks=1)
    two = grid_samples(oracle, "ring", ring, SCHEDULE, 10, "eta = 1.0", chunks=2)
    assert one.shape == (grid_chunks(10)[0], 2)
    torch.testing.assert_close(two[: one.shape[0]], one, rtol=0, atol=0)
    assert fingerprint(two) == fingerprint(one)
    assert fingerprint(two[1:]) != fingerprint(one)
    # eta = 0 is deterministic given x_T; the same x_T for every sampler (eta = 0 and 0.0-noise sigma_hat differ)
    a = grid_samples(oracle, "ring", ring, SCHEDULE, 10, "eta = 0.0", chunks=1)
    b = grid_samples(DialledEps(ring, SCHEDULE, 0.0), "ring", ring, SCHEDULE, 10, "eta = 0.0", chunks=1)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert grid_key("ring", 0.1, 10, "eta = 0.0") == "ring|c=0.1|S=10|eta = 0.0"
    assert set(GRID_SAMPLERS) == {"eta = 0.0", "eta = 0.2", "eta = 0.5", "eta = 1.0", "sigma_hat"}
    with pytest.raises(ValueError, match="sampler"):
        grid_samples(oracle, "ring", ring, SCHEDULE, 10, "eta = 2")


def test_seed_for_is_a_stable_hash():
    expected = int.from_bytes(hashlib.sha256(b"xT/ring/10/0").digest()[:8], "little") >> 1
    assert seed_for("xT", "ring", 10, 0) == expected
    assert seed_for("xT", "ring", 10, 1) != expected


def test_plausibility_of_real_and_noise_images():
    digits = dl.load_dataset("digits")
    real, held = digits[:1500], digits[1500:1600]
    noise = torch.rand(100, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    p_real, p_noise = plausibility(held, real), plausibility(noise, real)
    assert set(p_real) == {"confidence", "nn", "inside"} and all(v.shape == (100,) for v in p_real.values())
    assert p_real["confidence"].mean() > 0.9 and p_real["inside"].mean() > 0.7
    assert p_noise["nn"].min() > p_real["nn"].max() * 0.9 and p_noise["inside"].mean() < 0.2
    # A real digit scored against a set that contains it: distance 0, inside.
    p_self = plausibility(real[:5], real)
    np.testing.assert_allclose(p_self["nn"], 0, atol=1e-7)
    assert p_self["inside"].all()
    with pytest.raises(ValueError, match="shape"):
        plausibility(noise.reshape(100, 64), real)


def _cell(value, left_out, n=100):
    return {"value": value, "left_out": list(left_out), "n": n}


def test_paired_difference_and_flip():
    a, b = _cell(2.0, [2.1, 1.9, 2.0, 2.0]), _cell(1.0, [1.1, 0.9, 1.0, 1.0])
    diff, se = paired_difference(a, b)
    assert diff == 1.0 and se == pytest.approx(0.0, abs=1e-12)          # a common shift cancels
    with pytest.raises(ValueError, match="paired"):
        paired_difference(a, _cell(1.0, [1.0, 1.0]))
    # eta = 1 minus eta = 0: +5 s.e. at c = 0, +1 at 0.01 (unresolved), -4 at 0.1 and -9 at 1.
    cells = {}
    for c, z in ((0.0, 5.0), (0.01, 1.0), (0.1, -4.0), (1.0, -9.0)):
        left0 = np.array([0.0, 0.0, 0.0, 0.0])
        step = np.array([1.0, -1.0, 0.0, 0.0])                          # jackknife s.e. of the difference: sqrt(3/4 * 2) = sqrt(1.5)
        se = math.sqrt(1.5)
        cells[grid_key("ring", c, 10, "eta = 0.0")] = _cell(0.0, left0) | {"c": c}
        cells[grid_key("ring", c, 10, "eta = 1.0")] = _cell(z * se, left0 + step) | {"c": c}
    f = flip(cells, "ring", 10)
    assert f["wins"] == [0.0] and f["loses"] == [0.1, 1.0] and f["c_win"] == 0.0 and f["c_lose"] == 0.1
    assert f["z"][0.01] == pytest.approx(1.0)
    assert flip(cells, "cube", 10)["c_win"] is None


def test_interpolation_latents_and_loaders(tmp_path):
    paths = interpolation_latents(5, [0.0, 0.5, 1.0])
    assert paths["slerp"].shape == paths["lerp"].shape == (3, 5, 64)
    torch.testing.assert_close(paths["slerp"][0], paths["lerp"][0])
    torch.testing.assert_close(paths["slerp"][-1], paths["lerp"][-1])
    assert (paths["lerp"][1].norm(dim=1) < paths["slerp"][1].norm(dim=1)).all()
    torch.testing.assert_close(interpolation_latents(3, [0.0])["slerp"][0], paths["slerp"][0, :3])  # prefix-stable
    with pytest.raises(ValueError, match="no results file"):
        load_grid(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(ValueError, match="not a dial grid"):
        load_grid(tmp_path / "bad.json")
    with pytest.raises(ValueError, match="not an interpolation"):
        load_interpolation(tmp_path / "bad.json")


def test_bad_input():
    law = _law()
    with pytest.raises(ValueError, match="c must"):
        DialledEps(law, SCHEDULE, -1.0)
    with pytest.raises(ValueError, match="dimension"):
        DialledEps(law, SCHEDULE, 0.1, field=RandomFeatureField(2))
    with pytest.raises(ValueError, match="length_scale"):
        RandomFeatureField(2, length_scale=0.0)
    with pytest.raises(ValueError, match="ell"):
        mmd2(law.sample(40), law, 0.0)
    with pytest.raises(ValueError, match="groups"):
        mmd2(law.sample(10), law, 0.5, groups=10)


def test_shipped_grid_is_this_codes():
    """results/dial_grid.json: manifest complete; one c > 0 cell's first chunk regenerated matches its
    fingerprint and its own MMD^2 to round-off, and lies within 4 chunk-level s.d. of the cell's value."""
    grid = load_grid()
    m = grid["manifest"]
    for field in ("commands", "commit", "seeds", "cpu_seconds", "machine", "chunk_size"):
        assert field in m, field
    assert {"kernel_std", "n", "per_t"} <= set(grid["unet_error"])
    laws = table1_laws()
    cell = grid["cells"][grid_key("cube", 0.1, 10, "eta = 1.0")]
    model = DialledEps(laws["cube"], SCHEDULE, 0.1)
    x = grid_samples(model, "cube", laws["cube"], SCHEDULE, 10, "eta = 1.0", chunks=1)
    np.testing.assert_allclose(fingerprint(x), cell["fingerprint"], rtol=1e-9)
    own = mmd2(x, laws["cube"], bandwidth(laws["cube"]), groups=4)[0]
    np.testing.assert_allclose(own, cell["within"][0], rtol=1e-9)
    assert abs(own - cell["value"]) < 4 * np.std(cell["within"], ddof=1)


def test_shipped_interpolation_scores_are_this_codes():
    """results/dial_interp.json: the first pair's decoded interpolants, regenerated, score as shipped."""
    data = load_interpolation()
    m = data["manifest"]
    assert m["pairs"] >= 48 and {"command", "commit", "seeds", "cpu_seconds", "machine"} <= set(m)
    unet, schedule = dl.load_pretrained("digits")
    paths = interpolation_latents(m["pairs"], m["lambdas"])
    for kind in ("slerp", "lerp"):
        images = dl.sample(unet, paths[kind][:, :1].reshape(-1, 1, 8, 8).float(), schedule, 50)
        live = plausibility(images, dl.load_dataset("digits"))
        for measure in ("confidence", "nn"):
            shipped = np.array(data["scores"][kind][measure])[:, 0]
            np.testing.assert_allclose(live[measure], shipped, atol=1e-4)
