"""Browser tests: the built book and a notebook in JupyterLab, in headless Chromium.

(a) Builds the book (scripts/build_book.py), serves build/book on 127.0.0.1 and opens every
    chapter listed in chapters/SUMMARY.md: math is typeset (an <svg> inside <mjx-container>, no
    TeX error, no raw \\( or \\[ left in the text), every <img> loads, no request fails, and the
    "next chapter" link leads to the next chapter. At 1280 and 800 px: nothing is wider than the
    text column (code blocks and tables scroll inside themselves), every figure is loaded, visible,
    numbered "Figure N.k", captioned, described (alt) and rendered at twice its displayed size,
    the answer blocks open and close; at 1280 px no chapter page is taller than MAX_PAGE_PX.
(b) Starts JupyterLab on a temp copy of notebooks/, opens notebooks/01_tour.ipynb, runs all
    cells from the Run menu, moves the IntSlider described "top-k" with the keyboard and checks
    that the output next to it changes.

Screenshots go to artifacts/screenshots/. Debian's chromium (/usr/bin/chromium) is required;
without it the module is skipped. Nothing is downloaded.

Environment knobs (for development):
  DSIM_BOOK_ROOT=/path        repository root to build and serve (default: this repo)
  DSIM_BOOK_SKIP_BUILD=1      reuse an existing build/book instead of building
  DSIM_WIDGET_NOTEBOOK=notebooks/01_tour.ipynb   notebook for (b), relative to the root
  DSIM_WIDGET_SLIDER=top-k    description of the slider to move
  DSIM_LAB_RUN_TIMEOUT=120    seconds that Run All Cells may take in JupyterLab
"""

from __future__ import annotations

import contextlib
import functools
import http.server
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
ROOT = Path(os.environ.get("DSIM_BOOK_ROOT", REPO)).resolve()
CHROMIUM = Path(os.environ.get("DSIM_CHROMIUM", "/usr/bin/chromium"))  # Debian's chromium
SHOTS = REPO / "artifacts" / "screenshots"
WAIT_MS = 120_000  # upper bound for any single wait in the browser
# The book build (seconds: it converts the committed notebook runs) runs in the first test's
# setup. pytest-timeout counts setup, so these tests get the build's deadline plus a margin
# instead of the suite's per-test timeout.
BUILD_DEADLINE_S = 600

pytestmark = [
    pytest.mark.browser,
    pytest.mark.timeout(BUILD_DEADLINE_S + 300),
    pytest.mark.skipif(
        not CHROMIUM.exists(),
        reason=f"Debian's chromium is not installed ({CHROMIUM}); "
        "`apt-get install chromium` to run the browser tests",
    ),
]
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright (python) is not installed")


def _chapters() -> list[str]:
    """Chapter pages (html names) in SUMMARY.md order."""
    summary = ROOT / "chapters" / "SUMMARY.md"
    if not summary.is_file():
        return []
    text = re.sub(r"<!--.*?-->", "", summary.read_text(), flags=re.S)
    return [re.sub(r"\.md$", ".html", m) for m in re.findall(r"\]\(([^)#\s]+\.md)\)", text)]


