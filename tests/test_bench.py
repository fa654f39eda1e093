"""The benchmark code (benchmarks/) on tiny sizes, and the diffusers parity check.

diffusers is a benchmark-only extra (``pip install -e '.[bench]'``): the tests that need it skip
with a message when it is missing. Timings themselves are not asserted (they depend on the load);
what is asserted is the arithmetic of the ratios, the alternation, and the parity of outputs.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:          # benchmarks/ lives next to ddim_lib/, outside the package
    sys.path.insert(0, str(ROOT))

import ddim_lib  # noqa: E402
from benchmarks import run, sampling, timing  # noqa: E402


def _needs_diffusers():
    return pytest.importorskip("diffusers", reason="diffusers is the benchmark-only extra: pip install -e '.[bench]'")


@pytest.fixture(autouse=True)
def _one_thread(single_thread):
    """Tiny tensors on a shared 2-core machine: one intra-op thread (conftest's fixture) is faster."""


@pytest.fixture
def tiny_unet():
    """The digits UNet architecture at its preset size (0.7M parameters, 8x8): fast at batch <= 4."""
    torch.manual_seed(0)
    return ddim_lib.build_model("digits").eval()


# ---- timing ------------------------------------------------------------------------------------
def test_alternate_rotates_and_counts_calls():
    calls = []
    fns = {name: (lambda name=name: calls.append(name)) for name in ("a", "b", "c")}
    times = timing.alternate(fns, repeats=3, warmup=1)
    # warm-up a, b, c; then rounds starting at a, b, c in turn
    assert calls == ["a", "b", "c", "a", "b", "c", "b", "c", "a", "c", "a", "b"]
    assert {k: len(v) for k, v in times.items()} == {"a": 3, "b": 3, "c": 3}
    assert all(s >= 0 for v in times.values() for s in v)


def test_ratio_is_median_over_median_with_per_round_spread():
    out = timing.ratio([2.0, 4.0, 9.0], [1.0, 2.0, 3.0])
    assert out["ratio"] == 4.0 / 2.0
    assert out["per_round"] == [2.0, 2.0, 3.0]
    assert (out["low"], out["high"]) == (2.0, 3.0)
    assert out["ratio_of_minima"] == 2.0 / 1.0
    with pytest.raises(ValueError):
        timing.ratio([1.0], [1.0, 2.0])
    with pytest.raises(ValueError):
        timing.alternate({"a": lambda: None}, repeats=0)


def test_summary_median_and_range():
    s = timing.summary([3.0, 1.0, 2.0, 10.0])
    assert (s["median_s"], s["min_s"], s["max_s"], s["n"]) == (2.5, 1.0, 10.0, 4)


# ---- sampling ----------------------------------------------------------------------------------
def test_sampler_overhead_smoke(tiny_unet):
    schedule = ddim_lib.NoiseSchedule.linear(1000)
    out = sampling.sampler_overhead(tiny_unet, schedule, S=3, batch=2, repeats=2, warmup=0)
    assert out["S"] == 3 and out["sample"]["n"] == 2 and out["ratio"] > 0


def test_bare_forwards_visit_the_samplers_timesteps():
    """The baseline of ratio 1 must call the model at exactly the t's the sampler calls it at."""
    schedule = ddim_lib.NoiseSchedule.linear(1000)
    seen = []

    def model(x, t):
        seen.append(t.tolist())
        return torch.zeros_like(x)

    ddim_lib.sample(model, torch.zeros(2, 1, 8, 8), schedule, 5)
    assert seen == [t.tolist() for t in sampling._t_batches(schedule, 5, 2)]


def test_diffusers_loop_matches_eq12_for_an_analytic_model():
    """diffusers' loop equals ddim_lib.sample in float64 for eps(x, t) = x * c_t (no network):
    with the alpha-bars made identical, the two differ only by float64 round-off (~1e-16 * 50 steps)."""
    _needs_diffusers()
    schedule = ddim_lib.NoiseSchedule.linear(1000)

    def model(x, t):
        return x * (0.5 + t[:, None].double() / 2000).to(x.dtype)

    x_T = torch.randn(3, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    sched = sampling.diffusers_scheduler(schedule, alpha_bars_from_ours=True)
    sched.alphas_cumprod = schedule.alpha_bars.double().clone()    # float64 on both sides here
    ours = ddim_lib.sample(model, x_T, schedule, 50)
    theirs = sampling.diffusers_sample(model, x_T, sched, 50)
    torch.testing.assert_close(theirs, ours, rtol=1e-12, atol=1e-12)


def test_diffusers_parity_holds(tiny_unet):
    _needs_diffusers()
    out = sampling.diffusers_parity(tiny_unet, ddim_lib.NoiseSchedule.linear(1000), S=10, batch=4)
    # both are float32 roundings of the float64 run: relative errors of a few hundred ulps at most
    # (50 rounding steps through a network), far below a formula difference (checked below)
    assert out["ours_vs_float64"] < 1e-4 * out["max_abs_x0"]
    assert out["diffusers_vs_float64"] < 1e-4 * out["max_abs_x0"]


def test_diffusers_parity_detects_a_different_configuration(tiny_unet, monkeypatch):
    """The check can fail: diffusers' default steps_offset=1 shifts every timestep by one."""
    _needs_diffusers()
    from diffusers import DDIMScheduler

    schedule = ddim_lib.NoiseSchedule.linear(1000)

    def shifted(schedule, alpha_bars_from_ours):
        return DDIMScheduler(num_train_timesteps=1000, trained_betas=schedule.betas.numpy(), clip_sample=False,
                             set_alpha_to_one=True, steps_offset=1, timestep_spacing="leading")

    monkeypatch.setattr(sampling, "diffusers_scheduler", shifted)
    with pytest.raises(AssertionError, match="disagree beyond float32"):
        sampling.diffusers_parity(tiny_unet, schedule, S=10, batch=4)


def test_dpm_diffusers_loop_matches_ours_for_an_analytic_model():
    """diffusers' DPMSolverMultistepScheduler loop equals ddim_lib.dpm_solver_pp_2m for eps(x, t) = x * c_t
    (no network), x in float64. diffusers rounds its sigmas to float32 and steps in float32, so the
    agreement is to float32 level (measured 4e-6 at max |x_0| 3.5); the first-order solver differs by 0.09."""
    _needs_diffusers()
    from ddim_lib.dpm_solver import dpm_solver_pp_2m

    schedule = ddim_lib.NoiseSchedule.linear(1000)

    def model(x, t):
        return x * (0.5 + t[:, None].double() / 2000).to(x.dtype)

    x_T = torch.randn(3, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    tau = ddim_lib.timesteps(1000, 20)
    ours = dpm_solver_pp_2m(model, x_T, schedule, tau, lower_order_final=False)
    theirs = sampling.dpm_diffusers_sample(model, x_T, sampling.dpm_scheduler(schedule, True), tau)
    torch.testing.assert_close(theirs, ours, rtol=2e-5, atol=2e-5)
    first_order = dpm_solver_pp_2m(model, x_T, schedule, tau, order=1)
    assert (first_order - ours).abs().max() > 1e-3          # the test can tell the orders apart


def test_dpm_parity_holds(tiny_unet):
    _needs_diffusers()
    out = sampling.dpm_parity(tiny_unet, ddim_lib.NoiseSchedule.linear(1000), S=10, batch=4)
    assert out["ours_vs_diffusers"] <= out["tolerance"] == sampling.DPM_TOLERANCE * out["max_abs_x0"]
    assert out["ours_vs_float64"] < 1e-5 * max(1.0, out["max_abs_x0"])     # ours: float32 round-off only


@pytest.mark.parametrize("overrides", [dict(solver_order=1), dict(solver_type="heun")])
def test_dpm_parity_detects_a_different_method(tiny_unet, monkeypatch, overrides):
    """The check can fail: the first-order solver, or the "heun" form of the second-order term."""
    _needs_diffusers()
    configured = sampling.dpm_scheduler
    monkeypatch.setattr(sampling, "dpm_scheduler",
                        lambda schedule, alpha_bars_from_ours: configured(schedule, alpha_bars_from_ours, **overrides))
    with pytest.raises(AssertionError, match="disagree beyond float32"):
        sampling.dpm_parity(tiny_unet, ddim_lib.NoiseSchedule.linear(1000), S=10, batch=4)


def test_table_prints_the_dpm_parity_line():
    part = {"S": 20, "batch": 16, "ours_vs_diffusers": 4.6e-5, "tolerance": 3.3e-4, "ours_vs_float64": 4e-6,
            "diffusers_vs_float64": 5e-5, "max_abs_x0": 1.65, "ours_vs_diffusers_own_alpha_bars": 1.9e-5}
    text = run.table({"config": {"threads": 1}, "machine": {"load_average_at_start": None},
                      "digits_model": "shipped", "gpu": "no GPU", "parts": {"dpm_parity": part}})
    line = next(line for line in text.splitlines() if line.startswith("DPM-Solver++(2M) parity"))
    assert "4.60e-05 <= 3.30e-04" in line
    failed = run.table({"config": {"threads": 1}, "machine": {"load_average_at_start": None}, "digits_model": "x",
                        "gpu": "no GPU", "parts": {"dpm_parity": {"error": "AssertionError: disagree"}}})
    assert "DPM-Solver++(2M) parity with diffusers: FAILED" in failed


def test_training_step_smoke():
    _needs_diffusers()
    out = run._training(run.BenchConfig(**run.QUICK), quick=True)
    assert out["parameters"]["ddim_lib"] == out["parameters"]["diffusers"]    # same architecture
    assert out["ddim_lib"]["n"] == 1 and out["ratio"] > 0 and out["default_adam"]["ratio"] > 0


def test_diffusers_cifar10_unet_has_the_reference_count():
    _needs_diffusers()
    from benchmarks import training

    with torch.device("meta"):      # no memory, no initialisation cost
        unet = training.diffusers_cifar10_unet()
    assert sum(p.numel() for p in unet.parameters()) == training.CIFAR10_PARAMETERS == 35_746_307


def test_ddim_vs_ddpm_smoke(tiny_unet):
    schedule = ddim_lib.NoiseSchedule.linear(10, beta_start=1e-3, beta_end=0.3)
    out = sampling.ddim_vs_ddpm(tiny_unet, schedule, n=80, S_grid=[2, 5])
    assert [row["S"] for row in out["ddim"]] == [2, 5] and out["floor"]["min"] > 0
    for key, variance in (("eta1", "beta_tilde"), ("sigma_hat", "beta")):
        ref = out[key]
        assert ref["steps"] == 10 and ref["variance"] == variance
        assert ("ratio" in ref) == (ref["matched_S"] is not None) != ("unmatched" in ref)
        if ref["matched_S"] is not None:   # the smallest S within 10%
            fds = {row["S"]: row["fd"] for row in out["ddim"]}
            assert fds[ref["matched_S"]] <= 1.1 * ref["fd"]
            assert all(fds[S] > 1.1 * ref["fd"] for S in fds if S < ref["matched_S"])
    unmatched = any(out[key]["matched_S"] is None for key in ("eta1", "sigma_hat"))
    assert ("ddim_at_T" in out) == unmatched and (not unmatched or out["ddim_at_T"]["S"] == 10)


def test_table_prints_both_ratio4_rows():
    ddim = [{"S": 10, "seconds": 1.0, "fd": 9.0}, {"S": 20, "seconds": 2.0, "fd": 4.2}]
    part = {"n": 64, "features": "f", "ddim": ddim, "floor": {"mean": 1.0, "min": 0.9, "max": 1.1},
            "eta1": {"steps": 1000, "fd": 4.0, "seconds": 100.0, "matched_S": 20, "ddim_fd": 4.2,
                     "ratio": 0.02, "speedup": 50.0},
            "sigma_hat": {"steps": 1000, "fd": 3.0, "seconds": 100.0, "matched_S": None,
                          "unmatched": "no S in [10, 20] came within 10%"}}
    text = run.table({"config": {"threads": 1}, "machine": {"load_average_at_start": None},
                      "digits_model": "shipped", "gpu": "no GPU", "parts": {"ddim_vs_ddpm": part}})
    eta1 = next(line for line in text.splitlines() if line.startswith("4a"))
    sigma_hat = next(line for line in text.splitlines() if line.startswith("4b"))
    assert "0.020" in eta1 and "yes" in eta1 and "50.0x" in eta1
    assert "no S in [10, 20]" in sigma_hat


# ---- the command -------------------------------------------------------------------------------
def test_table_and_atomic_json(tmp_path):
    results = {"config": {"threads": 1}, "machine": {"load_average_at_start": None}, "digits_model": "stand-in",
               "gpu": "no GPU", "parts": {
                   "sampler_overhead": {"ratio": 1.01, "low": 0.99, "high": 1.03, "S": 50, "batch": 256,
                                        "sample": {"median_s": 1.01}, "bare_forwards": {"median_s": 1.0}},
                   "training_step": {"error": "RuntimeError: boom"}}}
    text = run.table(results)
    assert "1.010" in text and "[0.990, 1.030]" in text and "yes" in text
    assert "RuntimeError: boom" in text
    path = tmp_path / "deep" / "results.json"
    run.write_json(results, path)
    assert json.loads(path.read_text()) == results
    assert [p.name for p in path.parent.iterdir()] == ["results.json"]     # no temporary file left


@pytest.mark.parametrize("argv", [["--repeats", "0"], ["--threads", "0"], ["--fd-samples", "-3"]])
def test_bad_arguments_exit_with_one_line(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        run.parse_args(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("python -m benchmarks.run: error:") and "Traceback" not in "".join(err)


def test_notebook_timing_reports_failures(tmp_path):
    from benchmarks import notebooks

    header = ("---\njupytext:\n  text_representation:\n    extension: .md\n    format_name: myst\n"
              "    format_version: 0.13\nkernelspec:\n  display_name: Python 3\n  language: python\n"
              "  name: python3\n---\n")
    good, bad = tmp_path / "01_good.md", tmp_path / "02_bad.md"
    good.write_text(header + "```{code-cell} ipython3\nx = 1 + 1\n```\n")
    bad.write_text(header + "```{code-cell} ipython3\nraise ValueError('deliberate')\n```\n")
    (tmp_path / "README.md").write_text("# not a chapter\n")
    assert [p.name for p in notebooks.chapters(tmp_path)] == ["01_good.md", "02_bad.md"]
    assert notebooks.execute_notebook(good)["status"] == "ok"
    row = notebooks.execute_notebook(bad)
    assert row["status"] == "error" and "deliberate" in row["error"]


def test_chapter_times_are_read_from_the_book_log():
    """Sphinx prefixes myst-nb's info and warning lines with the document's path."""
    from benchmarks import notebooks

    log = ("reading sources... [ 40%] notebooks/01_forward_process\n"
           "/repo/notebooks/01_forward_process.md: Executed notebook in 3.21 seconds [mystnb]\n"
           "/repo/notebooks/08_quality.md: WARNING: Executing notebook failed: CellExecutionError [mystnb.exec]\n")
    rows = notebooks.executed_in_log(log)
    assert [(r["notebook"], r["status"]) for r in rows] == [("01_forward_process.md", "ok"), ("08_quality.md", "error")]
    assert rows[0]["seconds"] == 3.21


def test_loop_overhead_smoke():
    _needs_diffusers()
    out = sampling.loop_overhead(ddim_lib.NoiseSchedule.linear(1000), S=5, batch=2, shape=(1, 8, 8), repeats=2)
    assert set(out["us_per_step"]) == {"ddim_lib", "diffusers"} and out["ratio"] > 0
