"""The layout shows the architecture: one core, thin doors, no import cycle.

Read from the source with ``ast`` (every import, lazy ones inside functions too), so a cycle that
only works through a lazy import is still a cycle.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("app", "scoring", "batch", "training", "bench")
# ``python -m app.batch`` is the old name of ``python -m batch``, kept for one release.
ALIASES = {"app.batch"}
# ``python -m bench.inproc`` measures the HTTP door itself, in process (no server, no sockets):
# driving the door is its whole job, so it is the one module outside ``app`` allowed to import it.
DOOR_DRIVERS = {"bench/inproc.py"}


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Every module ``path`` imports, absolute names, at any depth of the file."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def _graph() -> dict[str, set[str]]:
    modules = {_module_name(p): p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        targets = {t for t in _imports(path) if t in modules and t != name}
        graph[name] = targets
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """A cycle of modules, or None (depth-first search with colours)."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt) :], nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def _package(module: str) -> str:
    return module.split(".", 1)[0]


def test_no_import_cycle_between_modules() -> None:
    graph = _graph()
    # A package's __init__ re-exporting its modules is not a cycle of meaning; none do today.
    assert _cycle(graph) is None, " -> ".join(_cycle(graph) or [])


def test_no_import_cycle_between_packages() -> None:
    graph: dict[str, set[str]] = {}
    for module, targets in _graph().items():
        if module in ALIASES:
            continue
        graph.setdefault(_package(module), set()).update(
            _package(t) for t in targets if _package(t) != _package(module)
        )
    assert _cycle(graph) is None, " -> ".join(_cycle(graph) or [])


@pytest.mark.parametrize("package", [p for p in PACKAGES if p != "app"])
def test_only_the_http_door_imports_app_or_fastapi(package: str) -> None:
    offenders = []
    for path in sorted((ROOT / package).rglob("*.py")):
        if str(path.relative_to(ROOT)) in DOOR_DRIVERS:
            continue
        for target in _imports(path):
            top = target.split(".", 1)[0]
            if top in {"app", "fastapi", "starlette", "uvicorn"}:
                offenders.append(f"{path.relative_to(ROOT)} imports {target}")
    assert not offenders, offenders


def test_the_core_imports_no_dask_and_no_http() -> None:
    offenders = []
    for path in sorted((ROOT / "scoring").rglob("*.py")):
        for target in _imports(path):
            top = target.split(".", 1)[0]
            if top in {"dask", "distributed", "fastapi", "starlette", "batch", "training"}:
                offenders.append(f"{path.relative_to(ROOT)} imports {target}")
    assert not offenders, offenders


def test_importing_the_service_loads_no_training_or_batch_libraries() -> None:
    code = (
        "import sys\n"
        "from app.config import Settings\n"
        "from app.main import create_app\n"
        "create_app(Settings(model_uri=None))\n"
        "heavy = [m for m in ('dask', 'distributed', 'matplotlib', 'sklearn', 'optuna', 'batch',"
        " 'training') if m in sys.modules]\n"
        "print(','.join(heavy))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "", f"the service imported {out.stdout.strip()}"
