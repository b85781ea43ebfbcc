"""Metrics, request ids, admin auth, CORS and docs switches, in process on the real model."""

from __future__ import annotations

import re

import pytest
from fastapi.testclient import TestClient

from app.model_holder import ModelHolder
from tests.conftest import LoggedModel
from tests.production.conftest import ADMIN_TOKEN, make_app

JSON = {"content-type": "application/json"}


def metric(text: str, name: str, **labels: str) -> float:
    """The value of one sample in Prometheus text, 0 if absent."""
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


@pytest.fixture
def client(loaded_holder: ModelHolder):  # type: ignore[no-untyped-def]
    with TestClient(make_app(loaded_holder), raise_server_exceptions=False) as c:
        yield c


def test_metrics_count_requests_rows_and_probabilities(
    client: TestClient, booster_model: LoggedModel
) -> None:
    body = booster_model.frame.to_json(orient="split")
    for _ in range(3):
        assert client.post("/invocations", content=body, headers=JSON).status_code == 200
    assert client.post("/invocations", content=b"{", headers=JSON).status_code == 400
    text = client.get("/metrics").text
    rows = 3 * len(booster_model.frame)
    assert metric(text, "http_requests_total", route="/invocations", status="200") == 3
    assert metric(text, "http_requests_total", route="/invocations", status="400") == 1
    assert metric(text, "http_request_duration_seconds_count", route="/invocations") == 4
    assert metric(text, "rows_scored_total") == rows
    assert metric(text, "prediction_probability_count") == rows
    # The histogram's buckets agree with the predictions themselves.
    below_half = 3 * int((booster_model.expected <= 0.5).sum())
    assert metric(text, "prediction_probability_bucket", le="0.5") == below_half
    assert metric(text, "prediction_probability_sum") == pytest.approx(
        3 * booster_model.expected.sum()
    )
    info = [ln for ln in text.splitlines() if ln.startswith("model_info{")]
    assert any(booster_model.run_id in ln and ln.endswith(" 1.0") for ln in info)
    assert metric(text, "model_load_seconds") >= 0


def test_request_id_is_kept_or_made(client: TestClient) -> None:
    r = client.get("/health/live", headers={"X-Request-ID": "client-id-42"})
    assert r.headers["x-request-id"] == "client-id-42"
    made = client.get("/health/live").headers["x-request-id"]
    assert re.fullmatch(r"[0-9a-f]{32}", made)
    # A header that could forge log lines is replaced, not echoed.
    r = client.get("/health/live", headers={"X-Request-ID": "bad id\twith tab"})
    assert r.headers["x-request-id"] != "bad id\twith tab"


def test_the_hot_paths_answers_carry_the_request_id(
    client: TestClient, booster_model: LoggedModel
) -> None:
    """The request context sends the hot path's answers itself: a score, a refusal of the
    body and one of the media type all keep the caller's id and are counted by status."""
    body = booster_model.frame.head(1).to_json(orient="split")
    cases = [(body, JSON, 200), ("{", JSON, 400), (body, {"Content-Type": "text/plain"}, 415)]
    for i, (content, headers, status) in enumerate(cases):
        r = client.post(
            "/invocations", content=content, headers={**headers, "X-Request-ID": f"h{i}"}
        )
        assert (r.status_code, r.headers["x-request-id"]) == (status, f"h{i}")
        assert r.headers["content-type"] == "application/json"
        assert int(r.headers["content-length"]) == len(r.content)
    assert (
        client.post("/explain", content=body, headers={**JSON, "X-Request-ID": "e"}).headers[
            "x-request-id"
        ]
        == "e"
    )
    text = client.get("/metrics").text
    for status in (200, 400, 415):
        assert metric(text, "http_requests_total", route="/invocations", status=str(status)) >= 1


