"""A python-function model that runs code when unpickled, against a real server process.

Refused by default (exit 2, one line, the code never ran); served only with
``ALLOW_UNTRUSTED_MODELS=true``; an alias moved to it is not followed on reload: the old model
keeps serving and the failure is counted.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import cloudpickle
import httpx
import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow.models import infer_signature

from tests.conftest import LoggedModel
from tests.helpers import PYTHON, make_frame, server_process
from tests.production.conftest import ADMIN_TOKEN

JSON = {"content-type": "application/json"}


def _touch_then_build(marker: str) -> Half:
    """What unpickling the model calls: any code at all; here it leaves a file behind."""
    Path(marker).write_text("code from the registry ran while the model loaded\n")
    return Half()


class Half(mlflow.pyfunc.PythonModel):  # type: ignore[misc]
    def predict(self, context, model_input: pd.DataFrame, params=None):  # type: ignore[no-untyped-def]
        return np.full(len(model_input), 0.5)


class RunsCodeWhenLoaded(mlflow.pyfunc.PythonModel):  # type: ignore[misc]
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (_touch_then_build, (self.marker,))

    def predict(self, context, model_input: pd.DataFrame, params=None):  # type: ignore[no-untyped-def]
        return np.full(len(model_input), 0.5)


@pytest.fixture(scope="module")
def evil(tracking_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    """The run id of the code-running model, and the file its unpickling writes."""
    marker = tmp_path_factory.mktemp("evil") / "pwned"
    frame, _ = make_frame(5, seed=41)
    # By value, as an attacker's own code would travel: the server cannot import this module.
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    try:
        with mlflow.start_run() as run:
            mlflow.pyfunc.log_model(
                name="model",
                python_model=RunsCodeWhenLoaded(str(marker)),
                signature=infer_signature(frame, np.full(5, 0.5)),
                pip_requirements=["mlflow"],
            )
    finally:
        cloudpickle.unregister_pickle_by_value(sys.modules[__name__])
    marker.unlink(missing_ok=True)  # in case logging itself loaded the model back
    return run.info.run_id, marker


def _args(uri: str) -> list[str]:
    return [PYTHON, "-m", "app", "--model-uri", uri, "--host", "127.0.0.1", "--port", "{port}"]


def test_refused_at_start_with_exit_2(evil: tuple[str, Path]) -> None:
    run_id, marker = evil
    args = [a.replace("{port}", "0") for a in _args(run_id)]
    done = subprocess.run(args, capture_output=True, text=True, timeout=180)
    assert done.returncode == 2, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "refused untrusted model" in lines[0], done.stderr
    assert "ALLOW_UNTRUSTED_MODELS=true" in lines[0]
    assert not marker.exists()


def test_served_when_untrusted_models_are_allowed(evil: tuple[str, Path]) -> None:
    run_id, marker = evil
    env = {"ALLOW_UNTRUSTED_MODELS": "true"}
    with server_process(_args(run_id), env=env) as (base, _):
        assert marker.exists()  # it did run: allowing untrusted models means exactly that
        card = httpx.get(f"{base}/model", timeout=10).json()
        assert card["loading"] == "pyfunc (untrusted allowed)"
        frame, _ = make_frame(3, seed=42)
        r = httpx.post(
            f"{base}/invocations", content=frame.to_json(orient="split"), headers=JSON, timeout=30
        )
        assert r.status_code == 200 and r.json()["predictions"] == [0.5] * 3
    marker.unlink()


def test_a_reload_to_it_keeps_the_old_model(
    evil: tuple[str, Path], booster_model: LoggedModel
) -> None:
    run_id, marker = evil
    name = "trust-swap"
    client = mlflow.MlflowClient()
    good = str(mlflow.register_model(booster_model.model_uri, name).version)
    bad = str(mlflow.register_model(f"runs:/{run_id}/model", name).version)
    client.set_registered_model_alias(name, "champion", good)
    env = {"ADMIN_TOKEN": ADMIN_TOKEN, "COMPILED_PREDICTOR": "false"}
    body = booster_model.frame.to_json(orient="split")
    with server_process(_args(f"models:/{name}@champion"), env=env) as (base, _):
        assert httpx.get(f"{base}/model", timeout=10).json()["loading"] == "lightgbm native text"
        client.set_registered_model_alias(name, "champion", bad)
        r = httpx.post(
            f"{base}/admin/reload",
            headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
            timeout=120,
        )
        assert r.status_code == 502, r.text
        assert "refused untrusted model" in r.json()["message"]
        assert not marker.exists()
        card = httpx.get(f"{base}/model", timeout=10).json()
        assert card["version"] == good and card["loading"] == "lightgbm native text"
        assert card["load_failures"] == 1 and "refused untrusted model" in card["last_error"]
        metrics = httpx.get(f"{base}/metrics", timeout=10).text
        assert "model_load_failures_total 1.0" in metrics
        scored = httpx.post(f"{base}/invocations", content=body, headers=JSON, timeout=30)
        assert scored.status_code == 200
        np.testing.assert_allclose(
            scored.json()["predictions"], booster_model.expected, rtol=0, atol=1e-12
        )
    assert not marker.exists()
