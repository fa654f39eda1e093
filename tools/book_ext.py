"""Sphinx extension for the book: the claims ledger, anchors on checking cells, the way in, downloads.

- ``claims-ledger`` directive: every claim of CLAIMS.md (ID | Claim | Paper | Chapter | check |
  Status) as a block, its statement typeset (MyST with $...$), its status, and links to the
  notebook cells that check it. A checking cell is a code cell of ``notebooks/NN_*.md`` tagged
  ``claim-XX`` or whose first line is ``# claim: XX`` (comma-separated IDs allowed): the rules of
  tests/test_ledger.py.
- Each checking cell gets the anchor ``claim-xx`` (then ``claim-xx-2``, ...), a target inside the
  cell registered as a Sphinx label, so a broken link fails the ``-W`` build (and the PDF has it).
- The landing page and every chapter get a "Run this chapter yourself" box after the title: where
  the repository is and the install commands (``way_in``); it travels into the .ipynb download.
- Every chapter page offers its notebook as ``.ipynb`` (the executed copy) in the download menu.
- MathJax is loaded on every page (chapter titles in the sidebar contain mathematics); page titles
  used where MathJax does not run (print heading, <title>) get their TeX made plain text.
- tools/book_static/book.css: the ledger's layout, shell code that wraps instead of being cut off.
- In the PDF, cells tagged ``hide-input`` print without their code.
"""
from __future__ import annotations

import re
import shutil
import subprocess
from functools import lru_cache
from pathlib import Path

import jupytext
from docutils import nodes
from sphinx.addnodes import pending_xref
from sphinx.util.docutils import SphinxDirective

CHAPTER_GLOB = "notebooks/[0-9][0-9]_*.md"
ID_RE = re.compile(r"^[A-Z]\d+$")
FIRST_LINE_RE = re.compile(r"#\s*claims?:\s*(.+)$")


def read_ledger(path: Path) -> list[dict]:
    """The rows of CLAIMS.md's table: id, claim, paper, chapter, status (as in tests/test_ledger.py).

    Columns: ID | Claim | Paper | Chapter | check | Status. The claim is MyST markdown with TeX.
    """
    rows = []
    for line in path.read_text().splitlines():
        cells = [c.strip().replace("¦", "|")
                 for c in line.replace("\\|", "¦").strip().strip("|").split("|")]
        if len(cells) >= 5 and ID_RE.match(cells[0]):
            rows.append({"id": cells[0], "claim": cells[1], "paper": cells[2],
                         "chapters": [int(c) for c in re.findall(r"\d+", cells[3])],
                         "status": cells[5] if len(cells) >= 6 else ""})
    return rows


def cell_claim_ids(cell) -> list[str]:
    """Claim IDs a code cell checks: its ``claim-XX`` tags, then a ``# claim: XX`` first line."""
    if cell.cell_type != "code":
        return []
    ids = [t[len("claim-"):] for t in cell.metadata.get("tags", []) if t.startswith("claim-")]
    first = cell.source.lstrip().splitlines()[0] if cell.source.strip() else ""
    m = FIRST_LINE_RE.match(first)
    if m:
        ids += [s.strip() for s in m.group(1).split(",") if s.strip()]
    return ids


@lru_cache(maxsize=8)
def _scan(srcdir: str, stamp: tuple) -> dict[str, list[tuple[str, int, str]]]:
    found: dict[str, list[tuple[str, int, str]]] = {}
    for path in sorted(Path(srcdir).glob(CHAPTER_GLOB)):
        docname = path.relative_to(srcdir).with_suffix("").as_posix()
        for index, cell in enumerate(jupytext.read(path).cells):
            for cid in dict.fromkeys(cell_claim_ids(cell)):
                cells = found.setdefault(cid, [])
                anchor = f"claim-{cid.lower()}" + (f"-{len(cells) + 1}" if cells else "")
                cells.append((docname, index, anchor))
    return found


def checking_cells(srcdir: str) -> dict[str, list[tuple[str, int, str]]]:
    """Claim ID -> [(docname, cell index, anchor)] over every chapter, in reading order."""
    paths = sorted(Path(srcdir).glob(CHAPTER_GLOB))
    return _scan(srcdir, tuple((str(p), p.stat().st_mtime_ns) for p in paths))


