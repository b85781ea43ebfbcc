"""Health, versions, the model card, OpenAPI, and start-up: in process and as real processes."""

from __future__ import annotations

import subprocess
import time

import httpx
import numpy as np
import pandas as pd
import pytest
import requests
from fastapi.testclient import TestClient

from app import observability
from app.config import Settings
from app.main import ServerEntry, create_app
from scoring.model_ref import normalize_model_uri
from tests.conftest import LoggedModel
from tests.contract_cases import ROW, split
from tests.helpers import FEATURES, PROJECT_DIR, PYTHON, server_process


def test_health_routes(client: TestClient) -> None:
    assert client.get("/ping").status_code == 200
    assert client.get("/health").json()["status"] == "ready"
    assert client.get("/health/live").json() == {"status": "live"}
    ready = client.get("/health/ready")
    assert ready.status_code == 200 and ready.json()["model_uri"] == "models:/santander@champion"
    # As `mlflow models serve`: the MLflow version as plain text.
    assert client.get("/version").text.startswith("3.17")
    versions = client.get("/versions").json()
    assert versions["mlflow"].startswith("3.17") and versions["lightgbm"][0].isdigit()


def test_model_card_names_the_registered_version(
    client: TestClient, booster_model: LoggedModel
) -> None:
    card = client.get("/model").json()
    assert card["registered_name"] == "santander"
    assert card["alias"] == "champion"
    assert card["version"] == booster_model.version
    assert card["run_id"] == booster_model.run_id
    assert card["flavor"] == "lightgbm"
    assert card["features"] == [f"var_{i}" for i in range(200)]
    assert card["metrics"]["cv_auc"] == pytest.approx(0.75)
    assert card["params"]["kind"] == "santander"


@pytest.mark.parametrize("kind", ["run id", "runs uri", "version uri", "logged model id"])
def test_every_uri_kind_loads(booster_model: LoggedModel, kind: str) -> None:
    ref = {
        "run id": booster_model.run_id,
        "runs uri": booster_model.model_uri,
        "version uri": f"models:/santander/{booster_model.version}",
        "logged model id": booster_model.model_id,
    }[kind]
    settings = Settings(model_uri=ref)
    with TestClient(create_app(settings)) as c:
        card = c.get("/model").json()
        assert card["run_id"] == booster_model.run_id
        r = c.post(
            "/invocations",
            content=booster_model.frame.to_json(orient="split"),
            headers={"content-type": "application/json"},
        )
        np.testing.assert_allclose(r.json()["predictions"], booster_model.expected, atol=1e-12)


def test_a_local_model_folder_loads(booster_model: LoggedModel, tmp_path) -> None:  # type: ignore[no-untyped-def]
    import mlflow

    local = mlflow.artifacts.download_artifacts(booster_model.model_uri, dst_path=str(tmp_path))
    with TestClient(create_app(Settings(model_uri=local))) as c:
        assert c.get("/model").json()["run_id"] is None
        r = c.post(
            "/invocations",
            content=booster_model.frame.to_json(orient="split"),
            headers={"content-type": "application/json"},
        )
        assert r.status_code == 200


def test_uri_shorthands_and_validation() -> None:
    run = "0123456789abcdef0123456789abcdef"
    assert normalize_model_uri(run) == f"runs:/{run}/model"
    assert normalize_model_uri("m-" + run) == f"models:/m-{run}"
    assert normalize_model_uri("models:/santander@champion") == "models:/santander@champion"
    with pytest.raises(ValueError, match="malformed model URI"):
        Settings(model_uri="models:/")
    with pytest.raises(ValueError, match="malformed run URI"):
        Settings(model_uri="runs:")


