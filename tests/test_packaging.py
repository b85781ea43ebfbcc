"""The `serve` extra alone is a working service: a fresh venv with only requirements-serve.lock and
the project (no Dask, no matplotlib, no MLflow UI server) serves a model from a SQLite store."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.conftest import LoggedModel
from tests.helpers import PROJECT_DIR, server_process

UV = Path(sys.executable).parent / "uv"


@pytest.fixture(scope="module")
def serve_venv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    venv = tmp_path_factory.mktemp("serve") / "venv"
    python = venv / "bin" / "python"
    base = Path(sys.base_prefix) / "bin" / "python3"
    steps = [
        [str(UV), "venv", "-q", str(venv), "--python", str(base)],
        [str(UV), "pip", "install", "-q", "--python", str(python), "-r", "requirements-serve.lock"],
        [str(UV), "pip", "install", "-q", "--python", str(python), "--no-deps", "."],
    ]
    for step in steps:
        subprocess.run(step, cwd=PROJECT_DIR, check=True, timeout=600)
    yield python
    shutil.rmtree(venv, ignore_errors=True)


def test_the_serve_extra_holds_no_training_or_batch_library(serve_venv: Path) -> None:
    code = (
        "import importlib.util as u\n"
        "print(','.join(m for m in ('dask', 'distributed', 'matplotlib', 'flask', 'optuna', "
        "'bokeh', 'gunicorn') if u.find_spec(m)))"
    )
    out = subprocess.run(
        [str(serve_venv), "-c", code], capture_output=True, text=True, check=True, cwd="/"
    )
    assert out.stdout.strip() == ""


def test_the_serve_extra_runs_the_service(serve_venv: Path, booster_model: LoggedModel) -> None:
    help_text = subprocess.run(
        [str(serve_venv), "-m", "app", "--help"], capture_output=True, text=True, check=True
    ).stdout
    assert "--model-uri" in help_text
    args = [
        str(serve_venv),
        "-m",
        "app",
        "--model-uri",
        booster_model.model_uri,
        "--port",
        "{port}",
    ]
    with server_process(args, env={"COMPILED_PREDICTOR": "false"}) as (base, _):
        frame = booster_model.frame
        r = httpx.post(
            f"{base}/invocations",
            content=frame.to_json(orient="split"),
            headers={"content-type": "application/json"},
            timeout=30,
        )
        assert r.status_code == 200, r.text
        np.testing.assert_allclose(r.json()["predictions"], booster_model.expected, atol=1e-12)
