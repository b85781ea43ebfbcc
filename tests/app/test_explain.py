"""POST /explain: LightGBM's own contributions, adding up to the logit of what /invocations
serves, reason codes, and the very same refusals as /invocations."""

from __future__ import annotations

import json

import mlflow
import numpy as np
import pytest
from fastapi.testclient import TestClient
from mlflow.models import infer_signature
from scipy.special import logit

from app.config import Settings
from app.main import create_app
from tests.app.test_pyfunc_fallback import MeanOfTwo
from tests.conftest import LoggedModel
from tests.contract_cases import ACCEPTED, JSON, REFUSED, ROW, split
from tests.helpers import FEATURES, make_frame


@pytest.fixture(scope="module", autouse=True)
def _engines_decided(client: TestClient, classifier_client: TestClient) -> None:
    """The served models' explanation engines built before the tests compare answers across
    calls: else the first calls get LightGBM's (while the fast engine builds), later ones the
    engine's, equal only to the last bits. The switch itself is held by
    ``test_the_fast_engine_is_built_on_the_first_explanation_unless_asked_at_load``."""
    for each in (client, classifier_client):
        each.app.state.holder.current.predictor.prepare_explanations()  # type: ignore[attr-defined]


def _post(client: TestClient, path: str, frame_json: str, **params: object):  # type: ignore[no-untyped-def]
    return client.post(path, content=frame_json, headers=JSON, params=params)


@pytest.mark.parametrize("rows", [1, 50])  # one row scores on the loop, 50 in a thread
def test_contributions_are_lightgbms_and_add_up_to_the_served_logit(
    client: TestClient, booster_model: LoggedModel, rows: int
) -> None:
    frame = booster_model.frame.iloc[:rows] if rows > 1 else booster_model.frame.iloc[3:4]
    assert frame.isna().to_numpy().any()  # a missing value among the rows
    body = frame.to_json(orient="split")
    r = _post(client, "/explain", body)
    assert r.status_code == 200, r.text[:300]
    answer = r.json()
    assert set(answer) == {"predictions", "base_value", "features", "contributions"}
    assert answer["features"] == FEATURES
    contributions = np.array(answer["contributions"])
    assert contributions.shape == (rows, len(FEATURES))

    booster = mlflow.lightgbm.load_model(booster_model.model_uri)
    native = booster.predict(frame.to_numpy(), pred_contrib=True)
    np.testing.assert_allclose(contributions, native[:, :-1], rtol=0, atol=1e-9)
    assert answer["base_value"] == pytest.approx(native[0, -1], abs=1e-12)

    served = np.array(_post(client, "/invocations", body).json()["predictions"])
    np.testing.assert_array_equal(answer["predictions"], served)
    sums = answer["base_value"] + contributions.sum(axis=1)
    np.testing.assert_allclose(sums, logit(served), rtol=0, atol=1e-9)


def test_top_k_reasons_are_ordered_and_consistent(
    client: TestClient, booster_model: LoggedModel
) -> None:
    frame = booster_model.frame.iloc[:10]
    r = _post(client, "/explain", frame.to_json(orient="split"), top=4)
    assert r.status_code == 200, r.text[:300]
    answer = r.json()
    for row, listed in enumerate(answer["reasons"]):
        weights = np.array(answer["contributions"][row])
        assert 0 < len(listed) <= 4
        magnitudes = [abs(reason["contribution"]) for reason in listed]
        assert magnitudes == sorted(magnitudes, reverse=True)
        assert magnitudes[0] == np.abs(weights).max()
        for reason in listed:
            assert set(reason) == {"feature", "value", "contribution"}
            j = FEATURES.index(reason["feature"])
            assert reason["contribution"] == weights[j]
            value = frame.iloc[row, j]
            assert reason["value"] == (None if np.isnan(value) else value)
    # The same row alone has the same reasons: nothing depends on the other rows. (To the last
    # bits only up to the order of the additions: which engine answers, LightGBM while the fast
    # one builds, and how the trees are split among threads, differ between the two calls.)
    alone = _post(client, "/explain", frame.iloc[2:3].to_json(orient="split"), top=4).json()
    ours, batch = alone["reasons"][0], answer["reasons"][2]
    assert [(r["feature"], r["value"]) for r in ours] == [(r["feature"], r["value"]) for r in batch]
    np.testing.assert_allclose(
        [r["contribution"] for r in ours], [r["contribution"] for r in batch], rtol=0, atol=1e-12
    )


