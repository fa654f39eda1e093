"""The classroom assignments' autograders tell right from plausible-wrong (otter-grader 7, no Docker).

For every assignment `otter assign` builds the student version and the autograder zip (with
ddim_lib's wheel inside); then the zip's hidden tests grade:
- the solution: full marks on every question;
- the untouched student notebook: zero on every question, and "Run All" raises nowhere;
- every planted mistake of PLANTED (at least one per question): zero on exactly the questions it
  should break, full marks elsewhere;
- a submission that wraps ddim_lib's own version of every graded function: zero on every question
  (each forbids it), although the wrapper is correct (it passes the public tests).
These gradings run in-process (`build_assignments.quick_grade`: otter's own test runner on the
zip's test files, without a kernel per notebook); `test_grade_folder_agrees_with_otter_run` checks
that `otter run` (through `make grade`'s code) gives the same scores, `test_standalone_environment`
grades the solution and the blank of every assignment in a fresh virtual environment built from the
zip's own requirements only.
"""
from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
import build_assignments  # noqa: E402

# assignment -> planted mistakes: (question, description, solution text, wrong text, questions that
# must score 0). Every other autograded question must keep full marks.
PLANTED = {
    "forward_marginal": [
        ("q1", "exclusive product: alpha_bar_0 = 1", "return torch.cumprod(1 - betas, dim=0)",
         "return torch.cumprod(torch.cat([torch.ones(1), 1 - betas[:-1]]), dim=0)", {"q1"}),
        ("q2", "variance for standard deviation on the noise",
         "math.sqrt(alpha_bar_t) * x0 + math.sqrt(1 - alpha_bar_t) * noise",
         "math.sqrt(alpha_bar_t) * x0 + (1 - alpha_bar_t) * noise", {"q2"}),
        ("q3", "off-by-one: the chain stops one step early", "for s in range(t + 1):", "for s in range(t):",
         {"q3"}),
        ("q3", "a one-shot draw instead of the chain (right law, not the chain's numbers)",
         "    x = x0\n    for s in range(t + 1):",
         "    a = torch.cumprod(1 - betas, 0)[t]\n"
         "    return torch.sqrt(a) * x0 + torch.sqrt(1 - a) * torch.randn(x0.shape, generator=generator)\n"
         "    x = x0\n    for s in range(t + 1):", {"q3"}),
    ],
    "generalised_step": [
        ("q1", "eta squared in eq. 16", "return eta * math.sqrt((1 - a_prev) / (1 - a_t))",
         "return eta**2 * math.sqrt((1 - a_prev) / (1 - a_t))", {"q1", "q3"}),
        ("q2", "missing square root on the 'direction pointing to x_t' coefficient",
         "math.sqrt(1 - a_prev - sigma**2) * eps", "(1 - a_prev - sigma**2) * eps", {"q2", "q3", "q4"}),
        ("q3", "ignores eta (sigma = 0 at every step)", "sigma_eta(a_t, a_prev, eta), noise)",
         "sigma_eta(a_t, a_prev, 0.0), noise)", {"q3"}),
        ("q3", "the last step stops at t = 0 instead of alpha_bar = 1", "list(reversed(tau))[1:] + [-1]",
         "list(reversed(tau))[1:] + [0]", {"q3", "q4"}),
        ("q4", "the eta = 0 row sampled with eta = 1",
         "frechet_to_mixture(generalised_sample(model, x_T, schedule, S, 0.0), mixture)",
         "frechet_to_mixture(generalised_sample(model, x_T, schedule, S, 1.0), mixture)", {"q4"}),
    ],
    "ddim_inversion": [
        ("q1", "the two alpha-bars' roles swapped", "return math.sqrt(a_to) * x0_pred + math.sqrt(1 - a_to) * eps",
         "return math.sqrt(a_from) * x0_pred + math.sqrt(1 - a_from) * eps", {"q1", "q2", "q3"}),
        ("q2", "off-by-one timestep: eps evaluated at the index the step goes to",
         "t_eval = max(t_from, tau[0])", "t_eval = t_to", {"q2", "q3"}),
        ("q3", "root mean square instead of mean square", "errors[S] = ((decoded - x0) ** 2).mean().item()",
         "errors[S] = ((decoded - x0) ** 2).mean().sqrt().item()", {"q3"}),
    ],
    "ode_heun": [
        ("q1", "eq. 15's step (Euler in sigma^2) instead of eq. 14's", "return x_bar + (sigma_next - sigma) * eps",
         "return x_bar + (sigma_next**2 - sigma**2) / (2 * sigma) * eps", {"q1", "q2", "q3"}),
        ("q2", "Heun's second evaluation at x_bar, not converted back to x",
         "eps_next = model(x_tilde / math.sqrt(s_next**2 + 1), batch(t_next))",
         "eps_next = model(x_tilde, batch(t_next))", {"q2", "q3"}),
        ("q3", "the grid misses its top point (starts one step below t = 960)",
         "list(range(0, T_START + 1, T_START // n))", "list(range(0, T_START, T_START // n))", {"q3"}),
    ],
    "q_sigma_theorem1": [
        ("q1", "sigma not squared under the square root",
         "c_xt = math.sqrt(1 - a_prev - sigma**2) / math.sqrt(1 - a_t)",
         "c_xt = math.sqrt(1 - a_prev - sigma) / math.sqrt(1 - a_t)", {"q1", "q2", "q3"}),
        ("q2", "sigma of the wrong step (a valid member of the family, not the one asked for)",
         "c_x0, c_xt, var = q_sigma_coefficients(a[t], a[t - 1], float(sigmas[t]))",
         "c_x0, c_xt, var = q_sigma_coefficients(a[t], a[t - 1], float(sigmas[t - 1]))", {"q2"}),
        ("q2", "the noise scaled by the variance instead of the standard deviation",
         "math.sqrt(var) * torch.randn(x0.shape, generator=generator)",
         "var * torch.randn(x0.shape, generator=generator)", {"q2"}),
        ("q3", "the weight printed in the paper's App. B, 1 / (2 sigma^2 abar) (k_t^2 (1 - abar) dropped)",
         "gammas.append(k**2 * (1 - a[t]) / (2 * float(sigmas[t]) ** 2 * a[t]))",
         "gammas.append(1 / (2 * float(sigmas[t]) ** 2 * a[t]))", {"q3"}),
    ],
    "train_lsimple": [
        ("q1", "sum over the coordinates instead of the mean", "return ((eps - net(x_t, t)) ** 2).mean()",
         "return ((eps - net(x_t, t)) ** 2).sum(1).mean()", {"q1"}),
        ("q2", "optimizer.zero_grad() forgotten (gradients accumulate)", "        optimizer.zero_grad()\n",
         "", {"q2"}),
        ("q3", "unpaired standard error of the gap", '"gap_se": (diff.std() / math.sqrt(len(diff))).item()',
         '"gap_se": math.sqrt((per_net.var() + per_star.var()).item() / len(diff))', {"q3"}),
    ],
}

