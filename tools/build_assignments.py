"""Build and grade the classroom assignments (otter-grader 7, no Docker).

Usage:
  python tools/build_assignments.py SRC_DIR OUT_DIR [NAME ...] [--no-run-tests]
  python tools/build_assignments.py grade ZIP_OR_BUILT_FOLDER SUBMISSIONS_DIR OUT.csv

Build: each assignment is a folder SRC_DIR/NAME holding its master notebook NAME.md (jupytext MyST,
in otter-grader 7's master format, with the solutions). ddim_lib is built once as a wheel
(OUT_DIR/wheel/) and shipped inside every autograder zip; for each assignment this writes
  OUT_DIR/NAME/master/NAME.ipynb                 the master as a notebook (outside the sources)
  OUT_DIR/NAME/student/NAME.ipynb                what students get (solutions removed, public tests)
  OUT_DIR/NAME/autograder/NAME-autograder_*.zip  for `otter run -a ZIP SUBMISSION.ipynb`
The zip's environment.yml lists what grading needs (otter-grader, CPU torch==2.13.0, numpy, scipy
and the shipped ddim_lib wheel at files/, referred to by its Gradescope path /autograder/source/).
`otter assign` also runs every test (public and hidden) on the solution unless --no-run-tests.

  python tools/build_assignments.py quick-grade ZIP NOTEBOOK ...   (in-process, see quick_grade)

Grade: `otter run` on every .ipynb in SUBMISSIONS_DIR, one CSV row per submission with each
question's score (and the total); a submission that cannot be graded gets a row with its error.
"""
from __future__ import annotations

import contextlib
import csv
import io
import json
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import jupytext

ROOT = Path(__file__).resolve().parents[1]
# What grading needs besides ddim_lib's wheel (whose own dependencies pip resolves). torch stays
# pinned to the project's CPU build.
REQUIREMENTS = ["torch==2.13.0", "numpy>=1.26", "scipy>=1.11"]
GRADESCOPE_SOURCE = "/autograder/source/"   # where Gradescope unpacks the zip (otter's run_otter.py)


class BuildError(Exception):
    """An assignment folder that cannot be built (the message is one line)."""


def otter_executable() -> str:
    """The otter command installed next to this Python (the project's venv)."""
    candidate = Path(sys.executable).parent / "otter"
    return str(candidate) if candidate.exists() else "otter"


def assignment_names(src: Path) -> list[str]:
    """Every assignment folder of src (sorted); BuildError if one holds no master NAME.md."""
    names = []
    for folder in sorted(p for p in src.iterdir() if p.is_dir() and not p.name.startswith((".", "_"))):
        if not (folder / f"{folder.name}.md").is_file():
            found = ", ".join(sorted(f.name for f in folder.iterdir())) or "nothing"
            raise BuildError(f"{folder}: no master notebook {folder.name}.md (a jupytext MyST file "
                             f"named after its folder); found {found}")
        names.append(folder.name)
    return names


def build_wheel(out: Path) -> Path:
    """ddim_lib as a wheel (pip wheel --no-deps of this repository) in OUT/wheel; return its path."""
    target = out / "wheel"
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(parents=True)
    with tempfile.TemporaryDirectory() as tmp:   # keep setuptools' build/ folder out of the tree
        cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
               "-w", str(target), str(ROOT)]
        done = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp)
    wheels = list(target.glob("ddim_lib-*.whl"))
    if done.returncode != 0 or len(wheels) != 1:
        raise BuildError(f"pip wheel failed: {(done.stderr or done.stdout).strip().splitlines()[-1:]}")
    return wheels[0]


def _configure(master: Path, wheel: Path | None) -> None:
    """Add the grading environment and our own start-up cell to the ASSIGNMENT CONFIG cell."""
    nb = json.loads(master.read_text())
    cell = nb["cells"][0]
    source = "".join(cell["source"])
    if not source.startswith("# ASSIGNMENT CONFIG"):
        raise BuildError(f"{master.name}: the first cell must be the raw '# ASSIGNMENT CONFIG' cell")
    extra = ["init_cell: false", "requirements:"] + [f"- {r}" for r in REQUIREMENTS]
    if wheel is not None:
        extra += [f"- {GRADESCOPE_SOURCE}files/{wheel.name}", "autograder_files:", f"- {wheel.name}"]
        shutil.copy(wheel, master.parent / wheel.name)
    cell["source"] = source.rstrip("\n") + "\n" + "\n".join(extra) + "\n"
    master.write_text(json.dumps(nb, indent=1))


