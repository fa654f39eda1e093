"""The book site: every chapter is in the table of contents, and the built site works offline.

The browser test loads every page of ``book/_build/html`` (built by ``make book``, which ``make
test`` runs first) in headless Chromium through Playwright, served on 127.0.0.1 only, and checks:
the mathematics is typeset by the local MathJax (``mjx-container`` elements, no ``mjx-merror``),
every image loads (naturalWidth > 0), every local link resolves to a file and its anchor exists,
no request leaves the host, and no page raises a JavaScript error. After MathJax has run it also
checks what a reader sees (``_reader_problems``): no raw TeX left in the page's text outside code
and outputs (``$``, ``\\frac``, ``_{``: the mark of inline math that Markdown broke apart, e.g. a
line starting with ``+`` read as a list item), no display equation wider than the content column
at 1280 px, and no unresolved reference (``??``, "unknown document", a reference without a link).
It keeps a screenshot of one chapter in ``build/artifacts/chapter.png``. Outside CI (env CI unset) it skips when Chromium or
the built site is missing; in CI (CI=true) that is a failure.
"""
from __future__ import annotations

import functools
import json
import http.server
import os
import re
import shutil
import threading
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urldefrag, urljoin, urlparse

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
# The build folder: book/_build, or DDIM_BOOK_BUILD (a build made with another --path-output).
SITE = Path(os.environ.get("DDIM_BOOK_BUILD", ROOT / "book" / "_build")) / "html"
ARTIFACTS = ROOT / "build" / "artifacts"
IN_CI = os.environ.get("CI", "").lower() not in ("", "0", "false")


def chapters() -> list[str]:
    return sorted(p.stem for p in (ROOT / "notebooks").glob("[0-9][0-9]_*.md"))


def toc_files() -> list[str]:
    """Every ``file:`` of book/_toc.yml (root included), relative to the repository root."""
    toc = yaml.safe_load((ROOT / "book" / "_toc.yml").read_text())
    files = [toc["root"]]

    def walk(entries):
        for entry in entries or []:
            if "file" in entry:
                files.append(entry["file"])
            walk(entry.get("sections"))

    for part in toc.get("parts", []):
        walk(part.get("chapters"))
    walk(toc.get("chapters"))
    return files


def test_toc_lists_every_chapter_and_only_existing_files():
    listed = toc_files()
    missing = [c for c in chapters() if f"notebooks/{c}" not in listed]
    assert not missing, f"add these chapters to book/_toc.yml: {missing}"
    absent = [f for f in listed if not (ROOT / f"{f}.md").is_file()]
    assert not absent, f"book/_toc.yml lists files that do not exist: {absent}"
    assert len(listed) == len(set(listed)), "a file is listed twice in book/_toc.yml"


def test_bibliography_has_the_required_references():
    bib = (ROOT / "book" / "references.bib").read_text()
    for eprint in ["2010.02502", "2006.11239", "1503.03585", "2011.13456", "2102.09672",
                   "2206.00927", "2206.00364", "2305.08891", "2202.00512"]:
        assert f"eprint    = {{{eprint}}}" in bib, f"arXiv:{eprint} missing from references.bib"


def _require(condition: bool, why: str) -> None:
    if not condition:
        if IN_CI:
            pytest.fail(f"{why} (required in CI)")
        pytest.skip(f"{why}; outside CI this test is skipped")


@pytest.fixture(scope="module")
def site() -> Path:
    _require((SITE / "book" / "intro.html").is_file(), f"the site is not built ({SITE}); run `make book`")
    return SITE


def _script_and_stylesheet_sources(html: str) -> list[str]:
    found = re.findall(r"<script\b[^>]*\bsrc=\"([^\"]*)\"", html)
    found += [href for tag in re.findall(r"<link\b[^>]*>", html) if "stylesheet" in tag
              for href in re.findall(r"\bhref=\"([^\"]*)\"", tag)]
    return found


def test_no_remote_scripts_or_stylesheets(site):
    pages = sorted(site.rglob("*.html"))
    assert pages
    remote = {str(p.relative_to(site)): src for p in pages
              for src in _script_and_stylesheet_sources(p.read_text(errors="replace"))
              if re.match(r"(https?:)?//", src)}
    assert not remote, f"pages load scripts or stylesheets from elsewhere: {remote}"
    assert (site / "_static" / "mathjax" / "tex-chtml.js").is_file(), "MathJax is not bundled"


