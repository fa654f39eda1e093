"""Wall time to execute each chapter (jupytext .md -> nbclient, in a scratch folder) and the whole
book (Jupyter Book 1, every notebook executed, into a scratch output folder)."""
from __future__ import annotations

import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
_ANSI = re.compile(r"\x1b\[[0-9;]*m")     # colour codes in IPython's tracebacks


def chapters(folder: Path = ROOT / "notebooks") -> list[Path]:
    """The jupytext MyST chapters in reading order (plain markdown files are skipped)."""
    import jupytext

    return [md for md in sorted(folder.glob("*.md"))
            if jupytext.read(md).metadata.get("jupytext", {}).get("text_representation", {}).get("format_name") == "myst"]


def execute_notebook(md: Path, timeout: int = 600) -> dict:
    """Execute one chapter top to bottom with nbclient in a scratch working folder; seconds and status."""
    import jupytext
    import nbclient

    nb = jupytext.read(md)
    with tempfile.TemporaryDirectory(prefix="bench-nb-") as scratch:
        client = nbclient.NotebookClient(nb, timeout=timeout, kernel_name="python3",
                                         resources={"metadata": {"path": scratch}})
        start = time.perf_counter()
        try:
            client.execute()
            status, error = "ok", None
        except Exception as err:    # a failing chapter is reported, not hidden
            lines = _ANSI.sub("", str(err)).strip().splitlines()
            status, error = "error", lines[-1][:300] if lines else type(err).__name__
        seconds = time.perf_counter() - start
    return {"notebook": md.name, "seconds": seconds, "status": status, "error": error}


def build_book(timeout: int = 1800) -> dict:
    """Build the whole site as ``make book`` does (warnings are errors), into a scratch folder."""
    if not (ROOT / "build" / "site_static" / ".complete").is_file():
        return {"status": "skipped", "reason": "build/site_static is missing: run `make site-assets` (make bench does)"}
    jupyter_book = Path(sys.executable).parent / "jupyter-book"
    with tempfile.TemporaryDirectory(prefix="bench-book-") as out:
        cmd = [str(jupyter_book), "build", str(ROOT), "--config", str(ROOT / "book" / "_config.yml"),
               "--toc", str(ROOT / "book" / "_toc.yml"), "--path-output", out, "-W", "--keep-going"]
        start = time.perf_counter()
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
        seconds = time.perf_counter() - start
    log = proc.stdout + proc.stderr
    return {"status": "ok" if proc.returncode == 0 else "error", "seconds": seconds,
            "returncode": proc.returncode, "notebooks": executed_in_log(log),
            "log_tail": log.strip().splitlines()[-3:]}


_EXECUTED = re.compile(r"([^\s:]+\.(?:md|ipynb))(?::\d+)?: Executed notebook in ([0-9.]+) seconds")
_FAILED = re.compile(r"([^\s:]+\.(?:md|ipynb))(?::\d+)?: \w+: Executing notebook failed")


def executed_in_log(log: str) -> list[dict]:
    """myst-nb's per-notebook lines in a book build's log ("PATH: Executed notebook in X seconds"):
    each chapter's execution time within the build (myst-nb executes with nbclient)."""
    rows = [{"notebook": Path(m.group(1)).name, "seconds": float(m.group(2)), "status": "ok", "error": None}
            for m in _EXECUTED.finditer(log)]
    rows += [{"notebook": Path(m.group(1)).name, "seconds": float("nan"), "status": "error",
              "error": "execution failed in the book build"} for m in _FAILED.finditer(log)]
    return rows
