"""results/table1_digits.json: the shipped Table 1 grid is well formed, and re-derivable.

The grid costs CPU-hours (scripts/table1_digits.py), so it is shipped; these tests check that the
file says what it must (manifest, sizes, errors, no machine paths) and re-run one cell's first chunk
(250 samples, eta = 1 at S = 20: a stochastic cell, seconds of CPU) to check that this code and this
model reproduce the shipped samples (fingerprint, to float32 round-off) and the shipped measures
(Frechet distance of the chunk to round-off; its KID and precision inside the shipped intervals).
"""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

import ddim_lib as dl
from ddim_lib import metrics, table1
from ddim_lib.evaluate import DigitsFeatures, FrechetReference

RESULTS = table1.load_results()
CELLS = RESULTS["cells"]


def test_manifest_records_how_the_grid_was_made():
    m = RESULTS["manifest"]
    for key in ("generate_runs", "analyse_command", "analyse_commit", "seeds", "cpu_s_generate", "machine",
                "model", "sample_steps"):
        assert key in m, key
    assert m["generate_runs"] and all(len(r["commit"]) >= 40 for r in m["generate_runs"])
    assert m["seeds"]["latent_seed"] == table1.LATENT_SEED and m["seeds"]["noise_seed"] == table1.NOISE_SEED
    assert m["seeds"]["chunk"] == table1.CHUNK
    assert m["cpu_s_generate"] > 0 and m["machine"]["cpu_count"] >= 1
    assert m["sample_steps"] == sum(c["n"] * c["S"] for c in CELLS.values())


def test_the_shipped_model_is_the_one_measured():
    import hashlib

    from ddim_lib.pretrained import pretrained_path

    digest = hashlib.sha256((pretrained_path("digits") / "model.safetensors").read_bytes()).hexdigest()
    assert RESULTS["manifest"]["model"]["sha256"] == digest


def test_no_machine_paths_in_the_results_file():
    text = table1.RESULTS_FILE.read_text()
    for fragment in ("/tmp", "/work/", "/home/", "/root/", "\\\\Users"):
        assert fragment not in text, fragment


def test_every_cell_has_its_measures_with_errors():
    assert CELLS
    for key, c in CELLS.items():
        assert key == table1.cell_key(c["row"], c["spacing"], c["S"])
        assert c["n"] % table1.CHUNK == 0 and c["n"] >= table1.CHUNK
        for measure in ("fd", "kid", "precision", "recall", "nn_mean"):
            value, se = c[measure]
            assert math.isfinite(value) and se > 0, (key, measure)
        assert len(c["fingerprint"]["per_sample_sum"]) == 64


def test_grid_sizes():
    """The sizes the book states: every uniform cell with S <= 100 at n >= 1000; the S = 1000 cells of
    every row (DDIM and both DDPM references included) at n >= 500, as issue 17 asks; the quadratic cells
    at n >= 1000."""
    uniform = [c for c in CELLS.values() if c["spacing"] == "uniform" and c["S"] <= 100]
    assert len(uniform) == len(table1.ROWS) * len(table1.S_SMALL)
    assert min(c["n"] for c in uniform) >= 1000
    for row in table1.ROWS:
        assert CELLS[table1.cell_key(row, "uniform", 1000)]["n"] >= 500, row
    quadratic = [c for c in CELLS.values() if c["spacing"] == "quadratic"]
    assert len(quadratic) == len(table1.ROWS) * len(table1.S_SMALL) and min(c["n"] for c in quadratic) >= 1000


def test_e2_entries_are_paired_at_equal_n_with_intervals():
    for ref_key, entries in RESULTS["e2"].items():
        assert ref_key in CELLS and ref_key.endswith("|1000")
        for key, e in entries.items():
            assert e["n"] == min(CELLS[key]["n"], CELLS[ref_key]["n"])
            point, lo, hi = e["ratio"]
            assert 0 < lo <= hi and e["within_10pct"] == ("holds" if hi <= 1.1 else "fails" if lo > 1.1 else "not resolved")


def test_comparisons_refer_to_cells_and_verdicts_follow_the_rule():
    z = RESULTS["manifest"]["z_resolved"]
    for c in RESULTS["comparisons"]:
        assert c["a"] in CELLS and c["b"] in CELLS
        for measure in ("fd", "kid"):
            diff, se = c[f"{measure}_diff"]
            assert c[f"{measure}_verdict"] == ("resolved" if abs(diff) >= z * se else "not resolved")


