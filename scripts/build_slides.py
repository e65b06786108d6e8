#!/usr/bin/env python
"""Build each chapter's notebook as an offline reveal.js slide deck:
build/slides/NN_topic.slides.html and build/slides/index.html.

Steps
  1. Vendor reveal.js (``npm pack reveal.js@5``: dist/ and plugin/) into
     build/slides/vendor/reveal.js, and MathJax 3 into build/slides/vendor/mathjax (copied from
     chapters/vendor/mathjax when the book has vendored it, else ``npm pack mathjax@3`` as
     scripts/build_book.py does). The first build fetches the two tarballs from the npm
     registry; later builds reuse build/slides/vendor.
  2. For every notebooks/NN_topic.ipynb (its committed outputs; --from-build takes the executed
     copy that `make book` leaves in build/executed/): set each cell's slide type by the rules
     below and export it with nbconvert's SlidesExporter and a template (SLIDES_TEMPLATE) that loads
     reveal.js and MathJax from vendor/ and nothing from a CDN: no require.js, jQuery, mermaid or
     widget manager. Output images are embedded in the page (data URIs).
  3. Write index.html, a list of the decks, and check that no page refers to a remote URL.

Slide types (a cell's own ``metadata.slideshow.slide_type`` wins over these rules)
  tag ``remove-cell``                         left out (as in the book)
  tags ``slide``, ``subslide``, ``fragment``, ``notes``, ``skip``    that type
  markdown starting with ``#`` or ``##``      a new slide
  markdown starting with ``###``              a new sub-slide (below the current slide)
  markdown starting with ``> **Takeaway``     a fragment (appears on the next key press)
  code cell with an image output              a new sub-slide (the figure gets the screen)
  anything else                               continues the current slide
  The deck opens with a title slide (the notebook's first ``# `` heading) when its first cell
  is not one. Tags ``remove-input``/``hide-input`` show only the output, ``remove-output`` only
  the code. Interactive widgets are shown as the book shows them: their controls' values and the
  outputs captured for those values (build_book.static_widget_outputs).

Usage
  .venv/bin/python scripts/build_slides.py                  # every notebook
  .venv/bin/python scripts/build_slides.py --notebook 01_tour
  .venv/bin/python scripts/build_slides.py --from-build     # use build/executed/*.ipynb
Environment
  DSIM_REVEAL_TARBALL=/path/reveal.js-5.x.tgz   use this tarball instead of npm
  DSIM_MATHJAX_TARBALL=/path/mathjax-3.x.tgz    (see scripts/build_book.py)
Any failure prints ``SLIDES BUILD FAILED: ...`` and exits with status 1.
"""

from __future__ import annotations

import argparse
import html
import importlib.util
import json
import re
import shutil
import sys
import tarfile
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
REVEAL_SPEC = "reveal.js@5"
OUT = REPO / "build" / "slides"
VENDOR = "vendor"  # relative to OUT, and the decks' URL prefix
THEME = "white"  # a reveal.js theme whose fonts ship with it (simple, sky, ... import Google's)
REMOTE_RE = re.compile(
    r"""(?:src|href)\s*=\s*["']?(?:https?:)?//|url\(\s*["']?(?:https?:)?//""", re.I
)


class SlidesError(Exception):
    """A failure that stops the build with a clear message."""


def log(msg: str) -> None:
    print(f"[build_slides] {msg}", flush=True)