# assignment -> (solution text, text that calls ddim_lib's own version instead) for every graded
# function: such a submission must score zero on every question.
# assignment -> (questions wrapped, [(solution text, text that calls ddim_lib's own version instead)]):
# such a submission must score zero on the wrapped questions (each forbids it), full marks elsewhere.
WRAPPERS = {
    "forward_marginal": ({"q1", "q2", "q3"}, [
        ("    return torch.cumprod(1 - betas, dim=0)",
         "    import ddim_lib as dl\n    return dl.NoiseSchedule(betas).alpha_bars"),
        ("    return math.sqrt(alpha_bar_t) * x0 + math.sqrt(1 - alpha_bar_t) * noise",
         "    import ddim_lib as dl\n"
         "    return dl.q_sample(x0, dl.NoiseSchedule(torch.tensor([1 - alpha_bar_t])), 0, noise=noise)"),
        ("    x = x0\n    for s in range(t + 1):",
         "    import ddim_lib as dl\n    return dl.q_sample(x0, dl.NoiseSchedule(betas), t, generator=generator)\n"
         "    x = x0\n    for s in range(t + 1):"),
    ]),
    "generalised_step": ({"q1", "q2", "q3", "q4"}, [
        ("    return eta * math.sqrt(", "    return float(dl.sigma_eta(a_t, a_prev, eta))\n    return eta * math.sqrt("),
        ("    x0_pred = (x_t - math.sqrt(1 - a_t) * eps) / math.sqrt(a_t)",
         "    return dl.ddim_step(x_t, eps, a_t, a_prev, sigma, noise=noise)"),
        ("    tau = list(range(0, schedule.T, schedule.T // S))",
         "    return dl.sample(model, x_T, schedule, S, eta=eta, generator=generator)"),
        ("frechet_to_mixture(generalised_sample(model, x_T, schedule, S, 0.0), mixture)",
         "frechet_to_mixture(dl.sample(model, x_T, schedule, S, eta=0.0), mixture)"),
    ]),
    "ddim_inversion": ({"q1", "q2", "q3"}, [
        ("    x0_pred = (x - math.sqrt(1 - a_from) * eps) / math.sqrt(a_from)",
         "    return dl.ddim_step(x, eps, a_from, a_to, 0.0)"),
        ("    tau = list(range(0, schedule.T, schedule.T // S))\n    a = schedule.alpha_bars.tolist()\n    x = x0",
         "    return dl.encode(model, x0, schedule, S)"),
        ("dl.sample(model, encode(model, x0, schedule, S), schedule, S, eta=0.0)",
         "dl.sample(model, dl.encode(model, x0, schedule, S), schedule, S, eta=0.0)"),
    ]),
    "ode_heun": ({"q1", "q2", "q3"}, [
        ("    return x_bar + (sigma_next - sigma) * eps", "    return dl.euler_step_sigma(x_bar, eps, sigma, sigma_next)"),
        ("    a = schedule.alpha_bars.tolist()\n    sigma = {t:",
         "    return dl.ode_sample(model, x_T, schedule, tau, method)\n    a = schedule.alpha_bars.tolist()\n    sigma = {t:"),
        ("(ode_solve(model, x_T, schedule, list(range(0, T_START + 1, T_START // n)), method)",
         "(dl.ode_sample(model, x_T, schedule, list(range(0, T_START + 1, T_START // n)), method)"),
    ]),
    "q_sigma_theorem1": ({"q1", "q2", "q3"}, [
        ("    c_xt = math.sqrt(1 - a_prev - sigma**2) / math.sqrt(1 - a_t)",
         "    return tuple(float(v) for v in dl.q_sigma_reverse(a_t, a_prev, sigma))"),
        ("c_x0, c_xt, var = q_sigma_coefficients(a[t], a[t - 1], float(sigmas[t]))",
         "c_x0, c_xt, var = (float(v) for v in dl.q_sigma_reverse(a[t], a[t - 1], float(sigmas[t])))"),
        ("    a = schedule.alpha_bars.tolist()\n    gammas = []",
         "    return dl.theorem1_gamma(schedule, sigmas)"),
    ]),
    # q3 (a paired comparison) has no ddim_lib counterpart to wrap
    "train_lsimple": ({"q1", "q2"}, [
        ("    x_t = a.sqrt() * x0 + (1 - a).sqrt() * eps\n    return ((eps",
         "    x_t = dl.q_sample(x0, schedule, t, noise=eps)\n    return ((eps"),
        ("loss = l_simple(net, x0, t, eps, schedule.alpha_bars)",
         "loss = __import__('ddim_lib.training').training.l_simple(net, x0, t, eps, schedule.alpha_bars.sqrt(), "
         "(1 - schedule.alpha_bars).sqrt())"),
    ]),
}
NAMES = sorted(PLANTED)