def _anchor_cells(app, doctree) -> None:
    """doctree-read: give each checking cell of a chapter its anchor and register it as a label."""
    env = app.env
    wanted = {index: [] for _, cells in checking_cells(str(env.srcdir)).items()
              for doc, index, _ in cells if doc == env.docname}
    if not wanted:
        return
    for cid, cells in checking_cells(str(env.srcdir)).items():
        for doc, index, anchor in cells:
            if doc == env.docname:
                wanted[index].append((cid, anchor))
    std = env.get_domain("std")
    title = env.titles[env.docname].astext() if env.docname in env.titles else env.docname
    for node in doctree.findall(nodes.container):
        if node.get("nb_element") == "cell_code" and node.get("cell_index") in wanted:
            for cid, anchor in wanted.pop(node["cell_index"]):
                # a target inside the cell: an HTML anchor, and a \\label in the PDF (a container's
                # own ids are not written by the LaTeX builder)
                node.insert(0, nodes.target("", "", ids=[anchor]))
                std.labels[anchor] = (env.docname, anchor, f"{title}: claim {cid}")
                std.anonlabels[anchor] = (env.docname, anchor)
    for pairs in wanted.values():  # a removed cell (tag remove-cell): link to the page itself
        section = next(doctree.findall(nodes.section), None)
        top = section["ids"][0] if section is not None and section["ids"] else ""
        for cid, anchor in pairs:
            std.labels[anchor] = (env.docname, top, f"{title}: claim {cid}")
            std.anonlabels[anchor] = (env.docname, top)


class ClaimsLedger(SphinxDirective):
    """``{claims-ledger}``: the table of claims with a link to every cell that checks each one."""

    required_arguments = 0
    option_spec = {}

    def run(self):
        srcdir = Path(self.env.srcdir)
        ledger_path = srcdir / self.config.claims_ledger_file
        self.env.note_dependency(str(ledger_path))
        for path in sorted(srcdir.glob(CHAPTER_GLOB)):
            self.env.note_dependency(str(path))
        present = {int(p.name[:2]) for p in srcdir.glob(CHAPTER_GLOB)}
        cells = checking_cells(str(srcdir))
        return [self._entry(r, cells.get(r["id"], []), present) for r in read_ledger(ledger_path)]

    def _entry(self, claim: dict, cells: list, present: set) -> nodes.Node:
        """One claim as a block: a line ID - paper - chapter - checking cells, the claim, its status.

        Blocks rather than a six-column table: the statements are long formulas, which a table
        squeezes into a narrow column (and which LaTeX cannot break across table cells).
        """
        head = nodes.paragraph(classes=["claim-head"])
        head += nodes.strong("", claim["id"])
        head += nodes.Text(" · ")
        head += self._inline(claim["paper"])
        many = len(claim["chapters"]) > 1
        chapters = ", ".join(str(c) for c in claim["chapters"])
        head += nodes.Text(f" · chapter{'s' if many else ''} {chapters} · checked in ")
        for i, (docname, index, anchor) in enumerate(cells):
            ref = pending_xref("", refdomain="std", reftype="ref", reftarget=anchor,
                               refexplicit=True, refwarn=True, refdoc=self.env.docname)
            ref += nodes.inline("", f"{docname.split('/')[-1]}, cell {index + 1}")
            head += [nodes.Text("; ")] if i else []
            head += ref
        if not cells:
            written = any(ch in present for ch in claim["chapters"])
            head += nodes.emphasis("", "no checking cell yet" if written else "chapter not written yet")
        entry = nodes.container(classes=["claim-entry"], ids=[f"ledger-{claim['id'].lower()}"])
        entry += head
        entry += self.parse_text_to_nodes(claim["claim"])
        status = claim["status"] or "pending"
        slug = re.sub(r"[^a-z]+", "-", status.lower().split()[0]).strip("-") or "other"
        line = nodes.paragraph(classes=["claim-status-line"])
        line += nodes.strong("", "Status: ")
        line += nodes.inline("", "", *self._inline(status), classes=["claim-status", f"claim-status-{slug}"])
        entry += line
        return entry

    def _inline(self, text: str) -> list[nodes.Node]:
        """A short ledger cell as MyST inline markdown ($...$ is typeset)."""
        parsed, _ = self.parse_inline(text)
        return parsed