class _Ids(HTMLParser):
    def __init__(self):
        super().__init__()
        self.ids: set[str] = set()

    def handle_starttag(self, tag, attrs):
        for key, value in attrs:
            if key in ("id", "name") and value:
                self.ids.add(value)


@functools.lru_cache(maxsize=None)
def _ids_of(path: Path) -> frozenset[str]:
    parser = _Ids()
    parser.feed(path.read_text(errors="replace"))
    return frozenset(parser.ids)


def _broken_local_links(site: Path, page_url: str, base: str, hrefs: list[str]) -> list[str]:
    broken = []
    for href in hrefs:
        absolute = urljoin(page_url, href)
        if not absolute.startswith(base) or href.startswith(("mailto:", "javascript:")):
            continue   # external links are fine to show; they are never fetched (checked below)
        url, fragment = urldefrag(absolute)
        rel = unquote(urlparse(url).path)[len(urlparse(base).path):]
        target = site / rel
        if target.is_dir():
            target = target / "index.html"
        if not target.is_file():
            broken.append(f"{href} (no file {rel})")
        elif fragment and target.suffix == ".html" and unquote(fragment) not in _ids_of(target):
            broken.append(f"{href} (no anchor #{fragment} in {rel})")
    return broken


def _pages(site: Path) -> list[str]:
    pages = [f"{f}.html" for f in toc_files() if (site / f"{f}.html").is_file()]
    expected = [f"{f}.html" for f in toc_files()]
    assert pages == expected, f"pages missing from the site: {sorted(set(expected) - set(pages))}"
    return pages


@pytest.fixture(scope="module")
def server(site):
    handler = functools.partial(_QuietHandler, directory=str(site))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/"
    httpd.shutdown()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def _math_problems(page) -> list[str]:
    """Math markup (Sphinx's span.math / div.math) must be typeset by the bundled MathJax."""
    markup = page.locator("span.math, div.math").count()
    if not page.locator('script[src*="mathjax/tex-chtml.js"]').count():
        return [f"{markup} math elements but no MathJax script"] if markup else []
    try:
        page.wait_for_function("() => window.MathJax && MathJax.startup && MathJax.startup.promise",
                               timeout=60_000)
        page.evaluate("() => MathJax.startup.promise")
    except Exception as exc:  # a timeout: MathJax did not load or start
        return [f"MathJax did not start: {type(exc).__name__}"]
    found = []
    if markup and page.locator("mjx-container").count() == 0:
        found.append(f"{markup} math elements but no typeset mathematics (mjx-container)")
    if page.locator("mjx-merror").count():
        found.append(f"{page.locator('mjx-merror').count()} MathJax errors")
    return found


# Runs in the page after MathJax: text nodes with raw TeX outside code, outputs and typeset math;
# display equations wider than the article column; unresolved references.
READER_CHECK_JS = r"""
() => {
  const CODE = "pre, code, script, style, textarea, .cell_output, .output, .highlight, .MathJax";
  const TEX = /\$|\\[A-Za-z]+|\^\{|_\{|\\\{|\\\|/;
  const raw = [], unresolved = [], wide = [];
  const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
  for (let n = walker.nextNode(); n; n = walker.nextNode()) {
    const el = n.parentElement, text = n.nodeValue;
    if (!el || !text.trim() || el.closest(CODE)) continue;
    if (text.includes("??")) unresolved.push(text.trim().slice(0, 80));
    if (el.closest("mjx-container")) continue;
    if (TEX.test(text)) raw.push(text.trim().replace(/\s+/g, " ").slice(0, 80));
  }
  for (const el of document.querySelectorAll("span.xref, .problematic"))
    if (!el.closest("a")) unresolved.push("no link: " + el.textContent.trim().slice(0, 60));
  if (document.body.innerText.includes("unknown document")) unresolved.push("unknown document");
  const column = (document.querySelector("article.bd-article") || document.body).getBoundingClientRect();
  for (const c of document.querySelectorAll("mjx-container")) {   // inline math cannot wrap either
    if (!c.closest("article") || c.closest("pre, .cell_output, .output")) continue;
    const r = (c.querySelector("mjx-math") || c).getBoundingClientRect();
    if (r.width > column.width + 1 || r.right > column.right + 1 || r.left < column.left - 1) {
      const id = c.closest("[id]") ? c.closest("[id]").id : "";
      const kind = c.getAttribute("display") === "true" ? "display" : "inline";
      wide.push(`${kind}, ${Math.round(r.width)} px, ends at ${Math.round(r.right - column.left)} px ` +
                `of a ${Math.round(column.width)} px column (#${id})`);
    }
  }
  for (const pre of document.querySelectorAll(
      "div.highlight-bash pre, div.highlight-shell pre, div.highlight-console pre, div.highlight-sh pre"))
    if (pre.scrollWidth > pre.clientWidth + 1)   // shell commands must be readable without scrolling
      wide.push(`shell code cut off: ${pre.scrollWidth} px in ${pre.clientWidth} px: ` +
                pre.textContent.trim().slice(0, 50));
  return {raw, wide, unresolved};
}
"""