def _build_book():
    """scripts/build_book.py as a module (its MathJax vendoring and widget stand-ins)."""
    spec = importlib.util.spec_from_file_location("build_book", REPO / "scripts" / "build_book.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


# --------------------------------------------------------------------------------------------
# 1. reveal.js and MathJax
# --------------------------------------------------------------------------------------------


def vendor_reveal(out: Path) -> str:
    """reveal.js's dist/ and plugin/ (no source maps) into out/vendor/reveal.js; its version."""
    dest = out / VENDOR / "reveal.js"
    stamp = dest / "VERSION"
    if (dest / "dist" / "reveal.js").is_file() and stamp.is_file():
        version = stamp.read_text().strip()
        log(f"reveal.js: using vendored {version}")
        return version
    with tempfile.TemporaryDirectory(prefix="dsim-reveal-") as tmp:
        tgz = _build_book().npm_tarball(
            REVEAL_SPEC, "DSIM_REVEAL_TARBALL", "reveal.js", tmp, SlidesError
        )
        stage = Path(tmp) / "stage"
        version = "?"
        wanted = re.compile(r"^package/((?:dist|plugin)/.+|LICENSE|package\.json)$")
        with tarfile.open(tgz, "r:gz") as tf:
            for member in tf.getmembers():
                m = wanted.match(member.name)
                if not (m and member.isfile()) or member.name.endswith(".map"):
                    continue
                rel = m.group(1)
                data = tf.extractfile(member).read()
                if rel == "package.json":
                    version = json.loads(data)["version"]
                    continue
                target = (stage / rel).resolve()
                if not target.is_relative_to(stage.resolve()):
                    raise SlidesError(f"{tgz.name}: {member.name} would land outside the stage")
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(data)
        if not (stage / "dist" / "reveal.js").is_file():
            raise SlidesError(f"{tgz.name} has no dist/reveal.js (is it reveal.js 4 or 5?)")
        (stage / "VERSION").write_text(f"reveal.js {version}\n")
        if dest.exists():
            shutil.rmtree(dest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(stage), str(dest))
    log(f"reveal.js: vendored {version} into {dest.relative_to(REPO)}")
    return f"reveal.js {version}"


def vendor_mathjax(out: Path, book) -> None:
    """MathJax 3 into out/vendor/mathjax: the book's vendored copy if there is one."""
    dest = out / VENDOR / "mathjax"
    book_copy = REPO / "chapters" / "vendor" / "mathjax"
    if (dest / "tex-svg.js").is_file():
        log("MathJax: using vendored copy")
        return
    if (book_copy / "tex-svg.js").is_file():
        shutil.copytree(book_copy, dest)
        log(f"MathJax: copied from {book_copy.relative_to(REPO)}")
        return
    try:
        book.vendor_mathjax(out)  # writes out/vendor/mathjax
    except book.BuildError as exc:
        raise SlidesError(str(exc)) from None


# --------------------------------------------------------------------------------------------
# 2. Notebooks -> decks
# --------------------------------------------------------------------------------------------

SLIDE_TAGS = ("slide", "subslide", "fragment", "notes", "skip")


def slide_type(cell) -> str:
    """The reveal slide type of a cell by the rules of the module docstring."""
    own = cell.get("metadata", {}).get("slideshow", {}).get("slide_type")
    if own:
        return own
    tags = set(cell.get("metadata", {}).get("tags", []))
    for t in SLIDE_TAGS:
        if t in tags:
            return t
    src = cell.source.lstrip()
    if cell.cell_type == "markdown":
        if re.match(r"#{1,2}\s", src):
            return "slide"
        if re.match(r"###\s", src):
            return "subslide"
        if re.match(r">\s*\*\*Takeaway", src, re.I):
            return "fragment"
    if cell.cell_type == "code" and any(
        {"image/png", "image/svg+xml", "image/jpeg"} & set(o.get("data", {}))
        for o in cell.get("outputs", [])
    ):
        return "subslide"
    return "-"


def prepare_for_slides(nb, book) -> dict[str, int]:
    """Mutate a notebook into its deck: slide types, removed cells, static widgets, a title slide.
    Returns counts (cells, slides, images, math) for the log and the checks."""
    import nbformat

    wstate = book._widget_state(nb)
    title = next(
        (
            m.group(1).strip()
            for c in nb.cells
            if c.cell_type == "markdown"
            for m in [re.match(r"\s*#\s+(.+)", c.source)]
            if m
        ),
        None,
    )
    cells = []
    for cell in nb.cells:
        tags = set(cell.get("metadata", {}).get("tags", []))
        if "remove-cell" in tags or not cell.source.strip():
            continue
        if tags & {"remove-input", "hide-input"}:
            cell.metadata.setdefault("transient", {})["remove_source"] = True
        if cell.cell_type == "code":
            if "remove-output" in tags:
                cell.outputs = []
            outs = []
            for out in cell.outputs:
                view = out.get("data", {}).get("application/vnd.jupyter.widget-view+json")
                if view is not None:
                    outs.extend(book.static_widget_outputs(view.get("model_id", ""), wstate))
                else:
                    outs.append(out)
            cell.outputs = outs
        cell.metadata.setdefault("slideshow", {})["slide_type"] = slide_type(cell)
        cells.append(cell)
    if not cells:
        raise SlidesError("the notebook has no cells left for slides")
    first = cells[0]
    if not (first.cell_type == "markdown" and re.match(r"\s*#\s", first.source)):
        head = nbformat.v4.new_markdown_cell(f"# {title or nb.metadata.get('title', 'dsim')}")
        head.metadata["slideshow"] = {"slide_type": "slide"}
        cells.insert(0, head)
    cells[0].metadata["slideshow"]["slide_type"] = "slide"
    nb.cells = cells
    nb.metadata.pop("widgets", None)  # no widget manager (it would load from a CDN)
    nb.metadata["title"] = re.sub(r"[`*_]", "", cells[0].source.lstrip("# ").splitlines()[0])
    images = sum(
        1
        for c in cells
        if c.cell_type == "code"
        for o in c.outputs
        if {"image/png", "image/svg+xml", "image/jpeg"} & set(o.get("data", {}))
    )
    return {
        "cells": len(cells),
        "slides": sum(
            c.metadata["slideshow"]["slide_type"] in ("slide", "subslide") for c in cells
        ),
        "images": images,
        "math": sum(
            1
            for c in cells
            if c.cell_type == "markdown"
            for m in book._MD_MATH_RE.finditer(c.source)
            if m.group("display") is not None or m.group("inline") is not None
        ),
    }


SLIDES_TEMPLATE = r"""{%- extends 'reveal/index.html.j2' -%}
{%- block html_head_js -%}{%- endblock html_head_js -%}
{% block jupyter_widgets %}{% endblock jupyter_widgets %}
{%- block html_head_js_mathjax -%}
<script>
window.MathJax = {
  tex: {inlineMath: [['$', '$'], ['\\(', '\\)']], displayMath: [['$$', '$$'], ['\\[', '\\]']],
        processEscapes: true, processEnvironments: true},
  svg: {fontCache: 'global'},
  loader: {paths: {mathjax: '__VENDOR__/mathjax'}},
  startup: {typeset: true}
};
</script>
<script src="__VENDOR__/mathjax/tex-svg.js"></script>
<style>
:root { --jp-code-font-size: 15px; --jp-content-font-size1: 19px; }
.reveal .slides section { text-align: left; }
.reveal .slides > section, .reveal .slides > section > section {
  height: 100%; overflow-y: auto; overflow-x: hidden; }
.reveal .jp-InputArea-editor, .reveal .jp-OutputArea-output pre { overflow-x: auto; }
.reveal .jp-OutputArea-output img { max-height: 560px; width: auto; }
.reveal mjx-container[display="true"] { overflow-x: auto; overflow-y: hidden; }
</style>
{%- endblock html_head_js_mathjax -%}
{% block footer_js %}
<script src="__VENDOR__/reveal.js/dist/reveal.js"></script>
<script src="__VENDOR__/reveal.js/plugin/notes/notes.js"></script>
<script>
Reveal.initialize({
  controls: true, progress: true, history: false, hash: true, center: false,
  transition: "{{ reveal_transition }}", slideNumber: "c/t",
  plugins: [RevealNotes], width: {{ reveal_width }}, height: {{ reveal_height }}
});
</script>
{% endblock footer_js %}
"""


def export_deck(nb, out_html: Path) -> None:
    """nbconvert's SlidesExporter with the offline template; reveal.js and MathJax from vendor/."""
    from jinja2 import DictLoader
    from nbconvert import SlidesExporter

    template = SLIDES_TEMPLATE.replace("__VENDOR__", VENDOR)
    exporter = SlidesExporter(
        extra_loaders=[DictLoader({"dsim_slides.html.j2": template})],
        template_file="dsim_slides.html.j2",
        reveal_url_prefix=f"{VENDOR}/reveal.js",
        reveal_theme=THEME,
        reveal_scroll=True,
        reveal_width="1280",
        reveal_height="800",
        embed_images=True,
    )
    body, _ = exporter.from_notebook_node(nb)
    remote = REMOTE_RE.findall(body)
    if remote:
        raise SlidesError(f"{out_html.name} refers to remote URLs: {sorted(set(remote))[:5]}")
    out_html.write_text(body)


def write_index(out: Path, decks: list[tuple[str, str, dict]]) -> None:
    items = "\n".join(
        f'<li><a href="{html.escape(name)}">{html.escape(title)}</a> '
        f'<span class="n">({info["slides"]} slides, {info["images"]} figures)</span></li>'
        for name, title, info in decks
    )
    out.joinpath("index.html").write_text(
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        "<title>dsim lecture slides</title><style>body{font-family:sans-serif;max-width:48em;"
        "margin:2em auto;line-height:1.5}.n{color:#666}</style></head><body>"
        "<h1>dsim lecture slides</h1><p>One reveal.js deck per chapter, built from its notebook "
        "by <code>make slides</code>; arrow keys move, <kbd>s</kbd> opens the speaker view.</p>"
        f"<ol>\n{items}\n</ol></body></html>\n"
    )


def build(only: list[str], from_build: bool) -> list[tuple[str, str, dict]]:
    import nbformat

    book = _build_book()
    OUT.mkdir(parents=True, exist_ok=True)
    vendor_reveal(OUT)
    vendor_mathjax(OUT, book)
    theme = OUT / VENDOR / "reveal.js" / "dist" / "theme" / f"{THEME}.css"
    if not theme.is_file() or REMOTE_RE.search(theme.read_text()):
        raise SlidesError(f"{theme.relative_to(REPO)} is missing or loads something remote")
    src = REPO / ("build/executed" if from_build else "notebooks")
    notebooks = sorted(src.glob("[0-9][0-9]_*.ipynb"))
    if only:
        wanted = {Path(o).stem for o in only}
        missing = wanted - {p.stem for p in notebooks}
        if missing:
            raise SlidesError(f"no such notebook(s) in {src}: {', '.join(sorted(missing))}")
        notebooks = [p for p in notebooks if p.stem in wanted]
    if not notebooks:
        raise SlidesError(f"no notebooks in {src}" + (" (run `make book` first)" * from_build))
    decks = []
    for path in notebooks:
        nb = nbformat.read(path, as_version=4)
        if not any(c.cell_type == "code" and c.get("outputs") for c in nb.cells):
            raise SlidesError(f"{path.name} has no outputs: slides show a notebook's outputs")
        info = prepare_for_slides(nb, book)
        name = f"{path.stem}.slides.html"
        export_deck(nb, OUT / name)
        decks.append((name, nb.metadata["title"], info))
        log(f"  {name}: {info['slides']} slides, {info['images']} figures")
    if not only:  # drop decks of notebooks that no longer exist
        keep = {n for n, _, _ in decks}
        for old in OUT.glob("*.slides.html"):
            if old.name not in keep:
                old.unlink()
    all_decks = decks
    if only:  # the index lists every deck on disk
        known = {n: (t, i) for n, t, i in decks}
        all_decks = [
            (
                p.name,
                *known.get(p.name, (p.stem.removesuffix(".slides"), {"slides": 0, "images": 0})),
            )
            for p in sorted(OUT.glob("*.slides.html"))
        ]
    write_index(OUT, all_decks)
    return decks


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--notebook", action="append", default=[], help="only this notebook (stem)")
    ap.add_argument(
        "--from-build", action="store_true", help="use build/executed/ (left by `make book`)"
    )
    args = ap.parse_args(argv)
    try:
        decks = build(args.notebook, args.from_build)
    except SlidesError as exc:
        print(f"SLIDES BUILD FAILED: {exc}", file=sys.stderr)
        return 1
    log(f"{len(decks)} deck(s) in {OUT.relative_to(REPO)}; open {OUT.relative_to(REPO)}/index.html")
    return 0


if __name__ == "__main__":
    sys.exit(main())