def test_top_is_checked(client: TestClient) -> None:
    body = split([ROW])
    for bad in ("0", "-1", "x"):
        r = client.post("/explain", content=body, headers=JSON, params={"top": bad})
        assert r.status_code == 422 and r.json()["error_code"] == "INVALID_INPUT", bad
    r = client.post("/explain", content=body, headers=JSON, params={"top": 5000})
    assert r.status_code == 200 and len(r.json()["reasons"][0]) <= len(FEATURES)


def test_classifier_model_is_explained(
    classifier_client: TestClient, classifier_model: LoggedModel
) -> None:
    body = classifier_model.frame.iloc[:5].to_json(orient="split")
    answer = _post(classifier_client, "/explain", body, top=3).json()
    clf = mlflow.lightgbm.load_model(classifier_model.model_uri)
    native = clf.booster_.predict(classifier_model.frame.iloc[:5].to_numpy(), pred_contrib=True)
    np.testing.assert_allclose(answer["contributions"], native[:, :-1], rtol=0, atol=1e-9)
    sums = answer["base_value"] + np.sum(answer["contributions"], axis=1)
    served = _post(classifier_client, "/invocations", body).json()["predictions"]
    np.testing.assert_allclose(sums, logit(served), rtol=0, atol=1e-9)
    np.testing.assert_allclose(served, classifier_model.expected[:5], rtol=0, atol=1e-12)
    assert all(len(r) == 3 for r in answer["reasons"])


@pytest.mark.parametrize("which", ["client", "classifier_client"])
def test_the_fast_engine_explains_the_served_models(
    which: str, request: pytest.FixtureRequest
) -> None:
    """Both served models are explained by ``scoring.treeshap`` (the tests above hold its
    answers to LightGBM's) once built."""
    client: TestClient = request.getfixturevalue(which)
    predictor = client.app.state.holder.current.predictor  # type: ignore[attr-defined]
    predictor.prepare_explanations()  # waits for a build under way, or builds
    assert predictor.explainer_note.startswith("fast TreeSHAP explains"), predictor.explainer_note


@pytest.mark.parametrize("at_load", [False, True])
def test_the_fast_engine_is_built_on_the_first_explanation_unless_asked_at_load(
    booster_model: LoggedModel, at_load: bool
) -> None:
    """By default a model spends nothing on explanations until the first ``/explain``, which
    LightGBM answers while the fast engine builds in the background; both answers are the
    same contributions. ``EXPLAIN_AT_LOAD`` builds it as the model loads."""
    # No compiled trees: their background compile would remeasure the budget too.
    settings = Settings(
        model_uri=booster_model.model_uri, explain_at_load=at_load, compiled_predictor=False
    )
    body = booster_model.frame.iloc[:3].to_json(orient="split")
    native = mlflow.lightgbm.load_model(booster_model.model_uri).predict(
        booster_model.frame.iloc[:3].to_numpy(), pred_contrib=True
    )
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        predictor = client.app.state.holder.current.predictor  # type: ignore[attr-defined]
        if at_load:
            assert predictor.explaining is not None  # started as the model loaded
        else:
            assert predictor.explaining is None
            card = client.get("/model").json()
            assert card["explainer"] == "decided by the first explanation"
        memory = client.app.state.admission.memory  # type: ignore[attr-defined]
        remeasured = []
        memory.remeasure = lambda: remeasured.append(1)  # what the budget counts from
        first = _post(client, "/explain", body)
        assert first.status_code == 200, first.text[:300]
        assert predictor.explaining is not None
        predictor.explaining.join(120)
        client.get("/health/live")  # the loop has run the remeasure the build asked for
        if not at_load:
            assert remeasured, "the engine's memory was not counted in the budget"
        assert client.get("/model").json()["explainer"].startswith("fast TreeSHAP explains")
        second = _post(client, "/explain", body).json()
    for answer in (first.json(), second):
        np.testing.assert_allclose(answer["contributions"], native[:, :-1], rtol=0, atol=1e-9)


HOSTILE = {name: (c.body, c.headers) for name, c in REFUSED.items()}
HOSTILE["too many rows"] = (split([ROW] * 1001), JSON)
HOSTILE["body too large"] = (split([ROW]) + " " * 2_000_001, JSON)


@pytest.mark.parametrize("name", list(HOSTILE))
def test_every_refusal_of_invocations_is_the_same_on_explain(client: TestClient, name: str) -> None:
    body, headers = HOSTILE[name]
    scored = client.post("/invocations", content=body, headers=headers)
    explained = client.post("/explain", content=body, headers=headers)
    assert 400 <= scored.status_code < 500
    assert explained.status_code == scored.status_code, explained.text[:300]
    assert explained.json() == scored.json()
    case = REFUSED.get(name)
    if case is not None:
        assert explained.json()["error_code"] == case.code


