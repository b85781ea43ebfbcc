"""MLflow's own client code against a real server process: it must work unchanged.

``ScoringServerClient`` (what ``mlflow models serve`` users script against), MLflow's serving
example conversion, the model's own logged serving example, and the cases of MLflow's
``tests/pyfunc/test_scoring_server.py`` that apply to a tabular float model.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow.models import convert_input_example_to_serving_input
from mlflow.pyfunc.scoring_server.client import ScoringServerClient

from tests.conftest import LoggedModel
from tests.helpers import FEATURES, PYTHON, server_process


@pytest.fixture(scope="module")
def server(booster_model: LoggedModel) -> Iterator[str]:
    args = [PYTHON, "-m", "app", "--model-uri", booster_model.model_uri, "--port", "{port}"]
    with server_process(args, env={"COMPILED_PREDICTOR": "false"}) as (base, _):
        yield base


@pytest.fixture(scope="module")
def mlflow_client(server: str) -> ScoringServerClient:
    host, port = server.removeprefix("http://").split(":")
    client = ScoringServerClient(host, int(port))
    client.wait_server_ready(timeout=30)
    return client


@pytest.fixture(scope="module")
def booster(booster_model: LoggedModel):  # type: ignore[no-untyped-def]
    return mlflow.lightgbm.load_model(booster_model.model_uri)


def test_invoke_with_missing_values(
    mlflow_client: ScoringServerClient, booster_model: LoggedModel, booster
) -> None:
    frame = booster_model.frame.copy()
    frame.iloc[0, 0] = np.nan  # MLflow's client writes these as bare NaN tokens
    assert frame.isna().to_numpy().sum() == 2
    got = mlflow_client.invoke(frame).get_predictions()
    np.testing.assert_allclose(
        np.asarray(got).ravel(), booster.predict(frame.to_numpy()), rtol=0, atol=1e-12
    )


def test_invoke_with_params(
    mlflow_client: ScoringServerClient, booster_model: LoggedModel, booster
) -> None:
    frame = booster_model.frame.head(3)
    got = mlflow_client.invoke(frame, params={"threshold": 0.5}).get_predictions()
    np.testing.assert_allclose(
        np.asarray(got).ravel(), booster.predict(frame.to_numpy()), rtol=0, atol=1e-12
    )


def test_get_version_is_the_mlflow_version(mlflow_client: ScoringServerClient) -> None:
    assert mlflow_client.get_version() == mlflow.__version__


def test_serving_input_conversion_and_the_logged_example(
    server: str, booster_model: LoggedModel, booster, tmp_path: Path
) -> None:
    frame = booster_model.frame.head(4).copy()
    frame.iloc[1, 2] = np.nan
    body = convert_input_example_to_serving_input(frame)
    assert body is not None and "NaN" in body
    r = httpx.post(
        f"{server}/invocations", content=body, headers={"content-type": "application/json"}
    )
    assert r.status_code == 200, r.text
    np.testing.assert_allclose(
        r.json()["predictions"], booster.predict(frame.to_numpy()), rtol=0, atol=1e-12
    )
    # The serving example MLflow logged beside the model, sent as it is.
    local = Path(mlflow.artifacts.download_artifacts(booster_model.model_uri, dst_path=tmp_path))
    example = (local / "serving_input_example.json").read_text()
    r = httpx.post(
        f"{server}/invocations", content=example, headers={"content-type": "application/json"}
    )
    assert r.status_code == 200, r.text
    assert len(r.json()["predictions"]) == 2


# --- MLflow's tests/pyfunc/test_scoring_server.py, the cases for a tabular float model ---------


def _post(server: str, body: str, content_type: str = "application/json") -> httpx.Response:
    return httpx.post(f"{server}/invocations", content=body, headers={"content-type": content_type})


def test_malformed_json_is_400(server: str) -> None:
    r = _post(server, "this is,,,, not valid json")
    assert r.status_code == 400 and r.json()["error_code"] == "MALFORMED_REQUEST"


@pytest.mark.parametrize("body", [1, "1", [1]])
def test_json_that_is_not_an_object_is_400(server: str, body: object) -> None:
    r = _post(server, json.dumps(body))
    assert r.status_code == 400 and "must be an object" in r.json()["message"]


@pytest.mark.parametrize(
    "body",
    [{"not": "a serialized dataframe"}, {"dataframe_records": [], "dataframe_split": {"data": []}}],
)
def test_not_exactly_one_input_field_is_refused(server: str, body: object) -> None:
    r = _post(server, json.dumps(body))
    assert r.status_code == 422 and r.json()["error_code"] == "INVALID_INPUT"


def test_records_and_split_the_wrong_way_round_are_refused(
    server: str, booster_model: LoggedModel
) -> None:
    frame = booster_model.frame.head(2)
    wrong_split = _post(server, json.dumps({"dataframe_split": frame.to_dict(orient="records")}))
    wrong_records = _post(server, json.dumps({"dataframe_records": frame.to_dict(orient="split")}))
    for r in (wrong_split, wrong_records):
        assert r.status_code == 422 and r.json()["error_code"] == "INVALID_INPUT", r.text


def test_invalid_dataframe_is_refused(server: str) -> None:
    body = {"dataframe_split": {"index": [1, 2], "data": [[1], [2], [3]]}}
    r = _post(server, json.dumps(body))
    assert r.status_code == 422 and "columns' is required" in r.json()["message"]


def test_incompatible_dataframe_is_refused(server: str) -> None:
    frame = pd.DataFrame(np.array(range(10)))
    body = convert_input_example_to_serving_input(frame)
    assert body is not None
    r = _post(server, body)
    assert r.status_code == 422


def test_empty_csv_is_400(server: str) -> None:
    r = _post(server, "", "text/csv")
    assert r.status_code == 400 and r.json()["error_code"] == "MALFORMED_REQUEST"


@pytest.mark.parametrize("content_type", ["application/json", "application/json; charset=UTF-8"])
def test_records_and_split_orientations_score(
    server: str, booster_model: LoggedModel, content_type: str
) -> None:
    frame = booster_model.frame.head(5)
    for body in (
        {"dataframe_records": frame.to_dict(orient="records")},
        {"dataframe_split": frame.to_dict(orient="split")},
        {"instances": frame.to_numpy().tolist()},
        {"inputs": frame.to_dict(orient="list")},
    ):
        r = _post(server, json.dumps(body), content_type)
        assert r.status_code == 200, r.text
        assert len(r.json()["predictions"]) == 5


@pytest.mark.parametrize(
    ("content_type", "fragment"),
    [
        ("not_a_supported_content_type", "not supported"),
        ("application/json; something=something", "'something'"),
        ("application/json; charset=latin-1", "UTF-8"),
    ],
)
def test_content_types_mlflow_refuses_are_415(
    server: str, content_type: str, fragment: str
) -> None:
    r = _post(server, json.dumps({"columns": FEATURES, "data": [[0.5] * 200]}), content_type)
    assert r.status_code == 415 and fragment in r.json()["message"]


@pytest.mark.parametrize("fmt", ["pandas-split", "pandas-records"])
def test_mlflow_1x_format_parameter_still_works(
    server: str, booster_model: LoggedModel, booster, fmt: str
) -> None:
    frame = booster_model.frame.head(3)
    body = frame.to_json(orient=fmt.removeprefix("pandas-"))
    r = _post(server, body, f"application/json; format={fmt}")
    assert r.status_code == 200, r.text
    np.testing.assert_allclose(
        r.json()["predictions"], booster.predict(frame.to_numpy()), rtol=0, atol=1e-12
    )
