"""Every chapter as the book build executed it: each code cell ran, none raised, every check ran.

The chapters are executed once, by the site build (``make book``, myst-nb with jupyter-cache; the
PDF reuses the cache). This test reads the executed notebooks that build wrote to
``book/_build/jupyter_execute/notebooks/`` instead of executing the chapters a second time, and
checks, for every chapter in ``notebooks/``:

- the executed notebook exists and its code cells are exactly the chapter's current code cells
  (an edit since the build makes the copy stale: rebuild);
- every code cell has an execution count (nothing was skipped), in increasing order;
- no output is an error (``allow_errors: false`` and ``-W`` should already stop the build);
- every checking cell (``# claim: XX``) is among them, so every claim's assertion ran;
- no printed output shows a machine path (a temporary folder, the checkout, a home directory).

Outside CI (env CI unset) it skips when the site is not built; in CI that is a failure.
``make nbval`` still runs nbval over the chapters when an independent second execution is wanted.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

import jupytext
import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
# The build folder: book/_build, or DDIM_BOOK_BUILD (a build made with another --path-output).
EXECUTED = Path(os.environ.get("DDIM_BOOK_BUILD", ROOT / "book" / "_build")) / "jupyter_execute" / "notebooks"
IN_CI = os.environ.get("CI", "").lower() not in ("", "0", "false")
CLAIM_RE = re.compile(r"#\s*claims?:\s*(.+)$")
MACHINE_PATH_RE = re.compile(r"(?<![\w.])(/tmp/|/var/folders/|/home/|/root/|/Users/|[A-Z]:\\Users\\)\S*|site-packages")


def chapters() -> list[Path]:
    return sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.md"))


def _code_cells(nb) -> list:
    return [c for c in nb.cells if c.cell_type == "code" and c.source.strip()]


def _executed(chapter: Path):
    path = EXECUTED / f"{chapter.stem}.ipynb"
    if not path.is_file():
        why = f"{path} is missing: run `make book` first"
        if IN_CI or EXECUTED.is_dir():   # a built site without this chapter is a failure anywhere
            pytest.fail(why)
        pytest.skip(why + "; outside CI this test is skipped")
    return nbformat.read(path, as_version=4)


@pytest.mark.parametrize("chapter", chapters(), ids=lambda p: p.stem)
def test_chapter_was_executed_by_the_build(chapter):
    executed = _executed(chapter)
    source = jupytext.read(chapter)
    want = [c.source.strip() for c in _code_cells(source)]
    got = [c.source.strip() for c in _code_cells(executed)]
    assert got == want, (f"{chapter.name}: the executed copy's code differs from the chapter "
                         "(edited since the build): rebuild with `make book`")
    counts, problems = [], []
    for index, cell in enumerate(_code_cells(executed)):
        tags = cell.metadata.get("tags", [])
        first = cell.source.lstrip().splitlines()[0]
        label = f"code cell {index + 1} ({first[:50]!r})"
        if "skip-execution" in tags:
            problems.append(f"{label} is tagged skip-execution: the book runs every cell")
            continue
        if cell.get("execution_count") is None:
            problems.append(f"{label} did not run")
        else:
            counts.append(cell.execution_count)
        for out in cell.get("outputs", []):
            if out.get("output_type") == "error" and "raises-exception" not in tags:
                problems.append(f"{label} raised {out.get('ename')}: {out.get('evalue', '')[:80]}")
            text = out.get("text", "") + str(out.get("data", {}).get("text/plain", ""))
            shown = MACHINE_PATH_RE.search(text.replace(str(ROOT), "/tmp/"))
            if shown:
                problems.append(f"{label} prints a machine path: {shown.group(0)[:60]!r}")
    assert not problems, f"{chapter.name}:\n" + "\n".join(problems)
    assert counts == sorted(counts) and len(set(counts)) == len(counts), \
        f"{chapter.name}: cells were not executed once each, in order: {counts}"


def test_every_checking_cell_ran():
    """Each ``# claim:`` cell of every chapter has an execution count and no error output."""
    missing = []
    for chapter in chapters():
        executed = _executed(chapter)
        for cell in _code_cells(executed):
            m = CLAIM_RE.match(cell.source.lstrip().splitlines()[0])
            if not m:
                continue
            ran = cell.get("execution_count") is not None and not any(
                o.get("output_type") == "error" for o in cell.get("outputs", []))
            if not ran:
                missing.append(f"{chapter.stem}: {m.group(1)}")
    assert not missing, f"checking cells that did not run cleanly: {missing}"
