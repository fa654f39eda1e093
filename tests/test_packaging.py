"""The project's files agree with each other: environment.yml lists what pyproject.toml does."""
from __future__ import annotations

import re
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def _pyproject_requirements() -> set[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = set(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        reqs.update(extra)
    return {r.replace(" ", "") for r in reqs}


def _environment_requirements() -> set[str]:
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip_lists = [d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d]
    assert len(pip_lists) == 1, "environment.yml must have exactly one pip: section"
    return {r.replace(" ", "") for r in pip_lists[0] if not r.startswith("-e")}


def test_environment_yml_matches_pyproject():
    py, env = _pyproject_requirements(), _environment_requirements()
    assert py == env, f"only in pyproject.toml: {sorted(py - env)}; only in environment.yml: {sorted(env - py)}"


def test_cpu_install_pins_torch_wheel():
    """make's default installs the CPU wheel torch==2.13.0, never an unpinned (CUDA) torch."""
    makefile = (ROOT / "Makefile").read_text()
    assert "TORCH_SPEC ?= torch==2.13.0" in makefile


def test_ci_runs_make_test_only():
    """CI runs `make test` and nothing else, after installing the Debian packages it needs when missing
    (Chromium for the site test, TeX and poppler for the PDF): no pip, python, pytest or other make."""
    lines = [ln.strip() for ln in (ROOT / ".ci" / "run").read_text().splitlines()]
    commands = [ln for ln in lines if ln and not ln.startswith("#") and not ln.startswith("set ")
                and not ln.startswith("cd ")]
    assert commands[-1] == "make test"
    setup = "\n".join(commands[:-1])
    assert not re.search(r"\b(pip|python3?|pytest|make|npm)\b", setup), setup
    assert "apt-get install -y -qq chromium" in setup
    for pkg in ("texlive-xetex", "texlive-latex-extra", "latexmk", "poppler-utils"):
        assert pkg in setup, pkg
    assert "texlive-fonts-extra" not in setup          # 1.4 GB, not needed (TOOLCHAIN)
