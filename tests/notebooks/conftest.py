"""Run the project's notebooks headless with papermill, as a person would run them top to bottom.

Each notebook is executed in a fresh ``python3`` kernel (the one ``make install`` registers in
the venv) with ``notebooks/`` as its working directory, small-data parameters injected after its
``parameters`` cell, and the test process's environment, so ``MLFLOW_TRACKING_URI`` set by a test
or the session fixture is the store the notebook uses. A cell that raises fails the test.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import nbformat
import papermill
import pytest

from tests.helpers import PROJECT_DIR

NOTEBOOKS_DIR = PROJECT_DIR / "notebooks"
CELL_TIMEOUT = 240  # seconds per cell; a loaded 2-core machine needs a generous bound

RunNotebook = Callable[..., nbformat.NotebookNode]


def execute(name: str, out_dir: Path, **parameters: Any) -> nbformat.NotebookNode:
    """Execute ``notebooks/<name>`` with ``parameters``; return the executed notebook."""
    output = out_dir / name
    papermill.execute_notebook(
        str(NOTEBOOKS_DIR / name),
        str(output),
        parameters=parameters,
        kernel_name="python3",
        cwd=str(NOTEBOOKS_DIR),
        progress_bar=False,
        log_output=False,
        execution_timeout=CELL_TIMEOUT,
    )
    return nbformat.read(output, as_version=4)


@pytest.fixture
def run_notebook(tmp_path: Path) -> RunNotebook:
    """``run_notebook(name, **parameters)``: execute a notebook into this test's temp folder."""

    def _run(name: str, **parameters: Any) -> nbformat.NotebookNode:
        return execute(name, tmp_path, **parameters)

    return _run


def outputs(notebook: nbformat.NotebookNode, kind: str) -> list[Any]:
    """Every output of ``kind`` in ``notebook``: a MIME type (``image/png``) or ``stream``."""
    found = []
    for cell in notebook.cells:
        for output in cell.get("outputs", []):
            if kind == "stream" and output.get("output_type") == "stream":
                found.append(output["text"])
            elif kind in output.get("data", {}):
                found.append(output["data"][kind])
    return found
