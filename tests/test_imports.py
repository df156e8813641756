"""The tree's floors: no import cycles, and the store imports nothing above it.

Walks the source (ast, not importing anything) for ``infermeter`` imports.
A cycle is counted among imports that run when a module is loaded: those
at module level, outside ``if TYPE_CHECKING:``; an import inside a function
runs later and cannot deadlock a load. The store rule counts every import,
lazy ones too: the store is the ground floor, so that the flush, the
rollups and a migration never pull in attribution, pricing or the CLI.
"""

from __future__ import annotations

import ast
from pathlib import Path

from support import ROOT

SOURCES = {
    "agent": "infermeter",
    "plugins": "infermeter.plugins",
    "migrations": "infermeter.migrations",
}
# What the store may import besides itself: the plain records, errors, the
# config it is opened with, its Alembic migrations, and safe_text (a leaf
# that imports nothing of ours) for the one-line errors it raises.
STORE_MAY_IMPORT = (
    "infermeter.store",
    "infermeter.records",
    "infermeter.errors",
    "infermeter.config",
    "infermeter.migrations",
    "infermeter.safe_text",
)


def modules() -> dict[str, Path]:
    out: dict[str, Path] = {}
    for folder, package in SOURCES.items():
        for path in (ROOT / folder).rglob("*.py"):
            rel = path.relative_to(ROOT / folder).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            if folder == "agent" and parts and parts[0] in ("plugins", "migrations"):
                continue
            out[".".join([package, *parts])] = path
    return out


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def imports(path: Path, known: set[str], at_load_only: bool) -> set[str]:
    """The infermeter modules ``path`` imports (at load time only, or anywhere)."""
    found: set[str] = set()

    def visit(node: ast.AST, loading: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                continue
            inner = loading and not isinstance(
                child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda
            )
            if isinstance(child, ast.Import | ast.ImportFrom) and (inner or not at_load_only):
                names: list[str] = []
                if isinstance(child, ast.Import):
                    names = [a.name for a in child.names]
                elif child.module and child.level == 0:
                    names = [f"{child.module}.{a.name}" for a in child.names] + [child.module]
                for name in names:
                    while name and name not in known:
                        name = name.rpartition(".")[0]
                    if name.startswith("infermeter"):
                        found.add(name)
                        if isinstance(child, ast.ImportFrom):
                            break  # the submodule if it is one, else the module
            visit(child, inner)

    visit(ast.parse(path.read_text()), True)
    return found


def test_the_walk_sees_the_tree() -> None:
    known = modules()
    assert "infermeter.store.writer" in known and "infermeter.plugins.nvml" in known
    writer = imports(known["infermeter.store.writer"], set(known), at_load_only=False)
    assert {"infermeter.records", "infermeter.store.models"} <= writer
    # A lazy import counts for the store rule, not for cycles.
    agent = known["infermeter.sidecar.agent"]
    assert "infermeter.recommend.run" in imports(agent, set(known), at_load_only=False)
    assert "infermeter.recommend.run" not in imports(agent, set(known), at_load_only=True)


def test_no_import_cycles() -> None:
    known = modules()
    graph = {m: imports(p, set(known), at_load_only=True) - {m} for m, p in known.items()}
    state: dict[str, int] = {}  # 1: on the path, 2: done
    path: list[str] = []
    cycles: list[list[str]] = []

    def walk(m: str) -> None:
        state[m] = 1
        path.append(m)
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                cycles.append([*path[path.index(n) :], n])
            elif n not in state:
                walk(n)
        path.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            walk(m)
    assert cycles == [], "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_the_store_imports_nothing_above_it() -> None:
    known = modules()
    upward = {
        m: sorted(
            n
            for n in imports(p, set(known), at_load_only=False)
            if not n.startswith(STORE_MAY_IMPORT)
        )
        for m, p in known.items()
        if m.startswith("infermeter.store")
    }
    assert {m: n for m, n in upward.items() if n} == {}
