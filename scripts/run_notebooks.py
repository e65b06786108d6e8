#!/usr/bin/env python
"""Sync and execute the notebooks: notebooks/NN_topic.py (Jupytext percent format, the source)
-> notebooks/NN_topic.ipynb (executed in place, committed, checked by nbval, shown by the book).

The pairing is declared once in jupytext.toml (``formats = "ipynb,py:percent"``). The .py file is
the one you edit; this script rebuilds the .ipynb from it and executes it, but only where the
notebook's cells (type, source, tags) differ from its source, so that an unchanged notebook keeps
its committed outputs and is not re-run; where only prose or tags changed (the code cells are the
same), the notebook takes the new cells and keeps its outputs without running.
Execution is made as reproducible as the machine allows:
one notebook at a time, OMP_NUM_THREADS=1 (a notebook may pin more itself), PYTHONHASHSEED=0,
SOURCE_DATE_EPOCH=0 (no dates in SVG figures), cell ids numbered in order, no timing metadata; a
temp copy of notebooks/ is the working directory (files a notebook writes do not land in the
repository), and the widget state is stored (the book shows the widgets' captured outputs).

Usage
  .venv/bin/python scripts/run_notebooks.py                 # sync and execute what changed
  .venv/bin/python scripts/run_notebooks.py 03_memory_and_kv_cache --force   # re-run one
  .venv/bin/python scripts/run_notebooks.py --check         # exit 1 if a pair is out of sync
A notebook without a .py source is reported (and is an error under --check).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = REPO / "notebooks"


def _cells(nb) -> list[tuple[str, str, tuple[str, ...]]]:
    """What the source decides about a notebook: each cell's type, source and tags."""
    return [
        (c.cell_type, c.source.strip(), tuple(c.get("metadata", {}).get("tags", [])))
        for c in nb.cells
    ]


def read_source(py: Path):
    """The notebook (no outputs) that a percent-format source describes."""
    import jupytext

    nb = jupytext.read(py, fmt="py:percent")
    nb.metadata.pop("jupytext", None)
    nb.metadata.setdefault(
        "kernelspec", {"name": "python3", "display_name": "Python 3", "language": "python"}
    )
    return nb


def in_sync(py: Path, ipynb: Path) -> bool:
    """True when the executed notebook was made from this source (cells equal)."""
    import nbformat

    if not ipynb.is_file():
        return False
    return _cells(read_source(py)) == _cells(nbformat.read(ipynb, as_version=4))


def _code(nb) -> list[str]:
    return [c.source.strip() for c in nb.cells if c.cell_type == "code"]


def update_without_running(py: Path, ipynb: Path) -> bool:
    """When only prose or tags changed (the code cells are the same, in the same order), copy the
    source's cells into the notebook keeping each code cell's outputs; returns whether it did."""
    import nbformat

    src = read_source(py)
    nb = nbformat.read(ipynb, as_version=4)
    if _code(src) != _code(nb):
        return False
    runs = iter([c for c in nb.cells if c.cell_type == "code"])
    cells = []
    for i, cell in enumerate(src.cells):
        if cell.cell_type == "code":
            run = next(runs)
            run.metadata["tags"] = list(cell.metadata.get("tags", []))
            if not run.metadata["tags"]:
                del run.metadata["tags"]
            cell = run
        cell["id"] = f"cell-{i:03d}"
        cells.append(cell)
    nb.cells = cells
    nbformat.write(nb, ipynb)
    return True


def stale_pairs(names: list[str] | None = None) -> list[str]:
    """Messages for every notebook whose .py and .ipynb disagree or that lacks one of them."""
    problems = []
    stems = sorted({p.stem for p in NOTEBOOKS.glob("*.ipynb")} | {p.stem for p in _sources()})
    for stem in stems:
        if names and stem not in names:
            continue
        py, ipynb = NOTEBOOKS / f"{stem}.py", NOTEBOOKS / f"{stem}.ipynb"
        if not py.is_file():
            problems.append(f"{ipynb.name} has no Jupytext source {py.name}")
        elif not ipynb.is_file():
            problems.append(f"{py.name} has not been executed into {ipynb.name}")
        elif not in_sync(py, ipynb):
            problems.append(f"{ipynb.name} is older than {py.name} (run `make notebooks`)")
    return problems


def _sources() -> list[Path]:
    return sorted(p for p in NOTEBOOKS.glob("[0-9]*.py"))