def _notebook_download(app, pagename, templatename, context, doctree) -> None:
    """Offer the chapter's notebook as .ipynb (the theme's download menu reads ipynb_source)."""
    if doctree is not None and (Path(app.srcdir) / f"{pagename}.md").exists() \
            and Path(app.srcdir, pagename).match(CHAPTER_GLOB[:-3]):
        context["ipynb_source"] = f"{pagename}.ipynb"


GREEK = {name: chr(code) for name, code in [
    ("alpha", 0x3B1), ("beta", 0x3B2), ("gamma", 0x3B3), ("delta", 0x3B4), ("epsilon", 0x3B5),
    ("eta", 0x3B7), ("theta", 0x3B8), ("lambda", 0x3BB), ("mu", 0x3BC), ("pi", 0x3C0),
    ("sigma", 0x3C3), ("tau", 0x3C4), ("phi", 0x3C6), ("omega", 0x3C9), ("Sigma", 0x3A3)]}


def plain_title(html: str) -> str:
    """A page title without markup, its TeX made readable text: ``q_\\sigma`` -> ``q_σ``.

    The theme prints ``pagetitle`` (the title with its tags stripped) as the print-only heading and
    the browser tab's title, where MathJax does not run: raw TeX there is what a reader would see.
    """
    text = re.sub(r"<[^>]+>", "", html).replace("\\(", "").replace("\\)", "")
    text = re.sub(r"\\(?:mathrm|text|mathbf|operatorname)\{([^}]*)\}", r"\1", text)
    text = re.sub(r"\\([A-Za-z]+)", lambda m: GREEK.get(m.group(1), m.group(1)), text)
    return re.sub(r"[{}]", "", text)


def _plain_pagetitle(app, pagename, templatename, context, doctree) -> None:
    """html-page-context: the print heading and <title> show no raw TeX (see plain_title)."""
    if "\\" in context.get("pagetitle", ""):
        context["pagetitle"] = plain_title(context["pagetitle"])