def _reader_problems(page) -> tuple[list[str], int]:
    """What a reader sees after MathJax (READER_CHECK_JS): problems, and the raw-TeX count."""
    found = page.evaluate(READER_CHECK_JS)
    problems = [f"raw TeX in the text: {t!r}" for t in found["raw"]]
    problems += [f"equation wider than the column: {w}" for w in found["wide"]]
    problems += [f"unresolved reference: {u!r}" for u in found["unresolved"]]
    return problems, len(found["raw"])


@pytest.mark.slow
def test_every_page_in_headless_chromium(site, server):
    chromium = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)
    _require(chromium is not None, "chromium is not installed (Debian package `chromium`)")
    from playwright.sync_api import sync_playwright

    problems: dict[str, list[str]] = {}
    off_host: list[str] = []
    chapter_pages = [f"notebooks/{c}.html" for c in chapters()]
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=[
            "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync"])
        page = browser.new_page(viewport={"width": 1280, "height": 1600})

        def route(r):
            url = r.request.url
            if url.startswith(server) or url.startswith(("data:", "blob:", "about:")):
                r.continue_()
            else:
                off_host.append(url)
                r.abort()

        page.route("**/*", route)
        errors: list[str] = []
        raw_count: dict[str, int] = {}
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        for rel in _pages(site):
            errors.clear()
            url = server + rel
            response = page.goto(url, wait_until="load")
            found = []
            if response is None or response.status != 200:
                found.append(f"HTTP {response.status if response else 'no response'}")
            found += _math_problems(page)
            reader, raw_count[rel] = _reader_problems(page)
            found += reader
            broken_images = page.eval_on_selector_all(
                "img", "els => els.filter(e => !(e.complete && e.naturalWidth > 0)).map(e => e.src)")
            found += [f"image does not load: {src}" for src in broken_images]
            hrefs = page.eval_on_selector_all("a[href]", "els => els.map(e => e.getAttribute('href'))")
            found += [f"broken link {b}" for b in _broken_local_links(site, url, server, hrefs)]
            if rel in chapter_pages and not any(h.endswith(f"_sources/{rel[:-5]}.ipynb") for h in hrefs):
                found.append("no .ipynb download link")
            if rel in chapter_pages or rel == "book/intro.html":   # the way in: where and how to install
                box = page.locator(".way-in")
                text = box.first.inner_text() if box.count() == 1 else ""
                if "pip install" not in text or "ddim_lib" not in text:
                    found.append("no 'Run this chapter yourself' box with the install commands")
            found += [f"JavaScript error: {e}" for e in errors]
            if found:
                problems[rel] = found
        shot = chapter_pages[1] if len(chapter_pages) > 1 else (chapter_pages or ["book/notation.html"])[0]
        page.goto(server + shot, wait_until="load")
        _math_problems(page)
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "chapter.png"))
        browser.close()
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / "raw_tex_per_page.json").write_text(json.dumps(raw_count, indent=1) + "\n")
    assert not off_host, f"requests left the host: {sorted(set(off_host))[:10]}"
    assert not problems, "\n".join(f"{page}: {'; '.join(p)}" for page, p in problems.items())
    assert (ARTIFACTS / "chapter.png").stat().st_size > 10_000