@pytest.mark.parametrize("name", list(ACCEPTED))
def test_every_accepted_body_is_explained(client: TestClient, name: str) -> None:
    case = ACCEPTED[name]
    scored = client.post("/invocations", content=case.body, headers=case.headers)
    explained = client.post("/explain", content=case.body, headers=case.headers)
    assert explained.status_code == 200, explained.text[:300]
    answer = explained.json()
    assert answer["predictions"] == scored.json()["predictions"]
    sums = answer["base_value"] + np.sum(answer["contributions"], axis=1)
    np.testing.assert_allclose(sums, logit(answer["predictions"]), rtol=0, atol=1e-9)


def test_a_pyfunc_model_gets_a_clear_4xx(tracking_dir) -> None:  # type: ignore[no-untyped-def]
    frame, _ = make_frame(4, seed=41)
    with mlflow.start_run() as run:
        mlflow.pyfunc.log_model(
            name="model",
            python_model=MeanOfTwo(),
            signature=infer_signature(frame, MeanOfTwo().predict(None, frame)),
            pip_requirements=["mlflow"],
        )
    settings = Settings(model_uri=run.info.run_id, allow_untrusted_models=True)
    with TestClient(create_app(settings)) as client:
        body = frame.to_json(orient="split")
        assert _post(client, "/invocations", body).status_code == 200
        r = _post(client, "/explain", body, top=3)
        assert r.status_code == 422
        assert r.json()["error_code"] == "EXPLANATIONS_UNAVAILABLE"
        assert "python_function" in r.json()["message"]
        assert "LightGBM" in r.json()["message"]


def test_published_in_openapi_and_counted_in_metrics(client: TestClient) -> None:
    schema = client.get("/openapi.json").json()
    post = schema["paths"]["/explain"]["post"]
    assert post["requestBody"] == schema["paths"]["/invocations"]["post"]["requestBody"]
    assert "split" in post["requestBody"]["content"]["application/json"]["examples"]
    ok = post["responses"]["200"]["content"]["application/json"]["schema"]
    assert ok == {"$ref": "#/components/schemas/Explanation"}
    published = schema["components"]["schemas"]["Explanation"]
    assert {"predictions", "base_value", "features", "contributions", "reasons"} <= set(
        published["properties"]
    )
    assert "example" in published
    assert "EXPLANATIONS_UNAVAILABLE" in post["responses"]["422"]["description"]
    assert any(p["name"] == "top" for p in post["parameters"])

    client.post("/explain", content=split([ROW]), headers=JSON)
    metrics = client.get("/metrics").text
    assert 'http_requests_total{method="POST",route="/explain",status="200"}' in metrics
    assert 'http_request_duration_seconds_count{route="/explain"}' in metrics


def test_answer_is_plain_json(client: TestClient) -> None:
    """NaN never leaks into the JSON: a missing input value is null in the reasons."""
    row = list(ROW)
    row[0] = None  # type: ignore[call-overload]
    r = client.post("/explain", content=split([row]), headers=JSON, params={"top": 200})
    assert r.status_code == 200
    answer = json.loads(r.text, parse_constant=pytest.fail)  # no NaN or Infinity tokens
    values = {reason["feature"]: reason["value"] for reason in answer["reasons"][0]}
    assert values and all(v == 0.5 for k, v in values.items() if k != "var_0")
    assert values.get("var_0") is None


def test_both_doors_give_the_same_answers(client: TestClient) -> None:
    """A plain ``top=K`` query is answered below FastAPI (``app.hotpath``); any other query goes
    through FastAPI's route and its validation: the same answers either way."""

    def counted(status: int) -> float:
        series = f'http_requests_total{{method="POST",route="/explain",status="{status}"}} '
        lines = client.get("/metrics").text.splitlines()
        return sum(float(line.removeprefix(series)) for line in lines if line.startswith(series))

    before = counted(200), counted(422)
    body = split([ROW, ROW])
    hot = client.post("/explain?top=3", content=body, headers=JSON)
    routed = client.post("/explain?top=3&unused=1", content=body, headers=JSON)
    assert hot.status_code == routed.status_code == 200
    assert hot.json() == routed.json()
    assert len(hot.json()["reasons"][0]) == 3
    plain = client.post("/explain", content=body, headers=JSON).json()
    assert "reasons" not in plain and plain["contributions"] == hot.json()["contributions"]
    for query in ("top=0", "top=abc", "top=10001", "top=", "top=-1"):
        r = client.post(f"/explain?{query}", content=body, headers=JSON)
        assert r.status_code == 422, (query, r.text)
        assert "top" in r.json()["message"], r.json()
    assert (counted(200), counted(422)) == (before[0] + 3, before[1] + 5)