CHAPTERS = _chapters()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _shot(page_or_locator, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    kwargs = {"full_page": True} if hasattr(page_or_locator, "goto") else {}
    page_or_locator.screenshot(path=str(SHOTS / name), timeout=30_000, **kwargs)


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def built_book() -> Path:
    book = ROOT / "build" / "book"
    if os.environ.get("DSIM_BOOK_SKIP_BUILD") == "1" and (book / "index.html").is_file():
        return book
    if not (
        shutil.which("npm")
        or os.environ.get("DSIM_MATHJAX_TARBALL")
        or (ROOT / "chapters" / "vendor" / "mathjax" / "VERSION").is_file()
    ):
        pytest.skip(
            "npm is not installed, so the book build cannot vendor MathJax "
            "(install npm, or set DSIM_MATHJAX_TARBALL)"
        )
    # The build bounds itself (BUILD_DEADLINE_S) and names a late notebook; the margin: mdBook.
    proc = subprocess.run(
        [
            sys.executable,
            str(REPO / "scripts" / "build_book.py"),
            "--root",
            str(ROOT),
            "--deadline",
            str(BUILD_DEADLINE_S),
        ],
        capture_output=True,
        text=True,
        timeout=BUILD_DEADLINE_S + 120,
    )
    if proc.returncode != 0:
        pytest.fail(
            f"scripts/build_book.py failed (exit {proc.returncode}):\n"
            f"{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}",
            pytrace=False,
        )
    return book


@pytest.fixture(scope="session")
def book_url(built_book):
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(Quiet, directory=str(built_book))
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def book_page(browser, book_url):
    """A page that records failed requests and page errors on the book's own origin."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.set_default_timeout(WAIT_MS)
    problems: list[str] = []
    page.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))
    # A request the page itself abandons (net::ERR_ABORTED: the favicon of a page that a click
    # leaves before it finished loading) is not a failure; a missing file is an HTTP 404 below.
    page.on(
        "requestfailed",
        lambda r: (
            problems.append(f"request failed: {r.url} ({r.failure})")
            if r.url.startswith(book_url) and "ERR_ABORTED" not in (r.failure or "")
            else None
        ),
    )
    page.on(
        "response",
        lambda r: (
            problems.append(f"HTTP {r.status}: {r.url}")
            if r.url.startswith(book_url) and r.status >= 400
            else None
        ),
    )
    page.problems = problems
    try:
        yield page
    finally:
        context.close()


# --------------------------------------------------------------------------- (a) the book

TEXT_OUTSIDE_MATH_JS = """() => {
  const main = document.querySelector('main').cloneNode(true);
  main.querySelectorAll('pre, code, script, style, mjx-container, textarea')
    .forEach(e => e.remove());
  return main.textContent;
}"""

IMAGES_JS = """() => Array.from(document.querySelectorAll('img')).map(i => ({
  src: i.getAttribute('src'), complete: i.complete, w: i.naturalWidth}))"""


def _wait_for_mathjax(page) -> None:
    page.wait_for_function("() => window.MathJax && MathJax.startup && MathJax.startup.promise")
    page.evaluate("() => MathJax.startup.promise.then(() => true)")


def test_book_has_chapters():
    assert CHAPTERS, f"no chapters found in {ROOT / 'chapters' / 'SUMMARY.md'}"


@pytest.mark.parametrize("chapter", CHAPTERS)
def test_chapter_renders(book_page, book_url, built_book, chapter):
    page = book_page
    page.goto(f"{book_url}/{chapter}", wait_until="load")
    _wait_for_mathjax(page)
    page.wait_for_function("() => Array.from(document.images).every(i => i.complete)")

    raw = (built_book / chapter).read_text()
    main_html = raw[raw.find("<main") : raw.find("</main>")]
    has_math_source = bool(re.search(r"\\\(|\\\[|\$\$|\\begin\{", main_html))
    n_math = page.locator("main mjx-container svg").count()
    if has_math_source:
        assert n_math > 0, f"{chapter}: the page has TeX but MathJax rendered no <svg>"
    n_err = page.locator("mjx-container [data-mml-node='merror']").count()
    assert n_err == 0, f"{chapter}: {n_err} TeX error(s): " + " | ".join(
        page.locator("mjx-container [data-mml-node='merror']").evaluate_all(
            "els => els.map(e => e.getAttribute('data-mjx-error') || e.textContent)"
        )
    )
    text = page.evaluate(TEXT_OUTSIDE_MATH_JS)
    leftovers = [
        text[max(0, m.start() - 40) : m.end() + 40].replace("\n", " ")
        for m in re.finditer(r"\\\(|\\\)|\\\[|\\\]|\$\$", text)
    ]
    assert not leftovers, f"{chapter}: raw TeX delimiters left in the text: {leftovers[:5]}"

    images = page.evaluate(IMAGES_JS)
    broken = [i["src"] for i in images if not i["w"]]
    assert not broken, f"{chapter}: images that did not load: {broken}"
    _shot(page, f"book_{Path(chapter).stem}.png")
    assert not page.problems, f"{chapter}: " + "; ".join(page.problems)


# The book's layout at a desktop and a narrow width: nothing wider than the text column (code blocks
# and tables scroll inside themselves), figures loaded, visible, numbered, captioned, described and
# rendered at twice their displayed size; answer blocks fold; chapter pages of bounded height.
WIDTHS = (1280, 800)
MAX_PAGE_PX = 12_000  # a chapter page's height at 1280 px (issue 18: "about 12,000 px")
# Chapters whose notebook does not draw its figures with dsim.viz.show yet (09 and 11 were written
# before dsim.viz): their figures are checked for loading and alt text only. Remove a chapter from
# this set when its notebook moves to dsim.viz.
UNCAPTIONED = {"09_checking_the_claims.html", "11_running_on_less.html"}
# Chapters 01-08 end with problems whose computed answers fold.
WITH_ANSWERS = [c for c in CHAPTERS if re.match(r"(0[1-8]|1[012])_", c)]

OVERFLOW_JS = """() => {
  const main = document.querySelector('main');
  const limit = main.getBoundingClientRect().right + 1;
  const scroller = e => {
    for (let p = e.parentElement; p && p !== main; p = p.parentElement) {
      const o = getComputedStyle(p).overflowX;
      if (o === 'auto' || o === 'scroll' || o === 'hidden') return true;
    }
    return false;
  };
  const wide = [];
  main.querySelectorAll(
    'p, li, table, pre, figure, img, h1, h2, h3, blockquote, details, div.math, mjx-container'
  ).forEach(e => {
    if (scroller(e)) return;
    const r = e.getBoundingClientRect();
    if (r.width && r.right > limit)
      wide.push(e.tagName.toLowerCase() + ' right edge ' + Math.round(r.right) + ' > '
        + Math.round(limit) + ': '
        + (e.textContent || e.getAttribute('src') || '').trim().slice(0, 60));
  });
  const doc = document.documentElement;
  return {page: doc.scrollWidth - doc.clientWidth, wide};
}"""

FIGURES_JS = """() => Array.from(document.querySelectorAll('main figure.dsim-figure')).map(f => {
  const img = f.querySelector('img'), cap = f.querySelector('figcaption');
  const r = img.getBoundingClientRect(), s = getComputedStyle(img);
  return {src: img.getAttribute('src'), id: f.id, complete: img.complete,
          natural: img.naturalWidth, w: r.width, h: r.height,
          visible: s.visibility !== 'hidden' && s.display !== 'none' && r.width > 0 && r.height > 0,
          alt: img.getAttribute('alt') || '', caption: cap ? cap.textContent.trim() : ''};
})"""


@pytest.fixture(params=WIDTHS, ids=lambda w: f"{w}px")
def sized_page(request, browser, book_url):
    """A page of the book at one of WIDTHS; records failed requests and page errors."""
    context = browser.new_context(viewport={"width": request.param, "height": 900})
    page = context.new_page()
    page.set_default_timeout(WAIT_MS)
    problems: list[str] = []
    page.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))
    page.on(
        "requestfailed",
        lambda r: (
            problems.append(f"request failed: {r.url} ({r.failure})")
            if r.url.startswith(book_url) and "ERR_ABORTED" not in (r.failure or "")
            else None
        ),
    )
    page.problems = problems
    page.width = request.param
    try:
        yield page
    finally:
        context.close()


def _open(page, url: str) -> None:
    page.goto(url, wait_until="load")
    _wait_for_mathjax(page)
    page.wait_for_function("() => Array.from(document.images).every(i => i.complete)")


@pytest.mark.parametrize("chapter", CHAPTERS)
def test_nothing_wider_than_the_column(sized_page, book_url, chapter):
    page = sized_page
    _open(page, f"{book_url}/{chapter}")
    r = page.evaluate(OVERFLOW_JS)
    assert r["page"] <= 1, (
        f"{chapter} at {page.width} px: the page scrolls sideways by {r['page']} px"
    )
    assert not r["wide"], f"{chapter} at {page.width} px: wider than the column: {r['wide'][:5]}"
    # Code blocks scroll inside themselves: a block wider than its box must be scrollable.
    stuck = page.evaluate(
        """() => Array.from(document.querySelectorAll('main pre')).filter(p =>
             p.scrollWidth > p.clientWidth + 1 && !['auto', 'scroll'].includes(
               getComputedStyle(p).overflowX) && !['auto', 'scroll'].includes(
               getComputedStyle(p.querySelector('code') || p).overflowX)).length"""
    )
    assert stuck == 0, f"{chapter}: {stuck} code block(s) cut off instead of scrolling"
    assert not page.problems, "; ".join(page.problems)


@pytest.mark.parametrize("chapter", CHAPTERS)
def test_figures_loaded_numbered_captioned(sized_page, book_url, chapter):
    page = sized_page
    _open(page, f"{book_url}/{chapter}")
    figures = page.evaluate(FIGURES_JS)
    if re.match(r"0[1-8]_", chapter):
        assert figures, f"{chapter}: no figure"
    numbers = []
    for f in figures:
        where = f"{chapter} at {page.width} px, {f['src']}"
        assert f["complete"] and f["natural"] > 0, f"{where}: did not load"
        assert f["visible"], f"{where}: not visible ({f['w']} x {f['h']})"
        assert f["alt"].strip(), f"{where}: no alt text"
        if chapter in UNCAPTIONED:
            continue
        # Crisp: rendered at (at least about) twice the width it is displayed at.
        assert f["natural"] >= 1.9 * f["w"], f"{where}: {f['natural']} px shown at {f['w']:.0f}"
        m = re.match(r"Figure (\d+)\.(\d+)\.\s+\S", f["caption"])
        if f["id"]:  # a numbered figure (a widget's preview has no number)
            assert m, f"{where}: caption {f['caption'][:60]!r} is not 'Figure N.k. ...'"
            assert int(m.group(1)) == int(chapter[:2]), f"{where}: numbered in another chapter"
            numbers.append(int(m.group(2)))
        else:
            assert f["caption"], f"{where}: no caption"
    assert numbers == sorted(set(numbers)), f"{chapter}: figure numbers out of order: {numbers}"


@pytest.mark.parametrize("chapter", WITH_ANSWERS)
def test_answer_blocks_open_and_close(sized_page, book_url, chapter):
    page = sized_page
    _open(page, f"{book_url}/{chapter}")
    blocks = page.locator("main details.answer")
    assert blocks.count() >= 1, f"{chapter}: no folded answers after the problems"
    for i in range(blocks.count()):
        block = blocks.nth(i)
        body = block.locator(":scope > :not(summary)").first
        assert block.get_attribute("open") is None, f"{chapter}: answers shown before a click"
        assert not body.is_visible(), f"{chapter}: the folded answers are visible"
        block.locator("summary").click()
        assert block.get_attribute("open") is not None and body.is_visible(), (
            f"{chapter}: the answers did not open"
        )
        assert "Answer" in body.inner_text() or body.inner_text().strip(), f"{chapter}: empty"
        block.locator("summary").click()
        assert block.get_attribute("open") is None and not body.is_visible(), (
            f"{chapter}: the answers did not close"
        )


@pytest.mark.parametrize("chapter", WITH_ANSWERS)
def test_chapter_page_height(book_page, book_url, chapter):
    page = book_page
    _open(page, f"{book_url}/{chapter}")
    height = page.evaluate("() => document.documentElement.scrollHeight")
    print(f"{chapter}: {height} px at 1280 px")
    assert height <= MAX_PAGE_PX, (
        f"{chapter} is {height} px tall at 1280 px (at most {MAX_PAGE_PX})"
    )


@pytest.mark.parametrize("index", range(len(CHAPTERS)), ids=CHAPTERS)
def test_next_chapter_link(book_page, book_url, index):
    page = book_page
    page.goto(f"{book_url}/{CHAPTERS[index]}", wait_until="load")
    # mdBook has two next links (wide and mobile layouts); CSS shows one, depending on the width.
    nxt = page.locator("a[rel~='next']:visible")
    if index == len(CHAPTERS) - 1:
        assert page.locator("a[rel~='next']").count() == 0, (
            "the last chapter has a next-chapter link"
        )
        return
    expected = CHAPTERS[index + 1]
    assert nxt.count() >= 1, f"{CHAPTERS[index]}: no visible next-chapter link"
    href = urllib.parse.urljoin(page.url, nxt.first.get_attribute("href") or "")
    assert href == f"{book_url}/{expected}", (
        f"{CHAPTERS[index]}: next link points to {href}, not {expected}"
    )
    nxt.first.click(timeout=30_000)
    page.wait_for_url(re.compile(re.escape(f"{book_url}/{expected}") + r"$"), timeout=30_000)
    assert page.title(), "the next chapter has no title"
    assert not page.problems, "; ".join(page.problems)


# --------------------------------------------------------------------------- (b) JupyterLab

LAB_SETTINGS = {
    # All cells in the DOM (no virtual scrolling), so prompts and outputs can be inspected.
    "@jupyterlab/notebook-extension/tracker.jupyterlab-settings": {"windowingMode": "none"},
    # No news/update toast over the notebook.
    "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {
        "fetchNews": "false",
        "checkForUpdates": False,
    },
}


@contextlib.contextmanager
def jupyter_lab(notebooks: Path):
    """Run JupyterLab on a temp copy of `notebooks`; yield (base_url, log_path). Always stops it."""
    tmp = Path(tempfile.mkdtemp(prefix="dsim-lab-"))
    root_dir = tmp / "notebooks"
    shutil.copytree(notebooks, root_dir, ignore=shutil.ignore_patterns(".ipynb_checkpoints"))
    for rel, value in LAB_SETTINGS.items():
        f = tmp / "settings" / rel
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text(json.dumps(value))
    env = {k: v for k, v in os.environ.items() if k != "MPLBACKEND"}  # kernels: inline plots
    env.update(
        JUPYTER_CONFIG_DIR=str(tmp / "config"),
        JUPYTER_RUNTIME_DIR=str(tmp / "runtime"),
        IPYTHONDIR=str(tmp / "ipython"),
        JUPYTER_PLATFORM_DIRS="1",
        PYTHONPATH=os.pathsep.join(
            [str(ROOT)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])
        ),
    )
    port = _free_port()
    jupyter = Path(sys.executable).parent / "jupyter"
    cmd = [
        str(jupyter) if jupyter.exists() else "jupyter",
        "lab",
        "--no-browser",
        *(["--allow-root"] if hasattr(os, "geteuid") and os.geteuid() == 0 else []),
        "--ip=127.0.0.1",
        f"--port={port}",
        "--ServerApp.port_retries=0",
        "--IdentityProvider.token=",
        "--ServerApp.password=",
        f"--ServerApp.root_dir={root_dir}",
        "--LabApp.news_url=None",
        "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
        f"--LabApp.user_settings_dir={tmp / 'settings'}",
        f"--LabApp.workspaces_dir={tmp / 'workspaces'}",
    ]
    log_path = tmp / "jupyter.log"
    log = open(log_path, "w")
    proc = subprocess.Popen(
        cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True, cwd=tmp
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while True:
            if proc.poll() is not None:
                raise RuntimeError(
                    f"jupyter lab exited with {proc.returncode}:\n{log_path.read_text()[-3000:]}"
                )
            try:
                with urllib.request.urlopen(f"{base}/api/status", timeout=5) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.time() > deadline:
                raise RuntimeError(
                    f"jupyter lab did not answer in 120 s:\n{log_path.read_text()[-3000:]}"
                )
            time.sleep(0.3)
        yield base, log_path
    finally:
        if proc.poll() is None:
            proc.terminate()  # SIGTERM: the server shuts its kernels down
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                pass
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)  # anything left in the group it started
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=10)
        log.close()
        SHOTS.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(OSError):
            shutil.copy(log_path, SHOTS.parent / "jupyter.log")
        shutil.rmtree(tmp, ignore_errors=True)


NOTEBOOK_STATE_JS = """() => {
  const cells = Array.from(document.querySelectorAll(
      '.jp-NotebookPanel:not(.lm-mod-hidden) .jp-Notebook .jp-CodeCell'));
  let pending = 0, done = 0;
  for (const c of cells) {
    const src = (c.querySelector('.jp-InputArea-editor') || {}).textContent || '';
    if (!src.trim()) continue;
    const p = (c.querySelector('.jp-InputPrompt') || {}).textContent || '';
    if (/\\[\\s*\\d+\\s*\\]/.test(p)) done++; else pending++;
  }
  const errors = Array.from(document.querySelectorAll(
      '.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"]'))
    .map(e => e.textContent).filter(t => /Traceback|^\\s*\\w+Error\\b/m.test(t));
  const ind = document.querySelector(
      '.jp-NotebookPanel:not(.lm-mod-hidden) .jp-Notebook-ExecutionIndicator');
  const status = ind ? ind.getAttribute('data-status') : null;
  return {cells: cells.length, pending, done, errors, status};
}"""

# Text and images of the outputs in `root` (a cell, or the notebook), sliders and readouts removed.
OUTPUT_SNAPSHOT_JS = """(root) => {
  const parts = [];
  root.querySelectorAll('.jp-OutputArea').forEach(area => {
    const c = area.cloneNode(true);
    c.querySelectorAll('.widget-slider, .widget-readout, .noUi-target, input, .widget-label')
      .forEach(e => e.remove());
    parts.push(c.textContent.trim());
    c.querySelectorAll('img').forEach(i => parts.push((i.getAttribute('src') || '').slice(-200)));
    c.querySelectorAll('svg').forEach(s => parts.push(String(s.innerHTML.length)));
  });
  return parts.join('\\n');
}"""


def _wait_notebook_ran(page, timeout_s: float = 120) -> dict:
    deadline = time.time() + timeout_s
    state = {}
    while time.time() < deadline:
        state = page.evaluate(NOTEBOOK_STATE_JS)
        if state["errors"]:
            pytest.fail(
                "a cell raised an error in JupyterLab:\n" + state["errors"][0][-3000:],
                pytrace=False,
            )
        if state["cells"] and not state["pending"] and state["status"] in ("idle", None):
            return state
        time.sleep(0.5)
    pytest.fail(f"the notebook did not finish running in {timeout_s:.0f} s: {state}", pytrace=False)


def _menu(page, menu: str, item: str, timeout_ms: int = 30_000) -> None:
    """Click `item` in the menu bar's `menu` (matched on their visible labels)."""
    page.locator(".lm-MenuBar-itemLabel", has_text=re.compile(rf"^{re.escape(menu)}$")).click(
        timeout=timeout_ms
    )
    page.locator(".lm-Menu-item[data-type='command']").filter(
        has=page.locator(".lm-Menu-itemLabel", has_text=re.compile(rf"^{re.escape(item)}$"))
    ).first.click(timeout=timeout_ms)


def _prompts(page) -> list[str]:
    return page.locator(
        ".jp-NotebookPanel:not(.lm-mod-hidden) .jp-CodeCell .jp-InputPrompt"
    ).all_text_contents()


def _run_all_cells(page, attempts: int = 3) -> None:
    """Edit > Clear Outputs of All Cells, then Run > Run All Cells, until the cells are queued.

    Clearing first matters: the committed notebook carries execution counts and outputs, which
    would otherwise look like a finished run."""
    for _ in range(attempts):
        # Make the notebook the current widget: the menus act on it.
        page.locator(".jp-NotebookPanel .jp-Notebook .jp-Cell .jp-InputPrompt").first.click(
            timeout=30_000
        )
        with contextlib.suppress(sync_api.TimeoutError):
            _menu(page, "Edit", "Clear Outputs of All Cells", timeout_ms=10_000)
        page.keyboard.press("Escape")
        before = _prompts(page)
        _menu(page, "Run", "Run All Cells")
        deadline = time.time() + 15
        while time.time() < deadline:
            now = _prompts(page)
            status = page.evaluate(NOTEBOOK_STATE_JS)["status"]
            if any("*" in p for p in now) or status not in ("idle", None) or now != before:
                return
            time.sleep(0.2)
        page.keyboard.press("Escape")  # close a menu that is still open
    pytest.fail(
        f"Run > Run All Cells did not start the notebook ({attempts} attempts)", pytrace=False
    )


def _wait_change(page, get, before: str, timeout_s: float = 60) -> str:
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        now = get()
        if now and now != before:
            return now
        time.sleep(0.25)
    return get()


def test_notebook_slider_in_jupyterlab(browser):
    nb_rel = os.environ.get("DSIM_WIDGET_NOTEBOOK", "notebooks/01_tour.ipynb")
    slider_name = os.environ.get("DSIM_WIDGET_SLIDER", "top-k")
    nb_path = ROOT / nb_rel
    if not nb_path.is_file():
        pytest.skip(f"{nb_path} does not exist yet")
    with jupyter_lab(nb_path.parent) as (base, log_path):
        context = browser.new_context(viewport={"width": 1400, "height": 1000})
        page = context.new_page()
        page.set_default_timeout(WAIT_MS)
        try:
            page.goto(f"{base}/lab/tree/{nb_path.name}", wait_until="domcontentloaded")
            page.locator(".jp-NotebookPanel .jp-Notebook .jp-Cell").first.wait_for(state="visible")
            # A kernel chooser appears only if the notebook's kernelspec is
            # unknown: accept the default.
            with contextlib.suppress(sync_api.TimeoutError):
                page.locator(".jp-Dialog .jp-mod-accept").click(timeout=1500)
            page.locator(".jp-Notebook-ExecutionIndicator[data-status='idle']").wait_for(
                state="attached"
            )

            t0 = time.time()
            _run_all_cells(page)
            state = _wait_notebook_ran(page, float(os.environ.get("DSIM_LAB_RUN_TIMEOUT", "120")))
            ran_s = time.time() - t0

            label = page.locator(
                "label.widget-label", has_text=re.compile(rf"^\s*{re.escape(slider_name)}\s*$")
            )
            slider = page.locator(".widget-slider").filter(has=label)
            try:
                slider.first.wait_for(state="visible", timeout=60_000)
            except sync_api.TimeoutError:
                found = page.locator(".widget-slider label.widget-label").all_text_contents()
                _shot(page, "lab_no_slider.png")
                pytest.fail(
                    f"no slider described {slider_name!r} in {nb_rel} after Run All "
                    f"(sliders found: {found}; {state})",
                    pytrace=False,
                )
            slider = slider.first
            slider.scroll_into_view_if_needed()
            cell = page.locator(".jp-Notebook .jp-Cell").filter(has=slider).last
            cell_handle = cell.element_handle()
            notebook_handle = page.locator(
                ".jp-NotebookPanel:not(.lm-mod-hidden) .jp-Notebook"
            ).element_handle()

            def snapshot() -> str:
                own = page.evaluate(OUTPUT_SNAPSHOT_JS, cell_handle)
                return own if own.strip() else page.evaluate(OUTPUT_SNAPSHOT_JS, notebook_handle)

            handle = slider.locator(".noUi-handle")
            if handle.count() == 0:
                handle = slider.locator("input[type=range]")
            handle = handle.first

            def value() -> str:
                if handle.get_attribute("role") == "slider":  # noUiSlider handle
                    return handle.get_attribute("aria-valuenow") or ""
                return handle.input_value()  # <input type=range>

            def readout() -> str:
                return slider.locator(".widget-readout").first.text_content() or ""

            before, v0 = snapshot(), value()
            _shot(cell, "lab_slider_before.png")
            _shot(page, "lab_before.png")
            handle.focus()
            page.keyboard.press("ArrowRight")
            if _wait_change(page, value, v0, timeout_s=5) == v0:  # already at its maximum
                page.keyboard.press("ArrowLeft")
                page.keyboard.press("ArrowLeft")
            v1 = _wait_change(page, value, v0, timeout_s=10)
            assert v1 != v0, (
                f"the {slider_name!r} slider did not move with the keyboard (value {v0})"
            )
            after = _wait_change(page, snapshot, before, timeout_s=90)
            _wait_notebook_ran(page, timeout_s=90)
            time.sleep(0.5)  # let the redraw settle
            after = snapshot()
            _shot(cell, "lab_slider_after.png")
            _shot(page, "lab_after.png")
            assert after != before, (
                f"moving {slider_name!r} from {v0} to {v1} (readout "
                f"{readout()!r}) did not change the output next to it"
            )
            assert after.strip(), "the output next to the slider is empty after moving it"
            print(f"run all: {ran_s:.1f}s; {slider_name}: {v0} -> {v1}")
        except BaseException:
            with contextlib.suppress(Exception):
                _shot(page, "lab_failure.png")
            raise
        finally:
            context.close()
