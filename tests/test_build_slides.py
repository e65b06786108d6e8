"""scripts/build_slides.py without a browser: the slide-type rules and the offline template."""

import importlib.util
from pathlib import Path

import nbformat
import pytest

REPO = Path(__file__).resolve().parents[1]


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


slides = _load("build_slides")
book = _load("build_book")
md, code = nbformat.v4.new_markdown_cell, nbformat.v4.new_code_cell


def _with_image() -> nbformat.NotebookNode:
    c = code("plot()")
    c.outputs = [nbformat.v4.new_output("display_data", data={"image/png": "iVBORw0KGgo="})]
    return c


@pytest.mark.parametrize(
    "cell, want",
    [
        (md("# Title"), "slide"),
        (md("## 2. Section\n\ntext"), "slide"),
        (md("### detail"), "subslide"),
        (md("> **Takeaway:** MLA caches 576 numbers"), "fragment"),
        (md("plain text with $x^2$"), "-"),
        (md("#hashtag, not a heading"), "-"),
        (code("x = 1"), "-"),
        (_with_image(), "subslide"),
        (nbformat.from_dict({**md("## h"), "metadata": {"tags": ["notes"]}}), "notes"),
        (
            nbformat.from_dict({**md("## h"), "metadata": {"slideshow": {"slide_type": "skip"}}}),
            "skip",
        ),
    ],
)
def test_slide_type_rules(cell, want):
    assert slides.slide_type(cell) == want


def test_prepare_removes_cells_adds_a_title_and_drops_widgets():
    nb = nbformat.v4.new_notebook()
    hidden = md("# The chapter")
    hidden.metadata["tags"] = ["remove-cell"]
    nb.cells = [hidden, md("## One\n\n$a = b$"), _with_image(), md("plain")]
    nb.metadata["widgets"] = {"application/vnd.jupyter.widget-state+json": {"state": {}}}
    info = slides.prepare_for_slides(nb, book)
    assert nb.cells[0].source == "# The chapter"  # the title slide, from the removed heading
    assert [c.metadata["slideshow"]["slide_type"] for c in nb.cells] == [
        "slide",
        "slide",
        "subslide",
        "-",
    ]
    assert "widgets" not in nb.metadata
    assert info == {"cells": 4, "slides": 3, "images": 1, "math": 1}


def test_deck_has_no_remote_url(tmp_path):
    nb = nbformat.v4.new_notebook()
    nb.cells = [md("# T"), md("## S\n\n$$x$$"), _with_image()]
    slides.prepare_for_slides(nb, book)
    out = tmp_path / "t.slides.html"
    slides.export_deck(nb, out)
    text = out.read_text()
    assert not slides.REMOTE_RE.search(text)
    assert 'src="vendor/reveal.js/dist/reveal.js"' in text
    assert 'src="vendor/mathjax/tex-svg.js"' in text
    assert "vendor/reveal.js/dist/theme/white.css" in text
    assert "data:image/png;base64" in text  # figures embedded


def test_remote_url_is_caught():
    assert slides.REMOTE_RE.search('<script src="https://unpkg.com/x.js">')
    assert slides.REMOTE_RE.search("@import url(//fonts.googleapis.com/css)")
    assert not slides.REMOTE_RE.search('<a href="vendor/x.html">')
