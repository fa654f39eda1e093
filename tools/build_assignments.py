"""Build the classroom assignments: otter-grader master notebooks -> student versions + autograders.

Usage: python tools/build_assignments.py SRC_DIR OUT_DIR [NAME ...] [--no-run-tests]

Each assignment is a folder SRC_DIR/NAME holding its master notebook NAME.md (jupytext MyST, in
otter-grader 7's master format, with the solutions). For each one this writes
  OUT_DIR/NAME/master/NAME.ipynb        the master as a notebook (outside the sources)
  OUT_DIR/NAME/student/NAME.ipynb       what students get (solutions removed, public tests inside)
  OUT_DIR/NAME/autograder/NAME-autograder_*.zip   for `otter run -a ZIP SUBMISSION.ipynb`
`otter assign` also runs every test (public and hidden) on the solution unless --no-run-tests.
"""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import jupytext


def otter_executable() -> str:
    """The otter command installed next to this Python (the project's venv)."""
    candidate = Path(sys.executable).parent / "otter"
    return str(candidate) if candidate.exists() else "otter"


def assignment_names(src: Path) -> list[str]:
    """Every folder of src holding a master notebook named after it."""
    return sorted(p.name for p in src.iterdir() if (p / f"{p.name}.md").is_file())


def build(src: Path, out: Path, name: str, run_tests: bool = True) -> Path:
    """Convert one master notebook and run `otter assign`; return OUT/NAME."""
    master_md = src / name / f"{name}.md"
    if not master_md.is_file():
        raise ValueError(f"no master notebook {master_md}")
    target = out / name
    shutil.rmtree(target, ignore_errors=True)
    (target / "master").mkdir(parents=True)
    master = target / "master" / f"{name}.ipynb"
    jupytext.write(jupytext.read(master_md), master)
    cmd = [otter_executable(), "assign", str(master), str(target)]
    if not run_tests:
        cmd.append("--no-run-tests")
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0 or not list((target / "autograder").glob("*-autograder_*.zip")):
        raise RuntimeError(f"otter assign failed for {name}:\n{result.stdout}\n{result.stderr}")
    return target


def main(argv: list[str]) -> int:
    run_tests = "--no-run-tests" not in argv
    args = [a for a in argv if a != "--no-run-tests"]
    if len(args) < 2:
        print(__doc__.strip().splitlines()[2], file=sys.stderr)
        return 2
    src, out = Path(args[0]), Path(args[1])
    if not src.is_dir():
        print(f"error: {src} is not a folder", file=sys.stderr)
        return 2
    names = args[2:] or assignment_names(src)
    try:
        for name in names:
            target = build(src, out, name, run_tests)
            print(f"{name}: {target / 'student' / (name + '.ipynb')}, "
                  f"{next((target / 'autograder').glob('*.zip')).name}")
    except (ValueError, RuntimeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
