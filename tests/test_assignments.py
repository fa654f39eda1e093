"""The classroom assignments' autograders discriminate (otter-grader 7, run locally, no Docker).

For each assignment: `otter assign` builds the student version and the autograder from the master
notebook; then `otter run` grades three submissions with the hidden tests:
- the solution scores full marks on every question;
- the untouched student version scores zero on every question;
- a plausible wrong answer, made by editing the solution programmatically, loses exactly the
  points of the question it breaks (zero there), keeps full marks on the questions before it, and
  loses points on the questions that use the broken function.
The nine gradings run three at a time (each starts a kernel and executes the notebook).
"""
from __future__ import annotations

import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
import build_assignments  # noqa: E402

# name -> (description, solution line, wrong line, question broken, questions after it that use it)
WRONG_ANSWERS = {
    "forward_marginal": ("off-by-one: the chain stops one step early (t steps, not t + 1)",
                         "for s in range(t + 1):", "for s in range(t):", "q3", []),
    "generalised_step": ("missing square root on the 'direction pointing to x_t' coefficient",
                         "math.sqrt(1 - a_prev - sigma**2) * eps", "(1 - a_prev - sigma**2) * eps",
                         "q2", ["q3", "q4"]),
    "ddim_inversion": ("off-by-one timestep: eps evaluated at the index the step goes to",
                       "t_eval = max(t_from, tau[0])", "t_eval = t_to", "q2", ["q3"]),
}
NAMES = sorted(WRONG_ANSWERS)


def test_every_assignment_has_a_wrong_answer_case():
    assert build_assignments.assignment_names(ROOT / "assignments") == NAMES


def _wrong_version(solution: Path, target: Path, right: str, wrong: str) -> Path:
    nb = nbformat.read(solution, as_version=4)
    hits = [c for c in nb.cells if c.cell_type == "code" and right in c.source]
    assert len(hits) == 1, f"the line {right!r} should occur in exactly one cell of {solution}"
    hits[0].source = hits[0].source.replace(right, wrong)
    nbformat.write(nb, target)
    return target


def _grade(zip_path: Path, submission: Path, out: Path) -> dict[str, tuple[float, float]]:
    out.mkdir(parents=True)
    otter = build_assignments.otter_executable()
    done = subprocess.run([otter, "run", "-a", str(zip_path), "-o", str(out), "--no-logo", str(submission)],
                          capture_output=True, text=True)
    assert done.returncode == 0, f"otter run failed on {submission}:\n{done.stdout}\n{done.stderr}"
    tests = json.loads((out / "results.json").read_text())["tests"]
    return {t["name"]: (float(t["score"]), float(t["max_score"])) for t in tests if "max_score" in t}


@pytest.fixture(scope="module")
def scores(tmp_path_factory) -> dict[tuple[str, str], dict[str, tuple[float, float]]]:
    """(assignment, submission kind) -> {question: (score, max score)}."""
    base = tmp_path_factory.mktemp("assignments")
    jobs = {}
    for name in NAMES:
        built = build_assignments.build(ROOT / "assignments", base, name, run_tests=False)
        zip_path = next((built / "autograder").glob("*-autograder_*.zip"))
        solution = built / "autograder" / f"{name}.ipynb"   # otter's solution notebook, tests removed
        _, right, wrong, _, _ = WRONG_ANSWERS[name]
        subs = base / name / "submissions"
        subs.mkdir()
        jobs[name, "solution"] = (zip_path, solution)
        jobs[name, "student"] = (zip_path, built / "student" / f"{name}.ipynb")
        jobs[name, "wrong"] = (zip_path, _wrong_version(solution, subs / f"{name}.ipynb", right, wrong))
    with ThreadPoolExecutor(max_workers=3) as pool:
        futures = {key: pool.submit(_grade, z, s, base / "graded" / f"{key[0]}-{key[1]}")
                   for key, (z, s) in jobs.items()}
        results = {key: f.result() for key, f in futures.items()}
    matrix = "\n".join(f"{k[0]:18s} {k[1]:9s} " + "  ".join(f"{q} {s:g}/{m:g}" for q, (s, m) in sorted(v.items()))
                       for k, v in sorted(results.items()))
    print("\nassignment scores:\n" + matrix)
    return results


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_solution_scores_full_marks(scores, name):
    graded = scores[name, "solution"]
    assert graded and all(s == m > 0 for s, m in graded.values()), graded


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_untouched_student_version_scores_zero(scores, name):
    graded = scores[name, "student"]
    assert graded.keys() == scores[name, "solution"].keys()
    assert all(s == 0 for s, _ in graded.values()), graded


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_wrong_answer_loses_the_right_points(scores, name):
    description, _, _, broken, dependent = WRONG_ANSWERS[name]
    graded = scores[name, "wrong"]
    assert graded[broken][0] == 0, f"{description}: {broken} should score 0, got {graded}"
    for q in dependent:   # these call the broken function: the hidden comparisons must fail
        assert graded[q][0] < graded[q][1], f"{description}: {q} should lose points, got {graded}"
    for q, (s, m) in graded.items():
        if q != broken and q not in dependent:
            assert s == m, f"{description}: {q} does not use the broken code and should keep full marks, got {graded}"
