"""Browser tests of the lecture slides (scripts/build_slides.py), in headless Chromium.

Builds build/slides once (reveal.js and MathJax are vendored from npm on the first build), then
opens every deck from the file system with every request that is not a local file blocked and
recorded: the deck must load offline (no request leaves the machine), typeset its math with the
vendored MathJax (SVG, no error), load every figure, and move to the next slide on ArrowRight.

Debian's chromium (/usr/bin/chromium) is required; without it the module is skipped. Nothing is
downloaded by the test itself. DSIM_SLIDES_SKIP_BUILD=1 reuses an existing build/slides.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SLIDES = REPO / "build" / "slides"
CHROMIUM = Path(os.environ.get("DSIM_CHROMIUM", "/usr/bin/chromium"))
WAIT_MS = 60_000
LOCAL = ("file:", "data:", "blob:", "about:")

pytestmark = [
    pytest.mark.browser,
    pytest.mark.timeout(600),
    pytest.mark.skipif(
        not CHROMIUM.exists(),
        reason=f"Debian's chromium is not installed ({CHROMIUM}); `apt-get install chromium`",
    ),
]
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright (python) is not installed")

NOTEBOOKS = sorted(p.stem for p in (REPO / "notebooks").glob("[0-9][0-9]_*.ipynb"))


def _script():
    spec = importlib.util.spec_from_file_location(
        "build_slides", REPO / "scripts" / "build_slides.py"
    )
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def slides() -> Path:
    if os.environ.get("DSIM_SLIDES_SKIP_BUILD") == "1" and (SLIDES / "index.html").is_file():
        return SLIDES
    vendored = (SLIDES / "vendor" / "reveal.js" / "VERSION").is_file()
    if not (shutil.which("npm") or os.environ.get("DSIM_REVEAL_TARBALL") or vendored):
        pytest.skip("npm is not installed, so the slides build cannot vendor reveal.js")
    proc = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "build_slides.py")],
        capture_output=True,
        text=True,
        timeout=400,
    )
    if proc.returncode != 0:
        pytest.fail(
            f"scripts/build_slides.py failed (exit {proc.returncode}):\n"
            f"{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}",
            pytrace=False,
        )
    return SLIDES


def _expected(stem: str) -> dict[str, int]:
    """What the deck must show, from the notebook by the build's own rules."""
    import nbformat

    nb = nbformat.read(REPO / "notebooks" / f"{stem}.ipynb", as_version=4)
    spec = importlib.util.spec_from_file_location("build_book", REPO / "scripts" / "build_book.py")
    book = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(book)
    info = _script().prepare_for_slides(nb, book)
    info["img"] = sum(
        1
        for c in nb.cells
        if c.cell_type == "code"
        for o in c.outputs
        if {"image/png", "image/jpeg"} & set(o.get("data", {}))
    )
    return info


def test_index_lists_every_deck(slides):
    text = (slides / "index.html").read_text()
    links = re.findall(r'href="([^"]+)"', text)
    assert sorted(links) == sorted(f"{s}.slides.html" for s in NOTEBOOKS)
    assert all((slides / link).is_file() for link in links)


@pytest.mark.parametrize("stem", NOTEBOOKS)
def test_deck_offline_math_figures_advance(slides, browser, stem):
    want = _expected(stem)
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    attempted: list[str] = []
    errors: list[str] = []

    def guard(route):
        url = route.request.url
        if url.startswith(LOCAL):
            route.continue_()
        else:
            attempted.append(url)
            route.abort()

    context.route("**/*", guard)
    page = context.new_page()
    page.set_default_timeout(WAIT_MS)
    page.on("request", lambda r: None if r.url.startswith(LOCAL) else attempted.append(r.url))
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("requestfailed", lambda r: errors.append(f"failed: {r.url} ({r.failure})"))
    try:
        page.goto((slides / f"{stem}.slides.html").as_uri(), wait_until="load")
        page.wait_for_function("() => window.Reveal && Reveal.isReady()")
        page.evaluate("() => MathJax.startup.promise")  # typesetting done

        # offline: nothing but local files was asked for, and nothing failed
        assert not attempted, f"{stem}: requests left the machine: {sorted(set(attempted))[:5]}"
        assert not errors, f"{stem}: {errors[:5]}"

        # math: typeset as SVG by the vendored MathJax, no TeX error
        n_math = page.locator("mjx-container svg").count()
        if want["math"]:
            assert n_math > 0, f"{stem}: the notebook has math but none was typeset"
        assert page.locator("mjx-merror, [data-mjx-error]").count() == 0, f"{stem}: a TeX error"

        # figures: every <img> decoded, as many as the notebook's image outputs
        imgs = page.evaluate(
            "() => Array.from(document.images).map(i => [i.complete, i.naturalWidth])"
        )
        assert len(imgs) >= want["img"], f"{stem}: {len(imgs)} images for {want['img']} figures"
        assert all(ok and w > 0 for ok, w in imgs), f"{stem}: an image did not load: {imgs}"
        if want["img"]:  # the first figure is on screen when its slide is shown
            page.evaluate(
                """() => { const img = document.querySelector('.slides img');
                   const idx = Reveal.getIndices(img.closest('section'));
                   Reveal.slide(idx.h, idx.v); }"""
            )
            page.wait_for_timeout(900)  # the slide transition
            box = page.locator(".slides section.present img").first.bounding_box()
            assert box and box["width"] > 50 and box["height"] > 50, f"{stem}: figure not shown"
            page.evaluate("() => Reveal.slide(0, 0)")

        # slides advance with the keyboard
        total = page.evaluate("() => Reveal.getTotalSlides()")
        assert total == want["slides"] and total > 1, (stem, total, want)
        before = page.evaluate("() => Reveal.getIndices()")
        page.locator("body").focus()
        page.keyboard.press("ArrowRight")
        page.wait_for_function(
            "(b) => { const i = Reveal.getIndices(); return i.h !== b.h || i.v !== b.v; }",
            arg=before,
        )
        after = page.evaluate("() => Reveal.getIndices()")
        assert (after["h"], after["v"]) != (before["h"], before["v"])
        assert not attempted, f"{stem}: requests left the machine: {sorted(set(attempted))[:5]}"
    finally:
        context.close()


def test_deck_at_800px(slides, browser):
    """On a narrow screen reveal.js scales the deck: the page does not scroll sideways, the first
    figure fits the screen, and the keyboard still advances."""
    stem = next(s for s in NOTEBOOKS if _expected(s)["img"] and _expected(s)["math"])
    context = browser.new_context(viewport={"width": 800, "height": 600})
    page = context.new_page()
    page.set_default_timeout(WAIT_MS)
    try:
        page.goto((slides / f"{stem}.slides.html").as_uri(), wait_until="load")
        page.wait_for_function("() => window.Reveal && Reveal.isReady()")
        page.evaluate("() => MathJax.startup.promise")
        assert page.evaluate("() => document.documentElement.scrollWidth") <= 800
        page.evaluate(
            """() => { const img = document.querySelector('.slides img');
               const idx = Reveal.getIndices(img.closest('section'));
               Reveal.slide(idx.h, idx.v); }"""
        )
        page.wait_for_timeout(900)
        box = page.locator(".slides section.present img").first.bounding_box()
        assert box and box["width"] > 50 and box["x"] >= 0 and box["x"] + box["width"] <= 800
        before = page.evaluate("() => Reveal.getIndices()")
        page.keyboard.press("ArrowRight")
        page.wait_for_function(
            "(b) => { const i = Reveal.getIndices(); return i.h !== b.h || i.v !== b.v; }",
            arg=before,
        )
    finally:
        context.close()
