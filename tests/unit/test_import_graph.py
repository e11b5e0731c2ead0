"""The package's layers point one way: no import cycle anywhere in `src/actsparse`.

Every `import` and `from ... import` of `actsparse.*` counts, at module level and inside
functions alike: a function-local import only postpones a cycle to the first call, it
does not remove it. Only `if TYPE_CHECKING:` blocks are left out (they never run).

Edges, for a module M importing a module T:
- M -> T. `from actsparse.x import name` is T = actsparse.x.name when that is a module,
  else T = actsparse.x (the name is read from x's `__init__`);
- M -> every package above T that M is not itself inside: importing
  `actsparse.methods.sparsity.base` first runs `methods/sparsity/__init__.py`, which
  imports every sparsity method. A module inside that package already runs under its
  `__init__`, so for it the edge adds nothing: `from . import ops` in a sibling is not a
  cycle, while `from actsparse.methods.sparsity import SPARSITY` in a method file (a
  name its own package's `__init__` defines before importing that file) is.

`ACTSPARSE_SRC=/path/to/src pytest tests/unit/test_import_graph.py` checks another
checkout (e.g. to see the test fail on an older one).
"""

from __future__ import annotations

import ast
import os
from pathlib import Path

import pytest

SRC = Path(os.environ.get("ACTSPARSE_SRC") or Path(__file__).resolve().parents[2] / "src")
PACKAGE = "actsparse"
# the leaf of the layering: the config dataclasses, importable by every other module
SCHEMA = "actsparse.schema"


def module_files(src: Path = SRC) -> dict[str, Path]:
    """Dotted module name -> file, for every module of the package (a package is its
    `__init__.py`)."""
    out = {}
    for path in sorted((src / PACKAGE).rglob("*.py")):
        parts = list(path.relative_to(src).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _is_type_checking(node: ast.If) -> bool:
    t = node.test
    return (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or (
        isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING"
    )


def _import_nodes(tree: ast.AST) -> list[ast.Import | ast.ImportFrom]:
    """Every import statement, at any depth, except under `if TYPE_CHECKING:`."""
    out: list[ast.Import | ast.ImportFrom] = []
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            out.append(node)
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                stack.extend(child.orelse)  # the `else:` branch does run
                continue
            stack.append(child)
    return out


def imported_modules(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The package modules that module `name` imports (directly, as written)."""
    is_package = path.name == "__init__.py"
    out = set()
    for node in _import_nodes(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        else:
            if node.level:  # relative: resolved against the importing module's package
                base = name.split(".")
                base = base if is_package else base[:-1]
                base = base[: len(base) - (node.level - 1)]
                stem = ".".join(base + ([node.module] if node.module else []))
            else:
                stem = node.module or ""
            submodules = [f"{stem}.{a.name}" for a in node.names]
            # `from pkg import name` reads pkg's `__init__` unless every name is a module
            reads_pkg = any(m not in modules for m in submodules)
            targets = [m for m in submodules if m in modules] + ([stem] if reads_pkg else [])
        for t in targets:
            # `import actsparse.a.b` names a module; `from a import name` may name a function
            while t and t not in modules:
                t = t.rpartition(".")[0] if t.startswith(PACKAGE + ".") else ""
            if t:
                out.add(t)
    out.discard(name)
    return out


def import_graph(src: Path = SRC) -> dict[str, set[str]]:
    modules = module_files(src)
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        edges = set()
        for target in imported_modules(name, path, modules):
            edges.add(target)
            parent = target.rpartition(".")[0]
            while parent and parent in modules:
                if not (name == parent or name.startswith(parent + ".")):
                    edges.add(parent)
                parent = parent.rpartition(".")[0]
        edges.discard(name)
        graph[name] = edges
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as [a, b, ..., a], or None (depth-first search, three colours)."""
    state: dict[str, int] = {}  # absent: unvisited; 1: on the current path; 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_graph_sees_function_level_and_relative_imports():
    graph = import_graph()
    assert "actsparse.methods.sparsity.ops" in graph["actsparse.kernels.stat_topk"]  # `..`
    assert "actsparse.methods.sparsity" in graph["actsparse.kernels.stat_topk"]  # its package
    assert "actsparse.plan" in graph["actsparse.cli"]  # imported inside functions only


def test_find_cycle_reports_the_loop():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_no_import_cycle():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle in src/actsparse: " + " -> ".join(cycle or [])


def test_schema_is_a_leaf():
    """The schema imports nothing from the package outside itself, so every layer above
    (methods, data, stages, plan, validation) can import it."""
    graph = import_graph()
    schema = [m for m in graph if m == SCHEMA or m.startswith(SCHEMA + ".")]
    if not schema:
        pytest.fail(f"no {SCHEMA} module under {SRC}")
    outside = {
        m: sorted(t for t in graph[m] if not (t == SCHEMA or t.startswith(SCHEMA + ".")))
        for m in schema
    }
    assert not any(outside.values()), f"the schema imports from above it: {outside}"


def test_the_stages_run_per_variant_import_no_library_they_rarely_need():
    """Every job is a fresh process, and the smoke study runs ~70 of them: scipy.stats
    (0.7 s) and matplotlib load in the function that needs them, not at module level."""
    import subprocess
    import sys

    stages = ["evaluate", "sparsify", "allocate", "decompose", "calibrate", "predictors", "train"]
    code = (
        "import importlib, sys\n"
        f"for m in {stages!r}: importlib.import_module('actsparse.stages.' + m)\n"
        "print(sorted(m for m in ('scipy.stats', 'matplotlib') if m in sys.modules))"
    )
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]"
