"""Every notebook is a Jupytext pair: notebooks/NN_topic.py (the source) and NN_topic.ipynb (its
executed run), declared in jupytext.toml, and the committed run was made from the committed source
(`make notebooks` re-executes a notebook whose source changed)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import tomllib

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = REPO / "notebooks"

spec = importlib.util.spec_from_file_location("run_notebooks", REPO / "scripts/run_notebooks.py")
run_notebooks = importlib.util.module_from_spec(spec)
spec.loader.exec_module(run_notebooks)

pytest.importorskip("jupytext", reason="jupytext is not installed (the notebooks extra)")
STEMS = sorted(
    {p.stem for p in NOTEBOOKS.glob("[0-9]*.ipynb")} | {p.stem for p in NOTEBOOKS.glob("[0-9]*.py")}
)


def test_pairing_is_declared_once():
    cfg = tomllib.loads((REPO / "jupytext.toml").read_text())
    assert cfg["formats"] == "ipynb,py:percent"


@pytest.mark.parametrize("stem", STEMS)
def test_notebook_is_the_run_of_its_source(stem):
    problems = run_notebooks.stale_pairs([stem])
    assert not problems, "; ".join(problems)


def test_a_changed_source_is_detected(tmp_path):
    """The check compares cells: an edit of one character in the source makes the pair stale."""
    src = NOTEBOOKS / "01_tour.py"
    edited = tmp_path / "01_tour.py"
    text = src.read_text()
    assert "top-k" in text
    edited.write_text(text.replace("top-k", "top-K", 1))
    assert run_notebooks.in_sync(src, NOTEBOOKS / "01_tour.ipynb")
    assert not run_notebooks.in_sync(edited, NOTEBOOKS / "01_tour.ipynb")


def test_no_generator_scripts_left():
    left = sorted(p.name for p in (REPO / "scripts").glob("nbgen_*.py"))
    assert all(name.startswith("nbgen_09_") for name in left), left


def test_prose_edit_keeps_the_outputs_and_code_edit_needs_a_run(tmp_path):
    """make notebooks takes a prose or tag edit into the notebook without running it (outputs
    kept); an edit of code is left for a run."""
    import nbformat

    src, run = NOTEBOOKS / "03_memory_and_kv_cache.py", NOTEBOOKS / "03_memory_and_kv_cache.ipynb"
    py, ipynb = tmp_path / src.name, tmp_path / run.name
    ipynb.write_bytes(run.read_bytes())
    text = src.read_text()
    py.write_text(text.replace("# ## 1. Bytes per parameter", "# ## 1. Bytes per parameter!", 1))
    assert not run_notebooks.in_sync(py, ipynb)
    assert run_notebooks.update_without_running(py, ipynb)
    assert run_notebooks.in_sync(py, ipynb)
    before = [c.get("outputs") for c in nbformat.read(run, 4).cells if c.cell_type == "code"]
    after = [c.get("outputs") for c in nbformat.read(ipynb, 4).cells if c.cell_type == "code"]
    assert after == before
    assert "GiB, MiB = 2**30, 2**20" in text
    py.write_text(text.replace("GiB, MiB = 2**30, 2**20", "GiB, MiB = 2**30, 2**20.0", 1))
    assert not run_notebooks.update_without_running(py, ipynb)
