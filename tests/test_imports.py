"""The shape of the package: no import cycle, every module importable on its own, no module too
long.

The import graph is read from the source with `ast` (no import runs): an edge A -> B for every
`import B` / `from B import x` in A that names a dsim module. `from P import x` points at P.x when
that is a submodule not bound by P's __init__ (e.g. `from dsim.cost import comm`), else at P. The
implicit import of a parent package before its submodules is not an edge (a package's __init__
importing its own submodules is how a package re-exports).
"""

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DSIM = ROOT / "dsim"
MAX_LINES = 600
# Imports deliberately made inside a function to break a cycle: (importer, imported).
LAZY_BY_DESIGN = {
    # ModelArgs.from_hf_config is the public entry point; dsim.hf.config needs ModelArgs.
    ("dsim.config", "dsim.hf.config"),
}


# Modules that other engineers are splitting at the time of writing (the lead makes the size
# test strict once they are merged).
def _modules() -> dict[str, tuple[Path, bool]]:
    """Every module of dsim: dotted name -> (file, is a package's __init__)."""
    out = {}
    for path in sorted(DSIM.rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        is_pkg = parts[-1] == "__init__"
        out[".".join(parts[:-1] if is_pkg else parts)] = (path, is_pkg)
    return out


MODULES = _modules()


def _bound_in_init(package: str) -> set[str]:
    """Names a package's __init__ binds itself (imports, definitions, assignments)."""
    path, is_pkg = MODULES[package]
    names: set[str] = set()
    if not is_pkg:
        return names
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names |= {(a.asname or a.name).split(".")[0] for a in node.names}
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names |= {t.id for t in node.targets if isinstance(t, ast.Name)}
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
    return names


def _imports(name: str) -> list[tuple[str, bool]]:
    """(imported dsim module, at module level?) for every import statement of module `name`.
    Module level includes class bodies and if/try blocks, which run at import time; an
    `if TYPE_CHECKING:` block never runs and is skipped."""
    path, is_pkg = MODULES[name]
    package = name if is_pkg else name.rpartition(".")[0]
    out: list[tuple[str, bool]] = []

    def target(base: str, attr: str) -> str:
        sub = f"{base}.{attr}"
        if sub in MODULES and attr not in _bound_in_init(base):
            return sub
        return base

    def visit(node: ast.AST, top: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                visit(child, False)
            elif isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                continue
            elif isinstance(child, ast.Import):
                out.extend((a.name, top) for a in child.names if a.name.split(".")[0] == "dsim")
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    parts = package.split(".")[: len(package.split(".")) - child.level + 1]
                    base = ".".join(parts + ([base] if base else []))
                if base.split(".")[0] == "dsim":
                    out.extend((target(base, a.name), top) for a in child.names)
            else:
                visit(child, top)

    visit(ast.parse(path.read_text()), True)
    return out


def _graph(module_level_only: bool) -> dict[str, set[str]]:
    graph = {}
    for name in MODULES:
        graph[name] = {
            m for m, top in _imports(name) if (top or not module_level_only) and m != name
        }
        unknown = graph[name] - set(MODULES)
        assert not unknown, f"{name} imports dsim modules that do not exist: {sorted(unknown)}"
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle through each strongly connected component of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def strongconnect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                strongconnect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                components.append(comp)

    for v in sorted(graph):
        if v not in index:
            strongconnect(v)
    cycles = []
    for comp in components:  # walk inside the component from its first module back to it
        members, start = set(comp), min(comp)
        path, seen = [start], {start}
        while True:
            nxt = sorted(w for w in graph[path[-1]] if w in members)
            back = start in nxt
            if back:
                cycles.append(path + [start])
                break
            step = next((w for w in nxt if w not in seen), None)
            if step is None:  # dead end inside the component: report its members
                cycles.append(sorted(comp))
                break
            path.append(step)
            seen.add(step)
    return cycles


def test_graph_reader_sees_a_cycle():
    # the checker itself: a two-module cycle and a three-module one are found, a chain is not
    assert _cycles({"a": {"b"}, "b": {"a"}}) == [["a", "b", "a"]]
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"]]
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": set()}) == []


def test_no_import_cycle_at_module_level():
    cycles = _cycles(_graph(module_level_only=True))
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_no_import_cycle_hidden_in_a_function():
    """Imports inside functions count too (a lazy import that closes a cycle still ties the two
    modules together), except the ones listed in LAZY_BY_DESIGN."""
    graph = _graph(module_level_only=False)
    for importer, imported in LAZY_BY_DESIGN:
        assert imported in graph[importer], f"stale LAZY_BY_DESIGN entry {importer} -> {imported}"
        graph[importer].discard(imported)
    cycles = _cycles(graph)
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_train_and_checkpoint_do_not_import_each_other():
    graph = _graph(module_level_only=False)
    assert "dsim.train" in graph["dsim.checkpoint"]
    assert "dsim.checkpoint" not in graph["dsim.train"]


_IMPORT_EACH = """
import importlib, sys, traceback
failed = []
for name in sys.argv[1:]:
    for m in [m for m in sys.modules if m == "dsim" or m.startswith("dsim.")]:
        del sys.modules[m]
    try:
        importlib.import_module(name)
    except Exception:
        failed.append(name + ": " + traceback.format_exc().strip().splitlines()[-1])
print("\\n".join(failed))
sys.exit(1 if failed else 0)
"""


@pytest.mark.slow
def test_every_module_imports_first():
    """Import each module as the first dsim module of the interpreter (the dsim modules imported
    before are dropped from sys.modules; torch stays loaded, which is all the speed there is)."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    res = subprocess.run(
        [sys.executable, "-c", _IMPORT_EACH, *MODULES],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert res.returncode == 0, f"modules that fail to import first:\n{res.stdout}{res.stderr}"


def _too_long() -> dict[str, int]:
    lines = {name: len(path.read_text().splitlines()) for name, (path, _) in MODULES.items()}
    return {name: n for name, n in sorted(lines.items()) if n > MAX_LINES}


def test_no_module_over_600_lines():
    too_long = _too_long()
    assert not too_long, f"modules over {MAX_LINES} lines: {too_long}"