def repository_url(app) -> str:
    """Where the book's repository lives: conf ``book_repository_url`` (``repository: url`` of
    _config.yml), else the build checkout's ``origin`` remote, else "" (then the box says how to
    get the folder without an address)."""
    url = app.config.book_repository_url or app.config.html_theme_options.get("repository_url", "")
    if "executablebooks/jupyter-book" in url:   # Jupyter Book's default, not this book's address
        url = ""
    if not url:
        try:
            url = subprocess.run(["git", "remote", "get-url", "origin"], cwd=app.srcdir, text=True,
                                 capture_output=True, timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            url = ""
    return url if re.match(r"^(https?://|git@)", url) else ""


def way_in(url: str, docname: str) -> str:
    """The "run this chapter yourself" box (MyST markdown) for chapter ``docname``."""
    where = f"the repository {url}" if url else "the book's repository (the folder with `pyproject.toml`)"
    clone = f"git clone {url} ddim-book && cd ddim-book" if url else "cd ddim-book   # the repository's folder"
    chapter = docname.startswith("notebooks/")
    source = f"This page is `{docname}.md`" if chapter else "The chapters are the files `notebooks/NN_*.md`"
    return f"""
:::{{admonition}} Run this {"chapter" if chapter else "book"} yourself
:class: tip way-in
{source} in {where}. Every chapter runs with the library `ddim_lib` from that
repository installed (Python 3.10 or newer; a CPU is enough):

```bash
{clone}
python -m venv .venv && .venv/bin/pip install torch==2.13.0 && .venv/bin/pip install -e ".[test,book]"
make lab   # JupyterLab on notebooks/: a double-click opens a chapter as a notebook
```

(`make lab` does the install itself.) Chapters read shipped files, such as trained models, by
paths inside the repository: run a downloaded `.ipynb` from the repository's `notebooks/` folder.
:::
"""


WAY_IN_RE = re.compile(r"^# .*$", re.M)


def _insert_way_in(app, docname: str, source: list[str]) -> None:
    """source-read: after the H1 of the landing page and of every chapter, the way-in box.

    Inserted into the page's first markdown cell, so the executed notebook offered for download
    carries it too (cell indices, and jupyter-cache's hash of the code, do not change). The PDF
    has it too (it shares the site's doctrees): a printed chapter says where to get it running.
    """
    if docname != "book/intro" and not Path(app.srcdir, docname).match(CHAPTER_GLOB[:-3]):
        return
    m = WAY_IN_RE.search(source[0])
    if m:
        box = way_in(repository_url(app), docname)
        source[0] = source[0][:m.end()] + "\n" + box + source[0][m.end():]


def _write_notebooks(app, exception) -> None:
    """build-finished: copy each chapter's executed notebook (or its conversion) into _sources/."""
    if exception is not None or app.builder.format != "html":
        return
    executed = Path(app.outdir).parent / "jupyter_execute"
    for docname in app.env.found_docs:
        src = Path(app.srcdir, docname + ".md")
        if not src.exists() or not Path(app.srcdir, docname).match(CHAPTER_GLOB[:-3]):
            continue
        target = Path(app.outdir, "_sources", docname + ".ipynb")
        target.parent.mkdir(parents=True, exist_ok=True)
        done = executed / (docname + ".ipynb")
        if done.exists():
            shutil.copyfile(done, target)
        else:
            jupytext.write(jupytext.read(src), target)


def _add_static(app, config) -> None:
    """config-inited: serve tools/book_static (the book's CSS) next to the site's other assets."""
    static = str(Path(__file__).resolve().parent / "book_static")
    if static not in config.html_static_path:
        config.html_static_path.append(static)


def _pdf_hides_hidden_inputs(app, doctree, docname) -> None:
    """doctree-resolved: in the PDF, drop the code of cells tagged hide-input (plotting and
    bookkeeping); the site shows it behind a toggle, paper cannot."""
    if app.builder.format != "latex":
        return
    for node in list(doctree.findall(nodes.container)):
        if node.get("nb_element") == "cell_code" and "tag_hide-input" in node.get("classes", []):
            for child in list(node.children):
                if isinstance(child, nodes.Element) and child.get("nb_element") == "cell_code_source":
                    node.remove(child)


def _keep_cached_outputs_in_the_written_notebook() -> None:
    """myst-nb (1.4) writes ``jupyter_execute/<doc>.ipynb`` from the notebook object it parsed, but
    on a jupyter-cache hit its client swaps in a *new*, merged notebook: the copy written then has
    no outputs and no execution counts (the page itself renders the merged one). The book relies
    on that copy (the .ipynb download, tests/test_notebooks_executed.py, the PDF after the site),
    so after a cache hit the merged cells are copied into the parsed notebook object. A no-op
    when myst-nb keeps the object (a cache miss, or a myst-nb that fixes this)."""
    try:
        from myst_nb.core.execute.cache import NotebookClientCache
    except ImportError:   # another myst-nb layout: nothing to patch
        return
    if getattr(NotebookClientCache.start_client, "_book_ext", False):
        return
    original_start = NotebookClientCache.start_client

    def start_client(self):
        parsed = self._notebook
        original_start(self)
        merged = self._notebook
        if merged is not parsed:
            parsed.clear()
            parsed.update(merged)
            self._notebook = parsed

    start_client._book_ext = True
    NotebookClientCache.start_client = start_client


def setup(app):
    _keep_cached_outputs_in_the_written_notebook()
    app.connect("doctree-resolved", _pdf_hides_hidden_inputs)
    app.connect("config-inited", _add_static)
    app.add_css_file("book.css")
    # MathJax on every page, not only on pages with equations: the sidebar shows chapter titles
    # with mathematics (e.g. $q_\sigma$) on every page.
    app.set_html_assets_policy("always")
    app.add_config_value("claims_ledger_file", "CLAIMS.md", "env")
    app.add_config_value("book_repository_url", "", "env")
    app.connect("source-read", _insert_way_in)
    app.add_directive("claims-ledger", ClaimsLedger)
    app.connect("doctree-read", _anchor_cells)
    app.connect("html-page-context", _notebook_download, priority=400)
    app.connect("html-page-context", _plain_pagetitle)
    app.connect("build-finished", _write_notebooks)
    return {"parallel_read_safe": False, "parallel_write_safe": True, "env_version": 1}
