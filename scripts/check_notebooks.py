"""Fail when a committed notebook carries outputs or execution counts (run by ``make lint``).

Outputs in git make diffs unreadable, bloat the history with images and can leak data; the
notebooks run in the test suite, so their outputs are regenerated on demand. ``make format``
(``nbstripout notebooks/*.ipynb``) or the pre-commit hook strips them.

Usage: ``python scripts/check_notebooks.py [NOTEBOOK_OR_FOLDER ...]`` (default: ``notebooks/``).
Exit status 0 when every notebook is clean, 1 otherwise, naming each offending notebook.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

PROJECT_DIR = Path(__file__).resolve().parents[1]
DEFAULT_DIR = PROJECT_DIR / "notebooks"


def notebooks(paths: Iterable[Path]) -> list[Path]:
    """The ``.ipynb`` files among ``paths`` (folders are searched, checkpoints skipped)."""
    found: list[Path] = []
    for path in paths:
        if path.is_dir():
            found.extend(
                p for p in sorted(path.rglob("*.ipynb")) if ".ipynb_checkpoints" not in p.parts
            )
        else:
            found.append(path)
    return found


def problems(path: Path) -> list[str]:
    """What is not stripped in notebook ``path``; empty when it is clean."""
    try:
        notebook = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        return [f"cannot be read as a notebook ({exc})"]
    found = []
    for number, cell in enumerate(notebook.get("cells", []), start=1):
        if cell.get("cell_type") != "code":
            continue
        if cell.get("outputs"):
            found.append(f"cell {number} has {len(cell['outputs'])} output(s)")
        if cell.get("execution_count") is not None:
            found.append(f"cell {number} has execution count {cell['execution_count']}")
    return found


def main(argv: Sequence[str] | None = None) -> int:
    """Check the notebooks named in ``argv`` (default: every one in ``notebooks/``)."""
    args = sys.argv[1:] if argv is None else list(argv)
    paths = notebooks([Path(a) for a in args] or [DEFAULT_DIR])
    dirty = 0
    for path in paths:
        found = problems(path)
        if found:
            dirty += 1
            more = f"; and {len(found) - 5} more" if len(found) > 5 else ""
            shown = "; ".join(found[:5]) + more
            print(f"{path}: not stripped: {shown}", file=sys.stderr)
    if dirty:
        print(
            f"{dirty} notebook(s) with outputs: run `make format` (nbstripout) and commit again",
            file=sys.stderr,
        )
        return 1
    print(f"{len(paths)} notebook(s) clean")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
