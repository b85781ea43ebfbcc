"""The shape of ``training``: no import cycle, and each ``app`` import in exactly one module."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.helpers import PROJECT_DIR

PACKAGE = PROJECT_DIR / "training"


def _imports(path: Path) -> set[str]:
    """Every module ``path`` imports, at the top or inside a function, as a dotted name."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            # ``from training import distributed`` imports the module training.distributed.
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def _graph() -> dict[str, set[str]]:
    modules = {f"training.{p.stem}": p for p in PACKAGE.glob("*.py") if p.stem != "__init__"}
    return {name: _imports(path) & set(modules) - {name} for name, path in modules.items()}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a path of module names, or ``None`` (depth-first search)."""
    done: set[str] = set()

    def visit(node: str, path: list[str]) -> list[str] | None:
        if node in path:
            return [*path[path.index(node) :], node]
        if node in done:
            return None
        for nxt in sorted(graph[node]):
            if found := visit(nxt, [*path, node]):
                return found
        done.add(node)
        return None

    for start in sorted(graph):
        if found := visit(start, []):
            return found
    return None


def test_the_checker_finds_a_cycle() -> None:
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycle_within_training() -> None:
    graph = _graph()
    assert {"training.train", "training.tracking", "training.distributed"} <= set(graph)
    assert _cycle(graph) is None, _cycle(graph)


def test_the_store_and_the_cluster_are_reached_through_one_module_each() -> None:
    # training reaches the core's tracking helpers from tracking.py, and Dask's client from
    # distributed.py only, so each door's dependency stays in one place.
    users: dict[str, set[str]] = {}
    for path in PACKAGE.glob("*.py"):
        for name in _imports(path):
            if name in ("scoring.tracking", "batch.cluster"):
                users.setdefault(name, set()).add(path.stem)
    assert users == {"scoring.tracking": {"tracking"}, "batch.cluster": {"distributed"}}
