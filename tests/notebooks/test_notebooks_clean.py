"""The committed notebooks: stripped, parameterised, built on the project's code; the lint check."""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from importlib.metadata import packages_distributions
from pathlib import Path

import nbformat
import pytest

from tests.helpers import PROJECT_DIR
from tests.notebooks.conftest import NOTEBOOKS_DIR

NAMES = [
    "01_explore_data.ipynb",
    "02_train_and_track.ipynb",
    "03_call_the_api.ipynb",
    "04_tune.ipynb",
    "05_explain.ipynb",
    "06_monitor.ipynb",
]
CHECK = PROJECT_DIR / "scripts" / "check_notebooks.py"


def source(notebook: nbformat.NotebookNode) -> str:
    return "\n".join(cell.source for cell in notebook.cells if cell.cell_type == "code")


@pytest.mark.parametrize("name", NAMES)
def test_notebook_is_stripped_and_parameterised(name: str) -> None:
    notebook = nbformat.read(NOTEBOOKS_DIR / name, as_version=4)
    nbformat.validate(notebook)
    assert notebook.metadata["kernelspec"]["name"] == "python3"
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert all(not cell.outputs and cell.execution_count is None for cell in code)
    tagged = [cell for cell in code if "parameters" in cell.metadata.get("tags", [])]
    assert len(tagged) == 1, "papermill needs exactly one cell tagged 'parameters'"
    # Uses the project's code rather than a copy of it.
    assert "from training." in source(notebook)
    assert "def cross_validate" not in source(notebook)
    assert "lgb.train(" not in source(notebook)


@pytest.mark.parametrize("name", ["02_train_and_track.ipynb", "03_call_the_api.ipynb"])
def test_mlflow_notebooks_take_tracking_uri_as_a_parameter(name: str) -> None:
    notebook = nbformat.read(NOTEBOOKS_DIR / name, as_version=4)
    parameters = next(c for c in notebook.cells if "parameters" in c.metadata.get("tags", []))
    assert "tracking_uri = None" in parameters.source
    assert "configure_tracking()" in source(notebook)


def test_api_notebook_sends_the_readme_request_verbatim() -> None:
    code = source(nbformat.read(NOTEBOOKS_DIR / "03_call_the_api.ipynb", as_version=4))
    for line in (
        "columns = [f'var_{i}' for i in range(0, 200)]",
        "random_data = pd.DataFrame(np.random.random((1, 200)), columns=columns)",
        'headers={"Content-Type": "application/json"},',
        "data=random_data.to_json(orient='split'))",
    ):
        assert line in code
    assert 'json={"dataframe_split": random_data.to_dict(orient="split")}' in code


def run_check(*paths: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(CHECK), *map(str, paths)],
        cwd=PROJECT_DIR,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_check_passes_on_the_committed_notebooks() -> None:
    result = run_check()
    assert result.returncode == 0, result.stderr
    assert f"{len(NAMES)} notebook(s) clean" in result.stdout


def test_check_fails_naming_a_notebook_with_outputs_or_counts(tmp_path: Path) -> None:
    clean = json.loads((NOTEBOOKS_DIR / NAMES[0]).read_text())
    (tmp_path / "clean.ipynb").write_text(json.dumps(clean))
    with_output = json.loads(json.dumps(clean))
    first_code = next(c for c in with_output["cells"] if c["cell_type"] == "code")
    first_code["outputs"] = [{"output_type": "stream", "name": "stdout", "text": "hi\n"}]
    (tmp_path / "with_output.ipynb").write_text(json.dumps(with_output))
    with_count = json.loads(json.dumps(clean))
    next(c for c in with_count["cells"] if c["cell_type"] == "code")["execution_count"] = 7
    (tmp_path / "with_count.ipynb").write_text(json.dumps(with_count))

    assert run_check(tmp_path / "clean.ipynb").returncode == 0
    result = run_check(tmp_path)
    assert result.returncode == 1
    assert "with_output.ipynb: not stripped: cell" in result.stderr
    assert "1 output(s)" in result.stderr
    assert "with_count.ipynb: not stripped:" in result.stderr
    assert "execution count 7" in result.stderr
    assert "clean.ipynb" not in result.stderr.replace("with_", "")


def pinned(path: Path) -> set[str]:
    """Normalised distribution names pinned (``name==version``) in a requirements file."""
    names = set()
    for raw in path.read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if "==" in line:
            names.add(re.sub(r"[-_.]+", "-", line.split("==", 1)[0].split("[", 1)[0]).lower())
    return names


def test_every_library_a_notebook_imports_is_installed_in_the_lab_image() -> None:
    """The lab image installs requirements.lock, dev-requirements.txt and their pinned deps."""
    lab = (
        pinned(PROJECT_DIR / "requirements.lock")
        | pinned(PROJECT_DIR / "dev-requirements.txt")
        | pinned(PROJECT_DIR / "docker" / "lab-constraints.txt")
    )
    distributions = packages_distributions()
    for name in NAMES:
        notebook = nbformat.read(NOTEBOOKS_DIR / name, as_version=4)
        code = "\n".join(
            line
            for line in source(notebook).splitlines()
            if not line.lstrip().startswith(("%", "!"))  # IPython magics are not Python
        )
        modules = set()
        for node in ast.walk(ast.parse(code)):
            if isinstance(node, ast.Import):
                modules.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                modules.add(node.module.split(".")[0])
        own = {"app", "scoring", "batch", "training"}  # the project, copied into the image
        for module in sorted(modules - set(sys.stdlib_module_names) - own):
            dists = {re.sub(r"[-_.]+", "-", d).lower() for d in distributions.get(module, [])}
            assert dists & lab, f"{name} imports {module}, which the lab image does not install"