def _book_client_class():
    """build_book.py's NotebookClient (it fixes a lost wake-up after ipywidgets cells)."""
    spec = importlib.util.spec_from_file_location("build_book", REPO / "scripts" / "build_book.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod._book_client_class()


def execute(py: Path, work_dir: Path, timeout: int) -> float:
    """Execute the notebook of `py` and write it next to it as .ipynb; returns seconds taken."""
    import nbformat

    nb = read_source(py)
    for i, cell in enumerate(nb.cells):
        cell["id"] = f"cell-{i:03d}"  # stable ids: a re-run changes only what the run changed
    client = _book_client_class()(
        nb,
        timeout=timeout,
        kernel_name=nb.metadata["kernelspec"].get("name", "python3"),
        allow_errors=False,
        store_widget_state=True,
        record_timing=False,
        resources={"metadata": {"path": str(work_dir)}},
    )
    t0 = time.time()
    client.execute()
    for cell in nb.cells:
        cell.get("metadata", {}).pop("execution", None)
    nbformat.write(nb, py.with_suffix(".ipynb"))
    return time.time() - t0


def _environment() -> None:
    os.environ["PYTHONPATH"] = os.pathsep.join(
        [str(REPO)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    )
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = "1"
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    os.environ["PYTHONHASHSEED"] = "0"
    os.environ["SOURCE_DATE_EPOCH"] = "0"
    os.environ.pop("MPLBACKEND", None)  # the inline backend, so that figures become outputs
    os.environ.pop("DSIM_BOOK_BUILD", None)
    os.environ.setdefault("PYDEVD_DISABLE_FILE_VALIDATION", "1")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("names", nargs="*", help="notebook stems (default: every notebooks/*.py)")
    ap.add_argument("--force", action="store_true", help="execute even if in sync")
    ap.add_argument("--check", action="store_true", help="only report pairs out of sync")
    ap.add_argument("--timeout", type=int, default=240, help="seconds one cell may run")
    args = ap.parse_args(argv)
    names = [Path(n).stem for n in args.names]
    if args.check:
        problems = stale_pairs(names or None)
        for p in problems:
            print(f"[notebooks] {p}")
        return 1 if problems else 0
    sources = [p for p in _sources() if not names or p.stem in names]
    missing = set(names) - {p.stem for p in sources}
    if missing:
        print(
            f"[notebooks] no source notebooks/{{{','.join(sorted(missing))}}}.py", file=sys.stderr
        )
        return 2
    for stem in sorted({p.stem for p in NOTEBOOKS.glob("*.ipynb")} - {p.stem for p in _sources()}):
        print(f"[notebooks] WARNING: {stem}.ipynb has no Jupytext source {stem}.py")
    _environment()
    from nbclient.exceptions import CellExecutionError

    with tempfile.TemporaryDirectory(prefix="dsim-notebooks-") as tmp:
        work = Path(tmp) / "notebooks"
        shutil.copytree(NOTEBOOKS, work, ignore=shutil.ignore_patterns(".ipynb_checkpoints"))
        for py in sources:
            if not args.force and in_sync(py, py.with_suffix(".ipynb")):
                print(f"[notebooks] {py.stem}: up to date")
                continue
            ipynb = py.with_suffix(".ipynb")
            newer = ipynb.is_file() and ipynb.stat().st_mtime > py.stat().st_mtime + 2
            if newer and not in_sync(py, ipynb):
                # Edited in JupyterLab without the Jupytext extension: running would overwrite it.
                print(
                    f"[notebooks] {ipynb.name} is newer than {py.name} and differs from it: "
                    "bring the edits into the source first "
                    f"(jupytext --sync {ipynb.relative_to(REPO)}) or touch the source to "
                    "discard them",
                    file=sys.stderr,
                )
                return 1
            if not args.force and ipynb.is_file():
                if update_without_running(py, py.with_suffix(".ipynb")):
                    print(f"[notebooks] {py.stem}: only prose or tags changed: updated, not run")
                    continue
            print(f"[notebooks] {py.stem}: executing ...", flush=True)
            try:
                took = execute(py, work, args.timeout)
            except CellExecutionError as exc:
                print(f"[notebooks] {py.stem} FAILED:\n{exc}", file=sys.stderr)
                return 1
            print(f"[notebooks] {py.stem}: executed in {took:.1f}s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
