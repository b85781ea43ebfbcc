"""The tracking server goes away: start-up fails clearly (or, retrying, stays not ready), and a
reload fails while the old model keeps serving. A real ``mlflow server`` process."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import lightgbm as lgb
import numpy as np
import pytest

from tests.helpers import (
    PROJECT_DIR,
    free_port,
    make_frame,
    server_process,
    stop_process,
    wait_http,
)
from tests.production.conftest import ADMIN_TOKEN
from tests.production.test_observability import metric

JSON = {"content-type": "application/json"}


class TrackingServer:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        log = (self.root / "server.log").open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "server",
             "--backend-store-uri", f"sqlite:///{self.root / 'mlflow.db'}",
             "--artifacts-destination", str(self.root / "artifacts"), "--serve-artifacts",
             "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1"],
            cwd=self.root, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            env={**{k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")},
                 "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
        )  # fmt: skip
        log.close()
        wait_http(self.url + "/health", timeout=240, proc=self.proc)

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)
            self.proc = None


@pytest.fixture(scope="module")
def tracking(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TrackingServer]:
    server = TrackingServer(tmp_path_factory.mktemp("tracking"))
    server.start()
    yield server
    server.stop()


def _register(tracking: TrackingServer) -> np.ndarray:
    """Train a small model and register it as ``remote@champion`` through the server (HTTP)."""
    script = """
import lightgbm as lgb, mlflow, numpy as np, sys
from tests.helpers import make_frame
x, y = make_frame(400, seed=9)
booster = lgb.train({"objective": "binary", "verbose": -1, "seed": 9}, lgb.Dataset(x, y), 10)
with mlflow.start_run():
    info = mlflow.lightgbm.log_model(booster, name="model", registered_model_name="remote",
                                     input_example=x.head(2), pip_requirements=["lightgbm"])
mlflow.MlflowClient().set_registered_model_alias("remote", "champion",
                                                 info.registered_model_version)
booster.save_model(sys.argv[1])
"""
    model_file = tracking.root / "booster.txt"
    # Nothing MLflow-related from this session (an experiment id, say) may leak into the client.
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env["MLFLOW_TRACKING_URI"] = tracking.url
    proc = subprocess.run(
        [sys.executable, "-c", script, str(model_file)],
        cwd=PROJECT_DIR,
        env=env,
        timeout=300,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows, _ = make_frame(20, seed=10)
    return np.asarray(lgb.Booster(model_file=str(model_file)).predict(rows.to_numpy()))


def test_reload_fails_while_the_old_model_keeps_serving(tracking: TrackingServer) -> None:
    expected = _register(tracking)
    rows, _ = make_frame(20, seed=10)
    body = rows.to_json(orient="split")
    env = {
        "MLFLOW_TRACKING_URI": tracking.url,
        "ADMIN_TOKEN": ADMIN_TOKEN,
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
        "MLFLOW_HTTP_REQUEST_TIMEOUT": "5",
    }
    args = [
        sys.executable,
        "-m",
        "app",
        "--model-uri",
        "models:/remote@champion",
        "--port",
        "{port}",
    ]
    with server_process(args, env=env) as (base, _):
        r = httpx.post(f"{base}/invocations", content=body, headers=JSON)
        np.testing.assert_allclose(r.json()["predictions"], expected, atol=1e-9)
        tracking.stop()
        try:
            r = httpx.post(
                f"{base}/admin/reload",
                timeout=120,
                headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
            )
            assert r.status_code == 502, r.text
            assert r.json()["error_code"] == "MODEL_LOAD_FAILED"
            assert "still serving the previous model" in r.json()["message"]
            # ... and it does.
            r = httpx.post(f"{base}/invocations", content=body, headers=JSON)
            assert r.status_code == 200
            np.testing.assert_allclose(r.json()["predictions"], expected, atol=1e-9)
            assert httpx.get(f"{base}/health/ready").status_code == 200
            card = httpx.get(f"{base}/model").json()
            assert card["load_failures"] >= 1 and card["last_error"]
            assert card["registered_name"] == "remote"
            assert metric(httpx.get(f"{base}/metrics").text, "model_load_failures_total") >= 1
        finally:
            tracking.start()


def test_startup_with_the_server_down(tracking: TrackingServer) -> None:
    tracking.stop()
    try:
        env = {
            **os.environ,
            "MLFLOW_TRACKING_URI": tracking.url,
            "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
        }
        started = time.monotonic()
        proc = subprocess.run(
            ["./local-serve.sh", "models:/remote@champion"],
            cwd=PROJECT_DIR,
            env=env,
            capture_output=True,
            text=True,
            timeout=180,
        )
        assert proc.returncode == 2
        (line,) = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
        assert "models:/remote@champion" in line and "unreachable" in line
        assert "Traceback" not in proc.stderr
        assert time.monotonic() - started < 120

        # Retrying instead: live, not ready, with the reason, for as long as the server is down.
        args = [
            sys.executable,
            "-m",
            "app",
            "--model-uri",
            "models:/remote@champion",
            "--port",
            "{port}",
        ]
        retry_env = {
            "MLFLOW_TRACKING_URI": tracking.url,
            "MODEL_LOAD_RETRY": "true",
            "MODEL_RETRY_MAX_SECONDS": "1",
            "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
        }
        with server_process(args, env=retry_env, ready_path="/health/live") as (base, _):
            deadline = time.monotonic() + 120
            while "unreachable" not in httpx.get(f"{base}/health/ready").json()["reason"]:
                assert time.monotonic() < deadline, "the first attempt never reported"
                time.sleep(0.5)
            for _ in range(3):  # and it stays that way, retrying, while the server is down
                r = httpx.get(f"{base}/health/ready")
                assert r.status_code == 503 and "unreachable" in r.json()["reason"]
                time.sleep(1)
            assert httpx.get(f"{base}/health/live").status_code == 200
            card = httpx.get(f"{base}/model")
            assert card.status_code == 503 and card.json()["error_code"] == "MODEL_NOT_READY"
    finally:
        tracking.start()