@pytest.fixture(scope="module")
def rerun():
    torch.set_num_threads(1)
    model, schedule = dl.load_pretrained("digits")
    x = table1.run_chunk(model, schedule, "eta=1", "uniform", 20, chunk=0)
    return x, CELLS[table1.cell_key("eta=1", "uniform", 20)]


def test_rerun_reproduces_the_fingerprint(rerun):
    x, shipped = rerun
    assert table1.fingerprints_match(table1.fingerprint(x), shipped["fingerprint"])


def test_rerun_at_reduced_n_falls_inside_the_shipped_interval(rerun):
    x, shipped = rerun
    real = dl.load_dataset("digits")
    classifier = DigitsFeatures()
    real_feats = classifier(real)
    feats = classifier(x.clamp(-1, 1))
    # The chunk's own Frechet distance, as shipped, to round-off of float32 features.
    assert FrechetReference(real_feats)(feats) == pytest.approx(shipped["chunk0"]["fd"], rel=1e-4)
    # KID (unbiased, so its mean does not depend on n) and precision (a mean over samples) of the
    # 250-sample rerun lie within 3 of their own standard errors of the shipped full-n values.
    scale = RESULTS["manifest"]["kid_feature_scale"]
    kid_value, kid_se = metrics.kid(feats / scale, real_feats / scale)
    assert abs(kid_value - shipped["kid"][0]) <= 3 * math.hypot(kid_se, shipped["kid"][1])
    p = metrics.precision_recall(real_feats, feats, k=RESULTS["manifest"]["pr_k"], blocks=2)
    assert abs(p["precision"] - shipped["precision"][0]) <= 3 * math.hypot(p["precision_se"], shipped["precision"][1])


def test_fingerprints_tell_cells_apart():
    """The check has power: cells from the same latents but another sampler differ far beyond the tolerance."""
    a = CELLS[table1.cell_key("eta=0", "uniform", 10)]["fingerprint"]
    b = CELLS[table1.cell_key("eta=0", "uniform", 20)]["fingerprint"]
    assert not table1.fingerprints_match(a, b)
    assert np.max(np.abs(np.subtract(a["per_sample_sum"], b["per_sample_sum"]))) > 100 * 1e-3


def test_load_results_rejects_a_missing_or_malformed_file(tmp_path):
    with pytest.raises(ValueError, match="no results file"):
        table1.load_results(tmp_path / "absent.json")
    (tmp_path / "bad.json").write_text(json.dumps({"cells": {}}))
    with pytest.raises(ValueError, match="manifest"):
        table1.load_results(tmp_path / "bad.json")


@pytest.mark.parametrize("args, match", [(("eta=3", "uniform", 10), "unknown row"),
                                         (("eta=0", "cosine", 10), "spacing")])
def test_cell_key_rejects_unknown_rows_and_spacings(args, match):
    with pytest.raises(ValueError, match=match):
        table1.cell_key(*args)


def test_training_length_results_agree_with_the_grid():
    """results/training_length.json (scripts/table1_training_length.py): three training lengths, the
    stated n, a manifest, and the shipped 20000-step model's cells equal to the grid's own cells (same
    latents, noise seeds, clamping and features: two scripts, the same numbers)."""
    import json
    tl = json.loads(table1.RESULTS_FILE.with_name("training_length.json").read_text())
    m = tl["manifest"]
    assert [mod["steps"] for mod in m["models"]] == [2000, 5000, 20000]
    assert m["n"] >= 1000 and m["commit"] and m["cpu_s"] > 0 and "/tmp" not in json.dumps(m)
    for S in m["steps"]:
        for row in m["rows"]:
            ours = tl["cells"][f"20000|{row}|{S}"]
            grid = CELLS[table1.cell_key(row, "uniform", S)]
            assert ours["n"] == grid["n"]
            assert abs(ours["fd"][0] - grid["fd"][0]) <= 1e-6 * grid["fd"][0], (row, S)
            assert table1.fingerprints_match(ours["fingerprint"], grid["fingerprint"]), (row, S)
        for steps in (2000, 5000, 20000):
            d, se = tl["differences"][f"{steps}|{S}"]
            assert se > 0