def test_openapi_documents_the_request_schema(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    body = spec["paths"]["/invocations"]["post"]["requestBody"]["content"]
    assert {"application/json", "text/csv", "application/vnd.apache.parquet"} <= set(body)
    split = spec["components"]["schemas"]["SplitFrame"]
    names = split["properties"]["columns"]["items"]["enum"]
    assert names == [f"var_{i}" for i in range(200)]
    # The shipped example is what "Try it out" sends: it must score.
    example = body["application/json"]["examples"]["split"]["value"]
    r = client.post("/invocations", json=example)
    assert r.status_code == 200 and len(r.json()["predictions"]) == 1
    records = body["application/json"]["examples"]["dataframe_records"]["value"]
    assert client.post("/invocations", json=records).status_code == 200
    csv = body["text/csv"]["example"]
    assert (
        client.post("/invocations", content=csv, headers={"content-type": "text/csv"}).status_code
        == 200
    )


def test_unknown_run_fails_startup_with_one_line(tracking_dir) -> None:  # type: ignore[no-untyped-def]
    run = "f" * 32
    proc = subprocess.run(
        [PYTHON, "-m", "app", "--model-uri", run, "--check"],
        cwd=PROJECT_DIR,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert lines[-1].startswith(f"error: cannot load model 'runs:/{run}/model'")
    assert "Traceback" not in proc.stderr


def test_unreachable_tracking_server_fails_clearly(tracking_dir) -> None:  # type: ignore[no-untyped-def]
    env = {"MLFLOW_TRACKING_URI": "http://127.0.0.1:9", "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0"}
    started = time.monotonic()
    proc = subprocess.run(
        ["./local-serve.sh", "models:/santander@champion", "--port", "1"],
        cwd=PROJECT_DIR,
        capture_output=True,
        text=True,
        timeout=120,
        env={**__import__("os").environ, **env},
    )
    assert proc.returncode == 2
    assert "unreachable" in proc.stderr and "models:/santander@champion" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert time.monotonic() - started < 60


def test_run_without_a_model_fails_clearly(tracking_dir) -> None:  # type: ignore[no-untyped-def]
    import mlflow

    with mlflow.start_run() as run:
        mlflow.log_param("nothing", "here")
    proc = subprocess.run(
        ["./local-serve.sh", run.info.run_id],
        cwd=PROJECT_DIR,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert f"runs:/{run.info.run_id}/model" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_local_serve_help() -> None:
    proc = subprocess.run(
        ["./local-serve.sh", "--help"], cwd=PROJECT_DIR, capture_output=True, text=True, timeout=30
    )
    assert proc.returncode == 0 and "run-id" in proc.stdout and "--port" in proc.stdout
    proc = subprocess.run(
        ["./local-serve.sh"], cwd=PROJECT_DIR, capture_output=True, text=True, timeout=30
    )
    assert proc.returncode == 2 and "Usage" in proc.stderr


def test_local_serve_end_to_end_with_the_readme_snippet(booster_model: LoggedModel) -> None:
    """A real server process from ./local-serve.sh <run-id>, driven by the README request."""
    args = ["./local-serve.sh", booster_model.run_id, "--port", "{port}", "--workers", "2"]
    with server_process(args) as (base, proc):
        columns = [f"var_{i}" for i in range(0, 200)]
        random_data = pd.DataFrame(np.random.random((1, 200)), columns=columns)
        r = requests.post(
            f"{base}/invocations",
            headers={"Content-Type": "application/json"},
            data=random_data.to_json(orient="split"),
        )
        assert r.status_code == 200
        (p,) = r.json()["predictions"]
        assert 0.0 <= p <= 1.0
        r = requests.post(
            f"{base}/invocations",
            headers={"Content-Type": "application/json"},
            data=booster_model.frame.to_json(orient="split"),
        )
        np.testing.assert_allclose(r.json()["predictions"], booster_model.expected, atol=1e-12)
        bad = requests.post(
            f"{base}/invocations", headers={"Content-Type": "application/json"}, data="{not json"
        )
        assert bad.status_code == 400 and bad.json()["error_code"] == "MALFORMED_REQUEST"
        assert httpx.get(f"{base}/docs").status_code == 200
    assert proc.poll() is not None


def test_retry_mode_starts_without_a_model_and_becomes_ready(
    booster_model: LoggedModel,
) -> None:
    """MODEL_LOAD_RETRY: live but not ready (503 + reason) until the alias exists, no restart."""
    import mlflow

    client = mlflow.MlflowClient()
    name = "santander-later"
    env = {"MODEL_LOAD_RETRY": "true", "MODEL_RETRY_MAX_SECONDS": "1"}
    args = [PYTHON, "-m", "app", "--model-uri", f"models:/{name}@champion", "--port", "{port}"]
    with server_process(args, env=env, ready_path="/health/live") as (base, _):
        r = httpx.get(f"{base}/health/ready")
        assert r.status_code == 503 and r.json()["status"] == "not ready"
        assert name in r.json()["reason"]
        r = httpx.post(
            f"{base}/invocations",
            content=booster_model.frame.to_json(orient="split"),
            headers={"content-type": "application/json"},
        )
        assert r.status_code == 503 and r.json()["error_code"] == "MODEL_NOT_READY"
        client.create_registered_model(name)
        mv = client.create_model_version(
            name, f"models:/{booster_model.model_id}", run_id=booster_model.run_id
        )
        client.set_registered_model_alias(name, "champion", mv.version)
        deadline = time.monotonic() + 90
        while httpx.get(f"{base}/health/ready").status_code != 200:
            assert time.monotonic() < deadline, "never became ready"
            time.sleep(0.3)
        r = httpx.post(
            f"{base}/invocations",
            content=booster_model.frame.to_json(orient="split"),
            headers={"content-type": "application/json"},
        )
        np.testing.assert_allclose(r.json()["predictions"], booster_model.expected, atol=1e-12)


def test_the_server_entry_answers_as_the_app(booster_model: LoggedModel) -> None:
    """``serve_app`` hands the server a ``ServerEntry``: HTTP requests go straight to the
    app's middleware stack. The answers are the app's own: the hot path (canonical and not),
    FastAPI's routes, a refusal, a 404; the request context ran (request id, metrics)."""
    body = pd.DataFrame([ROW, ROW], columns=FEATURES).to_json(orient="split")
    json_ = {"content-type": "application/json"}
    cases = [
        ("POST", "/invocations", body, json_),
        ("POST", "/invocations", split([ROW]), json_),
        ("POST", "/invocations", '{"columns": [', json_),
        ("POST", "/explain?top=2", body, json_),
        ("GET", "/model", None, {}),
        ("GET", "/health/ready", None, {}),
        ("GET", "/nowhere", None, {}),
    ]  # fmt: skip
    app = create_app(Settings(model_uri="models:/santander@champion"))
    with TestClient(ServerEntry(app)) as entry:  # the lifespan through the app itself
        plain = TestClient(app)  # the same app, straight in
        for method, path, body, headers in cases:
            ours = entry.request(method, path, content=body, headers=headers)
            theirs = plain.request(method, path, content=body, headers=headers)
            assert ours.status_code == theirs.status_code, path
            assert ours.content == theirs.content or path == "/model", path
            assert ours.headers["x-request-id"], path
            skip = {"x-request-id", "date", *(["content-length"] if path == "/model" else [])}
            assert {k: v for k, v in ours.headers.items() if k not in skip} == {
                k: v for k, v in theirs.headers.items() if k not in skip
            }, path
        text = entry.get("/metrics").text
        assert 'http_requests_total{method="POST",route="/invocations",status="200"} 4.0' in text


def test_a_worker_writes_its_last_figures_as_it_stops(
    booster_model: LoggedModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With several workers a worker writes its figures to the shared files a moment after
    its answers (``FLUSH_SECONDS``); a worker stopping within that moment still writes them."""
    monkeypatch.setattr(observability, "FLUSH_SECONDS", 60.0)  # not due before the stop
    app = create_app(Settings(model_uri="models:/santander@champion"))
    metrics = app.state.metrics
    metrics.tally.immediate = True  # as with several workers
    body = pd.DataFrame([ROW], columns=FEATURES).to_json(orient="split")
    series = metrics.requests.labels("/invocations", "POST", "200")
    with TestClient(app) as client:
        for _ in range(3):
            r = client.post(
                "/invocations", content=body, headers={"content-type": "application/json"}
            )
            assert r.status_code == 200
        assert series._value.get() == 0  # kept: due in a minute
    assert series._value.get() == 3
