"""The V2 routes under the service's limits, in process: shedding (503 + Retry-After), the scoring
time limit (504), no model yet (503 on readiness and inference), and the default model name of
a model served without a registered name."""

from __future__ import annotations

import json
import threading
from typing import Any

import numpy as np
from fastapi.testclient import TestClient

from app.config import Settings
from app.main import create_app
from app.model_holder import ModelHolder
from scoring.loading import LoadedModel
from tests.conftest import LoggedModel
from tests.production.conftest import make_app
from tests.production.test_observability import metric


def matrix(rows: np.ndarray) -> str:
    data = [None if np.isnan(v) else float(v) for v in rows.ravel()]
    tensor = {"name": "x", "shape": list(rows.shape), "datatype": "FP64", "data": data}
    return json.dumps({"inputs": [tensor]})


def test_v2_infer_is_shed_like_invocations(
    loaded_holder: ModelHolder, booster_model: LoggedModel
) -> None:
    app = make_app(loaded_holder, max_in_flight=1)
    body = matrix(booster_model.frame.to_numpy())
    with TestClient(app) as c:
        app.state.in_flight.count = 1  # one request already scoring
        r = c.post("/v2/models/model/infer", content=body)
        assert r.status_code == 503 and r.json()["error_code"] == "OVERLOADED"
        assert "in progress" in r.json()["error"] and r.headers["retry-after"]
        app.state.in_flight.count = 0
        r = c.post("/v2/models/model/infer", content=body)
        assert r.status_code == 200, r.text
        (output,) = r.json()["outputs"]
        np.testing.assert_allclose(output["data"], booster_model.expected, rtol=0, atol=1e-12)
        assert metric(c.get("/metrics").text, "requests_shed_total") == 1


def test_unregistered_model_answers_to_the_default_name(
    loaded_holder: ModelHolder, booster_model: LoggedModel
) -> None:
    # The holder serves a runs:/ URI: no registered name, so the documented default "model".
    with TestClient(make_app(loaded_holder)) as c:
        meta = c.get("/v2/models/model").json()
        assert meta["name"] == "model" and meta["versions"] == []
        assert c.get("/v2/models/model/ready").json() == {"name": "model", "ready": True}
        r = c.get("/v2/models/santander")
        assert r.status_code == 404 and "'model'" in r.json()["error"]
        assert c.get("/v2/models/model/versions/1").status_code == 404


def test_v2_scoring_time_limit_answers_504(
    loaded_holder: ModelHolder, booster_model: LoggedModel
) -> None:
    release = threading.Event()
    real = loaded_holder.require().predictor

    class Blocked:
        features = real.features
        flavor = "test"

        def predict(self, x: np.ndarray, threads: int) -> Any:
            release.wait(60)  # holds its slot until the test lets it go
            return real.predict(x, threads)

    holder = ModelHolder("memory")
    holder.current = LoadedModel(predictor=Blocked(), uri="memory")
    settings = Settings(model_uri=None, request_timeout_seconds=0.2, inline_body_bytes=0)
    app = create_app(settings, holder=holder)
    with TestClient(app) as c:
        r = c.post("/v2/models/model/infer", content=matrix(booster_model.frame.to_numpy()))
        assert r.status_code == 504 and r.json()["error_code"] == "TIMEOUT"
        assert "longer than" in r.json()["error"]
        assert app.state.in_flight.count == 1  # the work is still counted until it ends
        release.set()


def test_no_model_yet_is_503_for_its_name_and_404_for_others(booster_model: LoggedModel) -> None:
    def failing(uri: str) -> LoadedModel:
        from scoring.errors import ModelLoadError

        raise ModelLoadError(uri, "registry down")

    holder = ModelHolder("models:/santander@champion", loader=failing)
    settings = Settings(
        model_uri="models:/santander@champion", model_load_retry=True, model_retry_max_seconds=60
    )
    with TestClient(create_app(settings, holder=holder)) as c:
        assert c.get("/v2/health/live").status_code == 200
        r = c.get("/v2/health/ready")
        assert r.status_code == 503 and r.json() == {"ready": False}
        assert c.get("/v2/models/santander/ready").status_code == 503
        r = c.post("/v2/models/santander/infer", content=matrix(booster_model.frame.to_numpy()))
        assert r.status_code == 503 and r.json()["error_code"] == "MODEL_NOT_READY"
        assert c.get("/v2/models/other/ready").status_code == 404