def test_admin_routes_need_the_token(client: TestClient) -> None:
    assert client.post("/admin/reload").status_code == 401
    r = client.post("/admin/reload", headers={"Authorization": "Bearer wrong"})
    assert r.status_code == 401 and r.json()["error_code"] == "UNAUTHORIZED"
    assert ADMIN_TOKEN not in r.text
    r = client.post("/admin/reload", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
    assert r.status_code == 200 and r.json()["status"] in {"unchanged", "reloaded"}


def test_admin_routes_are_off_without_a_token(loaded_holder: ModelHolder) -> None:
    app = make_app(loaded_holder, admin_token=None)
    with TestClient(app) as c:
        r = c.post("/admin/reload", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
        assert r.status_code == 404


def test_cors_is_off_unless_configured(
    loaded_holder: ModelHolder, booster_model: LoggedModel
) -> None:
    origin = {"Origin": "https://example.test"}
    with TestClient(make_app(loaded_holder)) as c:
        assert "access-control-allow-origin" not in c.get("/health/live", headers=origin).headers
    with TestClient(make_app(loaded_holder, cors_origins=["https://example.test"])) as c:
        r = c.get("/health/live", headers=origin)
        assert r.headers["access-control-allow-origin"] == "https://example.test"
        # The hot path (in front of FastAPI's stack) answers inside CORS too.
        body = booster_model.frame.head(1).to_json(orient="split")
        r = c.post("/invocations", content=body, headers={**JSON, **origin})
        assert r.status_code == 200
        assert r.headers["access-control-allow-origin"] == "https://example.test"


def test_an_unexpected_error_on_the_hot_path_is_a_json_500(
    loaded_holder: ModelHolder, booster_model: LoggedModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The hot path sits in front of FastAPI's error layer: a bug there still gets the app's
    JSON 500 (no traceback, no payload), its request id and its access line."""
    import app.hotpath

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("a bug, not the client's doing")

    monkeypatch.setattr(app.hotpath, "handle", broken)
    body = booster_model.frame.head(1).to_json(orient="split")
    with TestClient(make_app(loaded_holder), raise_server_exceptions=False) as c:
        r = c.post("/invocations", content=body, headers={**JSON, "X-Request-ID": "bug-1"})
        assert r.status_code == 500
        assert r.json() == {
            "error_code": "INTERNAL_ERROR",
            "message": "internal error; see the server log",
        }
        assert r.headers["x-request-id"] == "bug-1"
        text = c.get("/metrics").text
        assert metric(text, "http_requests_total", route="/invocations", status="500") == 1


def test_docs_can_be_turned_off(loaded_holder: ModelHolder) -> None:
    with TestClient(make_app(loaded_holder, enable_docs=False)) as c:
        assert c.get("/docs").status_code == 404
        assert c.get("/openapi.json").status_code == 404
        assert c.get("/health/ready").status_code == 200


def test_in_flight_limit_sheds_load(loaded_holder: ModelHolder, booster_model: LoggedModel) -> None:
    app = make_app(loaded_holder, max_in_flight=1)
    with TestClient(app) as c:
        app.state.in_flight.count = 1  # one request already scoring
        r = c.post(
            "/invocations", content=booster_model.frame.to_json(orient="split"), headers=JSON
        )
        assert r.status_code == 503 and r.json()["error_code"] == "OVERLOADED"
        assert r.headers["retry-after"]
        app.state.in_flight.count = 0
        assert (
            c.post(
                "/invocations", content=booster_model.frame.to_json(orient="split"), headers=JSON
            ).status_code
            == 200
        )
        assert metric(c.get("/metrics").text, "requests_shed_total") == 1


def test_scoring_time_limit_answers_504(
    loaded_holder: ModelHolder, booster_model: LoggedModel
) -> None:
    import time

    class Slow:
        features = loaded_holder.require().predictor.features
        flavor = "test"

        def predict(self, x, threads):  # type: ignore[no-untyped-def]
            time.sleep(1.5)
            return loaded_holder.require().predictor.predict(x, threads)

    holder = ModelHolder("memory")
    from scoring.loading import LoadedModel

    holder.current = LoadedModel(predictor=Slow(), uri="memory")
    from app.config import Settings
    from app.main import create_app

    settings = Settings(model_uri=None, request_timeout_seconds=0.3, inline_body_bytes=0)
    app = create_app(settings, holder=holder)
    with TestClient(app) as c:
        r = c.post(
            "/invocations", content=booster_model.frame.to_json(orient="split"), headers=JSON
        )
        assert r.status_code == 504 and r.json()["error_code"] == "TIMEOUT"
        assert app.state.in_flight.count == 1  # the work is still counted until it ends
        time.sleep(1.5)
        assert app.state.in_flight.count == 0