def build(src: Path, out: Path, name: str, run_tests: bool = True, wheel: Path | None = None) -> Path:
    """Convert one master notebook and run `otter assign`; return OUT/NAME."""
    master_md = src / name / f"{name}.md"
    if not master_md.is_file():
        raise BuildError(f"{src / name}: no master notebook {name}.md")
    target = out / name
    shutil.rmtree(target, ignore_errors=True)
    (target / "master").mkdir(parents=True)
    master = target / "master" / f"{name}.ipynb"
    jupytext.write(jupytext.read(master_md), master)
    _configure(master, wheel)
    cmd = [otter_executable(), "assign", str(master), str(target)]
    if not run_tests:
        cmd.append("--no-run-tests")
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0 or not list((target / "autograder").glob("*-autograder_*.zip")):
        log = target / "assign.log"
        log.write_text(result.stdout + "\n" + result.stderr)
        last = (result.stderr.strip() or result.stdout.strip() or "no output").splitlines()[-1]
        raise BuildError(f"otter assign failed for {name}: {last} (full output: {log})")
    return target


def autograder_zip(built: Path) -> Path:
    """The autograder zip of a built assignment folder OUT/NAME."""
    return next((built / "autograder").glob("*-autograder_*.zip"))


def zip_requirements(zip_path: Path) -> list[str]:
    """The pip requirements of a zip's environment.yml (what its grading environment installs)."""
    import yaml

    with zipfile.ZipFile(zip_path) as z:
        env = yaml.safe_load(z.read("environment.yml"))
    return next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)


def grade_one(otter: str, zip_path: Path, submission: Path, out: Path,
              cwd: Path | None = None) -> dict[str, tuple[float, float]]:
    """`otter run` one notebook: {question: (score, max score)} (otter's 'Public Tests' row dropped)."""
    out.mkdir(parents=True, exist_ok=True)
    done = subprocess.run([otter, "run", "-a", str(zip_path), "-o", str(out), "--no-logo", str(submission)],
                          capture_output=True, text=True, cwd=cwd or out)
    results = out / "results.json"
    if done.returncode != 0 or not results.is_file():
        lines = (done.stderr or done.stdout).strip().splitlines() or ["no output"]
        raise RuntimeError(f"otter run failed: {lines[-1]}")
    tests = json.loads(results.read_text())["tests"]
    return {t["name"]: (float(t["score"]), float(t["max_score"])) for t in tests
            if t.get("max_score") is not None}


def grade_folder(zip_path: Path, submissions: Path, csv_path: Path, otter: str | None = None,
                 workers: int = 2) -> list[dict]:
    """Grade every .ipynb in submissions with `otter run` (workers at a time); write one CSV of per-question scores."""
    from concurrent.futures import ThreadPoolExecutor

    otter = otter or otter_executable()
    rows, questions = [], []
    subs = sorted(submissions.glob("*.ipynb"))
    with tempfile.TemporaryDirectory() as tmp, ThreadPoolExecutor(max_workers=workers) as pool:
        futures = [pool.submit(grade_one, otter, zip_path, sub, Path(tmp) / str(i)) for i, sub in enumerate(subs)]
        for sub, future in zip(subs, futures):
            row = {"submission": sub.name}
            try:
                scores = future.result()
                for q, (s, _) in scores.items():
                    row[q] = s
                    if q not in questions:
                        questions.append(q)
                row["total"] = sum(s for s, _ in scores.values())
                row["possible"] = sum(m for _, m in scores.values())
            except RuntimeError as err:
                row["error"] = str(err)
            rows.append(row)
    fields = ["submission"] + sorted(questions, key=_question_key) + ["total", "possible", "error"]
    csv_path.parent.mkdir(parents=True, exist_ok=True)
    with csv_path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields, restval="")
        writer.writeheader()
        writer.writerows(rows)
    return rows


class _NoCheck:
    """Stands in for otter.Notebook in quick_grade: self-checks do nothing there."""

    def check(self, *args, **kwargs):
        return None


