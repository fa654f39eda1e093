"""JupyterLab as the README promises it (``make lab``), proved against a real JupyterLab server.

A JupyterLab server is started from this project's .venv on 127.0.0.1 the way ``make lab`` starts
it (serving the notebooks/ folder, ``--allow-root`` when run as root), with empty user
configuration folders, so only the project's own settings count. Two layers are tested:

1. Through the server's REST API (the calls the Lab front end makes): the settings API reports
   the default viewer of markdown and MyST files as jupytext's notebook factory ("Jupytext
   Notebook", checked against the installed jupyterlab-jupytext); and every chapter, fetched as
   a notebook through the contents API and saved back as Lab saves it after a run (execution
   counts, outputs, the kernelspec Lab writes when the kernel starts) is byte-identical, with no
   paired .ipynb: saving a chapter from Lab leaves ``git status`` clean.
2. Through the real UI, driven by headless Chromium (Playwright): a double-click on chapter 1 in
   the file browser opens a notebook (cells, a kernel), not the text editor; Ctrl+S after the
   kernel started leaves the file byte-identical. Skipped outside CI without Chromium.

The server works on a temporary copy of notebooks/ (with its jupytext.toml), never on the repository.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from jupyter_client.kernelspec import KernelSpecManager

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
LABEXT = Path(sys.prefix) / "share" / "jupyter" / "labextensions" / "jupyterlab-jupytext"
OVERRIDES = ROOT / "tools" / "lab_overrides.json"
DOCMANAGER = "@jupyterlab/docmanager-extension:plugin"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]




def test_make_lab_installs_the_project_setting_and_runs_as_root():
    dry = subprocess.run(["make", "-n", "--no-print-directory", "lab"], cwd=ROOT, capture_output=True,
                         text=True, check=True).stdout
    assert "cp tools/lab_overrides.json .venv/share/jupyter/lab/settings/overrides.json" in dry
    from jupyterlab.labapp import LabApp   # ... which is where this JupyterLab reads overrides from
    assert Path(LabApp().app_settings_dir) == Path(sys.prefix) / "share" / "jupyter" / "lab" / "settings"
    assert Path(sys.prefix).resolve() == (ROOT / ".venv").resolve() or "VIRTUAL_ENV" not in os.environ
    assert re.search(r"jupyter lab notebooks .*id -u.*= 0 && echo --allow-root", dry), dry


def test_the_default_viewer_is_jupytexts_notebook_factory():
    wanted = json.loads(OVERRIDES.read_text())[DOCMANAGER]["defaultViewers"]
    assert set(wanted) == {"markdown", "myst"} and set(wanted.values()) == {"Jupytext Notebook"}
    bundle = "".join(p.read_text(errors="replace") for p in (LABEXT / "static").glob("*.js"))
    assert 'FACTORY="Jupytext Notebook"' in bundle, "jupyterlab-jupytext's notebook factory was renamed"
    assert '"markdown","myst"' in bundle, "jupyterlab-jupytext no longer registers these file types"


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """A JupyterLab server on a copy of the chapters, with the project's settings only."""
    base = tmp_path_factory.mktemp("lab")
    work = base / "repo"
    shutil.copytree(ROOT / "notebooks", work / "notebooks", ignore=shutil.ignore_patterns("*.ipynb*"))
    settings = base / "app-settings"
    settings.mkdir()
    shutil.copy(OVERRIDES, settings / "overrides.json")   # what `make lab` puts in .venv/share/...
    env = dict(os.environ, JUPYTER_CONFIG_DIR=str(base / "user-config"),
               JUPYTER_DATA_DIR=str(base / "user-data"), JUPYTER_RUNTIME_DIR=str(base / "runtime"),
               HOME=str(base))
    port, token = _free_port(), "test-token"
    cmd = [str(BIN / "jupyter"), "lab", "--no-browser", "--ServerApp.ip=127.0.0.1",
           f"--ServerApp.port={port}", f"--IdentityProvider.token={token}",
           f"--ServerApp.root_dir={work / 'notebooks'}", f"--LabApp.app_settings_dir={settings}"]
    if os.getuid() == 0:
        cmd.append("--allow-root")
    log = open(base / "lab.log", "w")
    proc = subprocess.Popen(cmd, cwd=work / "notebooks", env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            with urllib.request.urlopen(f"{url}/api/status?token={token}", timeout=5):
                break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                pytest.fail("JupyterLab did not start:\n" + (base / "lab.log").read_text()[-2000:])
            time.sleep(0.5)
    yield {"url": url, "token": token, "work": work}
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.close()


def _call(lab, method: str, path: str, body: dict | None = None) -> dict:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(f"{lab['url']}{path}", data=data, method=method, headers={
        "Authorization": f"token {lab['token']}", "Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as r:
        return json.loads(r.read() or b"{}")


def test_lab_opens_chapters_as_notebooks(lab):
    setting = _call(lab, "GET", f"/lab/api/settings/{DOCMANAGER}")
    # overrides.json replaces the schema's default (the user's own settings stay empty)
    assert "defaultViewers" not in setting["settings"]
    viewers = setting["schema"]["properties"]["defaultViewers"]["default"]
    assert viewers.get("markdown") == "Jupytext Notebook" and viewers.get("myst") == "Jupytext Notebook"
    model = _call(lab, "GET", "/api/contents/01_forward_process.md?type=notebook&content=1")
    assert model["type"] == "notebook" and model["content"]["nbformat"] == 4
    assert any(c["cell_type"] == "code" for c in model["content"]["cells"])


CHAPTERS = sorted(p.name for p in (ROOT / "notebooks").glob("[0-9][0-9]_*.md"))


@pytest.mark.parametrize("name", CHAPTERS)
def test_saving_a_chapter_from_lab_leaves_it_unchanged(lab, name):
    path = lab["work"] / "notebooks" / name
    before = path.read_bytes()
    model = _call(lab, "GET", f"/api/contents/{name}?type=notebook&content=1")
    nb = model["content"]
    nb["metadata"]["language_info"] = {"name": "python", "version": sys.version.split()[0]}
    # what the front end writes when the kernel starts: name, display_name, language, in this order
    spec = KernelSpecManager().get_kernel_spec("python3")
    nb["metadata"]["kernelspec"] = {"name": "python3", "display_name": spec.display_name,
                                    "language": spec.language}
    for count, cell in enumerate((c for c in nb["cells"] if c["cell_type"] == "code"), start=1):
        cell["execution_count"] = count
        cell["outputs"] = [{"output_type": "stream", "name": "stdout", "text": "ran\n"}]
        cell["metadata"]["execution"] = {"iopub.status.idle": "2026-01-01T00:00:00Z"}
    _call(lab, "PUT", f"/api/contents/{name}",
          {"type": "notebook", "format": "json", "content": nb})
    after = path.read_bytes()
    hint = ("\nThe header's kernelspec must read, in this order: name: python3, display_name: "
            f"{spec.display_name}, language: python (see notebooks/jupytext.toml); a '+++' right "
            "after a code cell is not jupytext's own output: drop it.")
    assert after == before, f"saving {name} from JupyterLab rewrote it:{hint}\n" + "\n".join(
        line for line in __import__("difflib").unified_diff(
            before.decode().splitlines(), after.decode().splitlines(), lineterm="", n=0))
    assert not list(path.parent.glob("*.ipynb")), "a paired .ipynb appeared next to the chapter"


IN_CI = os.environ.get("CI", "").lower() not in ("", "0", "false")


def test_double_click_opens_a_notebook_and_saving_keeps_the_file(lab):
    """The real JupyterLab UI in headless Chromium: open chapter 1 by double-click, start its kernel, save."""
    chromium = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)
    if chromium is None:
        if IN_CI:
            pytest.fail("chromium is not installed (required in CI)")
        pytest.skip("chromium is not installed; outside CI this test is skipped")
    from playwright.sync_api import sync_playwright

    name = "01_forward_process.md"
    path = lab["work"] / "notebooks" / name
    path.write_bytes((ROOT / "notebooks" / name).read_bytes())   # undo the API test's save, if any
    before = path.read_bytes()
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.route("**/*", lambda r: r.continue_() if r.request.url.startswith(lab["url"]) else r.abort())
        page.goto(f"{lab['url']}/lab?token={lab['token']}", wait_until="load", timeout=120_000)
        item = page.locator(".jp-DirListing-item", has_text=name).first
        item.wait_for(timeout=120_000)
        item.dblclick()
        page.wait_for_function("() => document.querySelectorAll('.jp-NotebookPanel .jp-Cell').length > 5",
                               timeout=120_000)
        assert page.locator(".jp-FileEditor").count() == 0, "the chapter also opened in the text editor"
        # the kernel has started (Lab then writes its kernelspec into the notebook's metadata)
        page.wait_for_function("() => /Idle/.test(document.querySelector('.jp-StatusBar-Widget, "
                               "#jp-main-statusbar')?.innerText || document.body.innerText)", timeout=120_000)
        cells = page.locator(".jp-NotebookPanel .jp-Cell").count()
        # run the first code cell, as a reader would (this makes the notebook dirty), then save
        page.locator(".jp-NotebookPanel .jp-CodeCell").first.click()
        page.keyboard.press("Shift+Enter")
        page.wait_for_function("() => /\\[1\\]/.test(document.querySelector('.jp-NotebookPanel .jp-CodeCell "
                               ".jp-InputPrompt')?.innerText || '')", timeout=120_000)
        mtime = path.stat().st_mtime_ns
        # Ctrl+S as a reader presses it. On a loaded machine a key press can reach the page before
        # the notebook has focus again after Shift+Enter; then it is pressed again (at most 3 times),
        # after clicking the notebook's first cell, as a reader would.
        for attempt in range(3):
            page.keyboard.press("Control+s")
            deadline = time.monotonic() + 20
            while path.stat().st_mtime_ns == mtime and time.monotonic() < deadline:
                time.sleep(0.2)
            if path.stat().st_mtime_ns != mtime:
                break
            page.locator(".jp-NotebookPanel .jp-Cell").first.click()
        browser.close()
    assert path.stat().st_mtime_ns != mtime, "Ctrl+S did not save the chapter"
    assert cells > 5
    after = path.read_bytes()
    assert after == before, f"saving {name} from the JupyterLab UI rewrote it:\n" + "\n".join(
        __import__("difflib").unified_diff(before.decode().splitlines(), after.decode().splitlines(),
                                           lineterm="", n=0))