def _variant(solution: Path, target: Path, replacements) -> Path:
    """The solution notebook with each (right, wrong) text replaced; each right text must occur once."""
    nb = nbformat.read(solution, as_version=4)
    for right, wrong in replacements:
        hits = [c for c in nb.cells if c.cell_type == "code" and right in c.source]
        assert len(hits) == 1 and hits[0].source.count(right) == 1, \
            f"{right!r} should occur exactly once in the code of {solution.name}"
        hits[0].source = hits[0].source.replace(right, wrong)
    nbformat.write(nb, target)
    return target


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict[str, Path]:
    """Every assignment built (student notebook, autograder zip with the ddim_lib wheel)."""
    out = tmp_path_factory.mktemp("assignments")
    wheel = build_assignments.build_wheel(out)
    with ThreadPoolExecutor(max_workers=3) as pool:
        futures = {name: pool.submit(build_assignments.build, ROOT / "assignments", out, name, False, wheel)
                   for name in build_assignments.assignment_names(ROOT / "assignments")}
        return {name: f.result() for name, f in futures.items()}


def _quick_grade(zip_path: Path, notebooks: list[Path], cwd: Path) -> list[dict]:
    done = subprocess.run([sys.executable, str(ROOT / "tools" / "build_assignments.py"), "quick-grade",
                           str(zip_path)] + [str(n) for n in notebooks],
                          capture_output=True, text=True, cwd=cwd, env=os.environ | {"OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def graded(built, tmp_path_factory) -> dict[str, dict[str, dict]]:
    """assignment -> {"solution" | "blank" | "wrapper" | "mistake N": quick_grade report}."""
    base = tmp_path_factory.mktemp("variants")

    def grade_assignment(name):
        folder = base / name
        folder.mkdir()
        solution = built[name] / "autograder" / f"{name}.ipynb"   # otter's solution notebook, tests removed
        variants = {"solution": solution, "blank": built[name] / "student" / f"{name}.ipynb",
                    "wrapper": _variant(solution, folder / "wrapper.ipynb", WRAPPERS[name][1])}
        for i, (_, _, right, wrong, _) in enumerate(PLANTED[name]):
            variants[f"mistake {i}"] = _variant(solution, folder / f"mistake{i}.ipynb", [(right, wrong)])
        reports = _quick_grade(build_assignments.autograder_zip(built[name]), list(variants.values()), folder)
        return dict(zip(variants, reports))

    with ThreadPoolExecutor(max_workers=2) as pool:
        results = dict(zip(NAMES, pool.map(grade_assignment, NAMES)))
    for name, reports in results.items():
        print(f"\n{name}:\n" + "\n".join(
            f"  {label:10s} " + "  ".join(f"{q} {s:g}/{m:g}" for q, (s, m) in sorted(r["scores"].items()))
            for label, r in reports.items()))
    return results


def test_every_assignment_has_planted_mistakes_and_wrappers():
    assert build_assignments.assignment_names(ROOT / "assignments") == NAMES == sorted(WRAPPERS)


def test_build_fails_with_one_line_on_a_folder_without_its_master(tmp_path):
    (tmp_path / "src" / "lonely").mkdir(parents=True)
    (tmp_path / "src" / "lonely" / "lonely.ipynb").write_text("{}")
    done = subprocess.run([sys.executable, str(ROOT / "tools" / "build_assignments.py"), str(tmp_path / "src"),
                           str(tmp_path / "out")], capture_output=True, text=True)
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "no master notebook lonely.md" in lines[0] and "lonely.ipynb" in lines[0], lines


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_every_question_has_a_planted_mistake(graded, name):
    assert {q for q, *_ in PLANTED[name]} == set(graded[name]["solution"]["scores"])


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_solution_scores_full_marks(graded, name):
    report = graded[name]["solution"]
    assert report["scores"] and all(s == m > 0 for s, m in report["scores"].values()), report
    assert report["errors"] == [], report["errors"]


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_blank_scores_zero_and_runs_to_the_end(graded, name):
    report = graded[name]["blank"]
    assert report["scores"].keys() == graded[name]["solution"]["scores"].keys()
    assert all(s == 0 for s, _ in report["scores"].values()), report["scores"]
    assert report["errors"] == [], f"'Run All' on the blank notebook stops: {report['errors']}"


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_each_planted_mistake_loses_exactly_its_points(graded, name):
    wrong = []
    for i, (question, description, _, _, zero) in enumerate(PLANTED[name]):
        scores = graded[name][f"mistake {i}"]["scores"]
        expected = {q: (0.0 if q in zero else m) for q, (_, m) in scores.items()}
        if {q: s for q, (s, _) in scores.items()} != expected:
            wrong.append(f"{question} ({description}): got {scores}, expected {expected}")
    assert not wrong, "\n".join(wrong)


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_wrapping_the_library_scores_zero(graded, name):
    wrapped = WRAPPERS[name][0]
    report = graded[name]["wrapper"]
    assert {q: s for q, (s, _) in report["scores"].items()} == \
        {q: (0.0 if q in wrapped else m) for q, (_, m) in report["scores"].items()}, report["scores"]
    # ... although the wrapper is right: it passes every public test
    assert all(report["public"].values()), report["public"]


@pytest.mark.slow
def test_grade_folder_agrees_with_otter_run(built, graded, tmp_path):
    """`make grade`'s code (`otter run` per notebook, one CSV) on a folder of three submissions, one
    of them renamed: the same per-question scores as the in-process grading."""
    name = "generalised_step"
    solution = built[name] / "autograder" / f"{name}.ipynb"
    subs = tmp_path / "submissions"
    subs.mkdir()
    shutil.copy(solution, subs / "alice.ipynb")
    _variant(solution, subs / "bob.ipynb", WRAPPERS[name][1])
    _variant(solution, subs / f"{name} (1).ipynb", [PLANTED[name][1][2:4]])
    expected = {"alice.ipynb": graded[name]["solution"], "bob.ipynb": graded[name]["wrapper"],
                f"{name} (1).ipynb": graded[name]["mistake 1"]}
    csv_path = tmp_path / "grades.csv"
    done = subprocess.run(["make", "-s", "grade", f"ASSIGNMENT={name}", f"SUBMISSIONS={subs}",
                           f"GRADES={csv_path}", f"ASSIGNMENTS_BUILD={built[name].parent}"],
                          cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    rows = {r["submission"]: r for r in csv.DictReader(csv_path.open())}
    assert rows.keys() == expected.keys()
    for sub, report in expected.items():
        assert not rows[sub]["error"], rows[sub]
        got = {q: float(rows[sub][q]) for q in report["scores"]}
        assert got == {q: s for q, (s, _) in report["scores"].items()}, (sub, got, report["scores"])
        assert float(rows[sub]["total"]) == sum(s for s, _ in report["scores"].values())


@pytest.mark.slow
def test_renamed_student_notebook_runs_its_checks(built, tmp_path):
    """A student's renamed copy ("NAME (1).ipynb"), run top to bottom in Jupyter: the set-up cell
    finds it, every grader.check runs (and reports the blank answers as failing), no cell raises."""
    name = "generalised_step"
    shutil.copy(built[name] / "student" / f"{name}.ipynb", tmp_path / f"{name} (1).ipynb")
    out = tmp_path / "executed.ipynb"
    done = subprocess.run([str(Path(sys.executable).parent / "jupyter"), "nbconvert", "--to", "notebook",
                           "--execute", "--allow-errors", "--output", str(out), f"{name} (1).ipynb"],
                          cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    cells = [c for c in nbformat.read(out, as_version=4).cells if c.cell_type == "code"]
    errors = [o for c in cells for o in c.outputs if o.output_type == "error"]
    assert not errors, [f"{e.ename}: {e.evalue}" for e in errors]
    checks = [c for c in cells if c.source.startswith("grader.check(")]
    assert len(checks) == 4
    for c in checks:   # the blank fails its public tests: otter says so, it does not crash
        text = json.dumps([o.get("data", o.get("text")) for o in c.outputs])
        assert "failed" in text or "Test case failed" in text, text[:500]


@pytest.mark.slow
def test_standalone_environment(built, tmp_path):
    """A fresh virtual environment built from one zip's own requirements (environment.yml's pip list,
    with the shipped ddim_lib wheel) grades every assignment's solution (full marks) and blank (zero)
    with `otter run`. The environment is built once; the zips ask for the same packages."""
    zips = {name: build_assignments.autograder_zip(path) for name, path in built.items()}
    reqs = {name: build_assignments.zip_requirements(z) for name, z in zips.items()}
    assert len({tuple(r) for r in reqs.values()}) == 1, reqs
    source = tmp_path / "source"     # stands for Gradescope's /autograder/source
    with zipfile.ZipFile(zips[NAMES[0]]) as z:
        z.extractall(source)
    wheel_reqs = [r for r in reqs[NAMES[0]] if r.startswith(build_assignments.GRADESCOPE_SOURCE)]
    assert len(wheel_reqs) == 1 and wheel_reqs[0].endswith(".whl"), reqs[NAMES[0]]
    requirements = [r.replace(build_assignments.GRADESCOPE_SOURCE, f"{source}/") for r in reqs[NAMES[0]]]
    assert Path(requirements[reqs[NAMES[0]].index(wheel_reqs[0])]).is_file()
    venv = tmp_path / "venv"
    start = time.perf_counter()
    subprocess.run(["python3", "-m", "venv", str(venv)], check=True)
    done = subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "--no-compile"] + requirements,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    setup_seconds = time.perf_counter() - start
    otter = str(venv / "bin" / "otter")
    probe = subprocess.run([str(venv / "bin" / "python"), "-c", "import ddim_lib, torch; print(ddim_lib.__file__)"],
                           capture_output=True, text=True, cwd=tmp_path)
    assert probe.returncode == 0 and str(venv) in probe.stdout, probe.stdout + probe.stderr   # not the repository's
    jobs = {(name, kind): (zips[name], built[name] / sub / f"{name}.ipynb")
            for name in NAMES for kind, sub in (("solution", "autograder"), ("blank", "student"))}
    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=3) as pool:
        futures = {key: pool.submit(build_assignments.grade_one, otter, z, nb,
                                         tmp_path / "graded" / "-".join(key), tmp_path)
                   for key, (z, nb) in jobs.items()}
        scores = {key: f.result() for key, f in futures.items()}
    print(f"\nstandalone environment: set up in {setup_seconds:.0f} s, {len(jobs)} gradings in "
          f"{time.perf_counter() - start:.0f} s")
    for (name, kind), graded_ in scores.items():
        assert graded_, (name, kind)
        if kind == "solution":
            assert all(s == m > 0 for s, m in graded_.values()), (name, graded_)
        else:
            assert all(s == 0 for s, _ in graded_.values()), (name, graded_)