def quick_grade(zip_path: Path, notebooks: list[Path]) -> list[dict]:
    """Grade notebooks in this process with the zip's own test files and otter's own test runner.

    What `otter run` does, without a kernel per notebook (much faster, used by the tests): run the
    notebook's code cells in a fresh namespace (the otter start-up cell and `grader.check` calls
    skipped), then every test file of the zip on that namespace. Per notebook: {"scores": {q:
    [score, max]}, "public": {q: public tests passed}, "errors": [exceptions raised by cells]}.
    """
    import nbformat
    from otter.test_files import OKTestFile

    reports = []
    with tempfile.TemporaryDirectory() as tmp:
        with zipfile.ZipFile(zip_path) as z:
            z.extractall(tmp)
        test_files = sorted(Path(tmp, "tests").glob("*.py"))
        for notebook in notebooks:
            env: dict = {"__name__": "__main__"}
            errors = []
            for cell in nbformat.read(notebook, as_version=4).cells:
                if cell.cell_type != "code":
                    continue
                if "otter.Notebook(" in cell.source:
                    env["grader"] = _NoCheck()
                    continue
                try:
                    with contextlib.redirect_stdout(io.StringIO()):
                        exec(compile(cell.source, "<cell>", "exec"), env)
                except BaseException as err:  # noqa: BLE001 - a submission may raise anything
                    errors.append(f"{type(err).__name__}: {err}".splitlines()[0][:200])
            scores, public = {}, {}
            for path in test_files:
                test_file = OKTestFile.from_file(str(path))
                test_file.run(env)
                scores[test_file.name] = [float(test_file.score), float(test_file.possible)]
                public[test_file.name] = test_file.passed_all_public
            reports.append({"scores": scores, "public": public, "errors": errors})
    return reports


def _question_key(q: str):
    return (len(q), q)


def _grade_main(args: list[str]) -> int:
    if len(args) != 3:
        print("usage: build_assignments.py grade ZIP_OR_BUILT_FOLDER SUBMISSIONS_DIR OUT.csv", file=sys.stderr)
        return 2
    zip_path, submissions, csv_path = Path(args[0]), Path(args[1]), Path(args[2])
    if zip_path.is_dir():   # a built assignment folder OUT/NAME: its newest autograder zip
        zips = sorted((zip_path / "autograder").glob("*-autograder_*.zip"))
        zip_path = zips[-1] if zips else zip_path / "autograder" / "NAME-autograder_*.zip"
    if not zip_path.is_file():
        print(f"error: no autograder zip {zip_path} (build it with `make assignments`)", file=sys.stderr)
        return 2
    if not submissions.is_dir() or not list(submissions.glob("*.ipynb")):
        print(f"error: {submissions} is not a folder of .ipynb submissions", file=sys.stderr)
        return 2
    rows = grade_folder(zip_path, submissions, csv_path)
    failed = [r["submission"] for r in rows if "error" in r]
    print(f"graded {len(rows) - len(failed)} of {len(rows)} submissions -> {csv_path}"
          + (f"; could not grade: {', '.join(failed)}" if failed else ""))
    return 0


def main(argv: list[str]) -> int:
    if argv[:1] == ["grade"]:
        return _grade_main(argv[1:])
    if argv[:1] == ["quick-grade"]:   # quick-grade ZIP NOTEBOOK...: JSON reports on stdout (tests)
        print(json.dumps(quick_grade(Path(argv[1]), [Path(a) for a in argv[2:]])))
        return 0
    run_tests = "--no-run-tests" not in argv
    args = [a for a in argv if a != "--no-run-tests"]
    if len(args) < 2:
        print(__doc__.strip().splitlines()[3].strip(), file=sys.stderr)
        return 2
    src, out = Path(args[0]), Path(args[1])
    if not src.is_dir():
        print(f"error: {src} is not a folder", file=sys.stderr)
        return 2
    try:
        names = args[2:] or assignment_names(src)
        wheel = build_wheel(out)
        for name in names:
            target = build(src, out, name, run_tests, wheel)
            print(f"{name}: {target / 'student' / (name + '.ipynb')}, {autograder_zip(target).name}")
    except BuildError as err:
        print(f"error: {str(err).strip()}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
