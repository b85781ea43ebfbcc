"""The Open Inference Protocol (KServe V2) routes, against a real server process (``python -m
app``), with Triton's own HTTP client (binary and JSON tensor data) and with plain HTTP.

Every answer is compared with what ``/invocations`` answers for the same rows, to 1e-12; every
hostile request gets its 4xx in the protocol's shape (``{"error": "..."}``) naming what is wrong.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pytest
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from tests.conftest import LoggedModel
from tests.helpers import FEATURES, PYTHON, server_process
from tests.production.test_observability import metric

MAX_ROWS = 100
MAX_BODY_BYTES = 1_000_000
HEADER = "Inference-Header-Content-Length"


@pytest.fixture(scope="module")
def server(booster_model: LoggedModel) -> Iterator[str]:
    args = [PYTHON, "-m", "app", "--model-uri", "models:/santander@champion", "--port", "{port}"]
    env = {
        "COMPILED_PREDICTOR": "false",
        "MAX_ROWS": str(MAX_ROWS),
        "MAX_BODY_BYTES": str(MAX_BODY_BYTES),
    }
    with server_process(args, env=env) as (base, _):
        yield base


@pytest.fixture(scope="module")
def http(server: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server, timeout=60) as client:
        yield client


@pytest.fixture(scope="module")
def triton_client(server: str) -> Iterator[triton.InferenceServerClient]:
    client = triton.InferenceServerClient(url=server.removeprefix("http://"), network_timeout=60)
    yield client
    client.close()


def invocations(http: httpx.Client, frame: pd.DataFrame) -> np.ndarray:
    """What /invocations answers for these rows: the reference every V2 answer must equal."""
    r = http.post(
        "/invocations",
        content=frame.to_json(orient="split"),
        headers={"content-type": "application/json"},
    )
    assert r.status_code == 200, r.text
    return np.array(r.json()["predictions"], dtype=np.float64)


def matrix_request(frame: pd.DataFrame, **extra: Any) -> dict[str, Any]:
    values = frame.to_numpy()
    tensor = {"name": "input-0", "shape": list(values.shape), "datatype": "FP64"}
    data = [None if np.isnan(v) else float(v) for v in values.ravel()]
    return {"inputs": [{**tensor, "data": data}], **extra}


def column_request(frame: pd.DataFrame, order: list[str], **extra: Any) -> dict[str, Any]:
    inputs = [
        {
            "name": f,
            "shape": [len(frame)],
            "datatype": "FP64",
            "data": [None if np.isnan(v) else float(v) for v in frame[f]],
        }
        for f in order
    ]
    return {"parameters": {"content_type": "pd"}, "inputs": inputs, **extra}


def shuffled(seed: int = 7) -> list[str]:
    order = list(FEATURES)
    random.Random(seed).shuffle(order)
    return order


def predictions(body: dict[str, Any]) -> np.ndarray:
    (output,) = body["outputs"]
    assert output["name"] == "predictions" and output["datatype"] == "FP64"
    assert output["shape"] == [len(output["data"])]
    return np.array(output["data"], dtype=np.float64)


# --- tritonclient -----------------------------------------------------------------------------


def test_triton_health_and_metadata(
    triton_client: triton.InferenceServerClient, booster_model: LoggedModel
) -> None:
    assert triton_client.is_server_live()
    assert triton_client.is_server_ready()
    assert triton_client.is_model_ready("santander")
    assert triton_client.is_model_ready("santander", model_version=booster_model.version)
    assert not triton_client.is_model_ready("no-such-model")
    assert not triton_client.is_model_ready("santander", model_version="999")

    server = triton_client.get_server_metadata()
    assert server["name"] == "santander-serving" and "binary_tensor_data" in server["extensions"]

    for version in ("", booster_model.version):
        meta = triton_client.get_model_metadata("santander", model_version=version)
        assert meta["name"] == "santander"
        assert meta["versions"] == [booster_model.version]
        assert [i["name"] for i in meta["inputs"]] == FEATURES
        assert {(i["datatype"], tuple(i["shape"])) for i in meta["inputs"]} == {("FP64", (-1,))}
        assert meta["outputs"] == [{"name": "predictions", "datatype": "FP64", "shape": [-1]}]
    with pytest.raises(InferenceServerException) as err:
        triton_client.get_model_metadata("no-such-model")
    assert err.value.status() == "404" and "no-such-model" in err.value.message()


@pytest.mark.parametrize("binary_in", [True, False], ids=["binary-in", "json-in"])
@pytest.mark.parametrize("binary_out", [True, False, None], ids=["bin-out", "json-out", "default"])
def test_triton_matrix_equals_invocations(
    triton_client: triton.InferenceServerClient,
    http: httpx.Client,
    booster_model: LoggedModel,
    binary_in: bool,
    binary_out: bool | None,
) -> None:
    frame = booster_model.frame
    if not binary_in:  # Triton's client writes JSON with rapidjson, which refuses NaN
        frame = frame.dropna()
    x = frame.to_numpy()
    tensor = triton.InferInput("input-0", list(x.shape), "FP64")
    tensor.set_data_from_numpy(x, binary_data=binary_in)
    outputs = (
        None if binary_out is None else [triton.InferRequestedOutput("predictions", binary_out)]
    )
    result = triton_client.infer("santander", [tensor], outputs=outputs, request_id="r-1")
    got = result.as_numpy("predictions")
    assert got is not None and got.dtype == np.float64 and got.shape == (len(x),)
    np.testing.assert_allclose(got, invocations(http, frame), rtol=0, atol=1e-12)
    response = result.get_response()
    assert response["model_name"] == "santander" and response["id"] == "r-1"
    assert response["model_version"] == booster_model.version
    # binary out unless the client asked for JSON: then the numbers are in the JSON itself
    assert ("data" in response["outputs"][0]) is (binary_out is False)


def test_triton_versioned_infer_and_other_datatypes(
    triton_client: triton.InferenceServerClient, http: httpx.Client, booster_model: LoggedModel
) -> None:
    frame = booster_model.frame.dropna()
    for dtype, name in ((np.float32, "FP32"), (np.int64, "INT64"), (np.int32, "INT32")):
        x = (frame.to_numpy() if dtype is np.float32 else frame.to_numpy().round()).astype(dtype)
        reference = invocations(http, pd.DataFrame(x.astype(np.float64), columns=FEATURES))
        for binary in (True, False):
            tensor = triton.InferInput("x", list(x.shape), name)
            tensor.set_data_from_numpy(x, binary_data=binary)
            result = triton_client.infer("santander", [tensor], model_version=booster_model.version)
            got = result.as_numpy("predictions")
            assert got is not None
            np.testing.assert_allclose(got, reference, rtol=0, atol=1e-12)


@pytest.mark.parametrize("pd_parameter", [True, False], ids=["content_type-pd", "no-parameter"])
def test_triton_tensor_per_feature_in_any_order(
    triton_client: triton.InferenceServerClient,
    http: httpx.Client,
    booster_model: LoggedModel,
    pd_parameter: bool,
) -> None:
    frame = booster_model.frame
    inputs = []
    for name in shuffled():
        tensor = triton.InferInput(name, [len(frame)], "FP64")
        tensor.set_data_from_numpy(frame[name].to_numpy(), binary_data=True)
        inputs.append(tensor)
    parameters = {"content_type": "pd"} if pd_parameter else None
    result = triton_client.infer("santander", inputs, parameters=parameters)
    got = result.as_numpy("predictions")
    assert got is not None
    np.testing.assert_allclose(got, invocations(http, frame), rtol=0, atol=1e-12)


def test_triton_client_sees_the_errors(
    triton_client: triton.InferenceServerClient, booster_model: LoggedModel
) -> None:
    x = booster_model.frame.to_numpy()[:, :199]
    tensor = triton.InferInput("input-0", list(x.shape), "FP64")
    tensor.set_data_from_numpy(x)
    with pytest.raises(InferenceServerException) as err:
        triton_client.infer("santander", [tensor])
    assert err.value.status() == "422" and "[50, 199]" in err.value.message()
    with pytest.raises(InferenceServerException) as err:
        triton_client.infer("santander", [tensor], model_version="999")
    assert err.value.status() == "404" and "999" in err.value.message()
    bad = triton.InferInput("input-0", [1, 200], "FP64")
    bad.set_data_from_numpy(np.full((1, 200), np.inf))
    with pytest.raises(InferenceServerException) as err:
        triton_client.infer("santander", [bad])
    assert err.value.status() == "422" and "infinite" in err.value.message()


# --- plain HTTP -------------------------------------------------------------------------------


def test_health_metadata_over_http(http: httpx.Client, booster_model: LoggedModel) -> None:
    assert http.get("/v2/health/live").json() == {"live": True}
    assert http.get("/v2/health/ready").json() == {"ready": True}
    assert http.get("/v2/models/santander/ready").json() == {"name": "santander", "ready": True}
    version = booster_model.version
    r = http.get(f"/v2/models/santander/versions/{version}/ready")
    assert r.status_code == 200 and r.json()["ready"] is True
    server = http.get("/v2").json()
    assert set(server) == {"name", "version", "extensions"}
    meta = http.get(f"/v2/models/santander/versions/{version}").json()
    assert meta["platform"] == "lightgbm" and len(meta["inputs"]) == len(FEATURES)


def test_json_layouts_equal_invocations(http: httpx.Client, booster_model: LoggedModel) -> None:
    frame = booster_model.frame  # row 3 has a missing value: null in JSON
    reference = invocations(http, frame)
    np.testing.assert_allclose(reference, booster_model.expected, rtol=0, atol=1e-12)
    flat = matrix_request(frame, id="abc")
    nested = json.loads(json.dumps(flat))
    nested["inputs"][0]["data"] = (
        np.array(flat["inputs"][0]["data"], dtype=object).reshape(frame.shape).tolist()
    )
    nan_token = json.dumps(matrix_request(frame)).replace("null", "NaN")
    bodies = {
        "flat": json.dumps(flat),
        "nested": json.dumps(nested),
        "NaN token": nan_token,
        "pd": json.dumps(column_request(frame, shuffled())),
        "pd, [N, 1]": json.dumps(column_request(frame, FEATURES)).replace(
            f'"shape": [{len(frame)}]', f'"shape": [{len(frame)}, 1]'
        ),
    }
    for what, body in bodies.items():
        r = http.post("/v2/models/santander/infer", content=body)
        assert r.status_code == 200, (what, r.text)
        assert r.headers["content-type"] == "application/json"
        np.testing.assert_allclose(predictions(r.json()), reference, rtol=0, atol=1e-12)
    assert http.post("/v2/models/santander/infer", content=bodies["flat"]).json()["id"] == "abc"


def binary_body(header: dict[str, Any], *blobs: bytes) -> tuple[bytes, dict[str, str]]:
    text = json.dumps(header).encode()
    return text + b"".join(blobs), {HEADER: str(len(text))}


def test_binary_request_and_response_by_hand(
    http: httpx.Client, booster_model: LoggedModel
) -> None:
    frame = booster_model.frame
    x = frame.to_numpy()
    tensor = {"name": "x", "shape": list(x.shape), "datatype": "FP64"}
    header = {
        "inputs": [{**tensor, "parameters": {"binary_data_size": x.nbytes}}],
        "parameters": {"binary_data_output": True},
    }
    body, headers = binary_body(header, x.astype("<f8").tobytes())
    r = http.post("/v2/models/santander/infer", content=body, headers=headers)
    assert r.status_code == 200, r.text
    length = int(r.headers[HEADER])
    meta = json.loads(r.content[:length])
    assert meta["outputs"][0]["parameters"]["binary_data_size"] == 8 * len(x)
    got = np.frombuffer(r.content[length:], dtype="<f8")
    np.testing.assert_allclose(got, invocations(http, frame), rtol=0, atol=1e-12)


def hostile_cases(frame: pd.DataFrame) -> list[tuple[str, bytes | str, dict[str, str], int, str]]:
    """(what, body, headers, status, a piece of the error message) for each hostile request."""
    two = frame.head(2)
    good = matrix_request(two)

    def with_input(**changes: Any) -> str:
        body = json.loads(json.dumps(good))
        body["inputs"][0].update(changes)
        return json.dumps(body)

    columns = column_request(two, FEATURES)
    renamed = json.loads(json.dumps(columns))
    renamed["inputs"][0]["name"] = "var_zzz"
    missing = json.loads(json.dumps(columns))
    del missing["inputs"][7]
    doubled = json.loads(json.dumps(columns))
    doubled["inputs"][1]["name"] = "var_0"
    ragged = json.loads(json.dumps(columns))
    ragged["inputs"][5]["shape"] = [1]
    ragged["inputs"][5]["data"] = [0.5]
    big = frame.sample(MAX_ROWS + 1, replace=True, random_state=0)
    x = two.to_numpy()
    short = {"inputs": [{"name": "x", "shape": [2, 200], "datatype": "FP64"}]}
    short["inputs"][0]["parameters"] = {"binary_data_size": x.nbytes - 8}
    short_body, short_headers = binary_body(short, x.tobytes()[:-8])
    extra_body, extra_headers = binary_body(
        {**short, "inputs": [{**short["inputs"][0], "parameters": {"binary_data_size": x.nbytes}}]},
        x.tobytes() + b"tail",
    )
    inf_row = x.copy()
    inf_row[1, 3] = np.inf
    inf_body, inf_headers = binary_body(
        {"inputs": [{**short["inputs"][0], "parameters": {"binary_data_size": x.nbytes}}]},
        inf_row.tobytes(),
    )
    no_json: dict[str, str] = {}
    return [
        ("shape [N, 199]", with_input(shape=[2, 199]), no_json, 422, "[2, 199]"),
        ("3-D shape", with_input(shape=[1, 2, 200]), no_json, 422, "[1, 2, 200]"),
        ("negative shape", with_input(shape=[-2, 200]), no_json, 422, "shape"),
        ("unknown feature", json.dumps(renamed), no_json, 422, "var_zzz"),
        ("missing feature", json.dumps(missing), no_json, 422, "var_7"),
        ("feature twice", json.dumps(doubled), no_json, 422, "var_0"),
        ("features of two lengths", json.dumps(ragged), no_json, 422, "same length"),
        ("BOOL", with_input(datatype="BOOL"), no_json, 422, "BOOL"),
        ("BYTES", with_input(datatype="BYTES"), no_json, 422, "BYTES"),
        ("unknown datatype", with_input(datatype="FP128"), no_json, 422, "FP128"),
        ("too few values", with_input(data=good["inputs"][0]["data"][:-1]), no_json, 422, "399"),
        ("nested wrong", with_input(data=[[1.0, 2.0]] * 200), no_json, 422, "nested"),
        ("strings", with_input(data=["1.5"] * 400), no_json, 422, "got a string"),
        ("booleans", with_input(data=[True] * 400), no_json, 422, "got a boolean"),
        ("INT64 fractions", with_input(datatype="INT64"), no_json, 422, "integers"),
        ("no data", with_input(data=None), no_json, 422, "no 'data'"),
        (
            "Infinity",
            with_input(data=[math.inf, *good["inputs"][0]["data"][1:]]),
            no_json,
            422,
            "infinite",
        ),
        ("binary Infinity", inf_body, inf_headers, 422, "row 1, column 'var_3'"),
        ("malformed JSON", '{"inputs": [', no_json, 400, "malformed JSON"),
        ("not an object", "[1, 2]", no_json, 400, "JSON object"),
        ("empty body", "", no_json, 400, "empty"),
        ("no inputs", "{}", no_json, 422, "'inputs' is required"),
        ("empty inputs", '{"inputs": []}', no_json, 422, "inputs"),
        ("zero rows", with_input(shape=[0, 200], data=[]), no_json, 422, "no rows"),
        ("too many rows", json.dumps(matrix_request(big)), no_json, 413, str(MAX_ROWS)),
        ("unknown output", json.dumps({**good, "outputs": [{"name": "p"}]}), no_json, 422, "'p'"),
        ("header beyond body", '{"inputs": []}', {HEADER: "4000"}, 400, HEADER),
        ("header not a number", '{"inputs": []}', {HEADER: "-1"}, 400, HEADER),
        ("binary bytes vs shape", short_body, short_headers, 422, "3192 bytes"),
        ("bytes beyond the inputs", extra_body, extra_headers, 400, "4 bytes follow"),
        ("gzip", json.dumps(good), {"content-encoding": "gzip"}, 415, "gzip"),
    ]


def test_hostile_inputs_get_their_4xx(http: httpx.Client, booster_model: LoggedModel) -> None:
    cases = hostile_cases(booster_model.frame)
    for what, body, headers, status, piece in cases:
        r = http.post("/v2/models/santander/infer", content=body, headers=headers)
        assert r.status_code == status, (what, r.status_code, r.text)
        error = r.json()
        assert isinstance(error["error"], str) and piece in error["error"], (what, error)
        assert "message" not in error  # the protocol's shape, not /invocations'
    assert len(cases) >= 30


def test_body_over_the_limit_is_413(http: httpx.Client) -> None:
    body = json.dumps({"inputs": [{"name": "x", "shape": [1], "datatype": "FP64"}]})
    r = http.post("/v2/models/santander/infer", content=body + " " * MAX_BODY_BYTES)
    assert r.status_code == 413 and "limit" in r.json()["error"]


def test_unknown_model_or_version_is_404(http: httpx.Client, booster_model: LoggedModel) -> None:
    body = json.dumps(matrix_request(booster_model.frame.head(1)))
    for method, path in [
        ("GET", "/v2/models/nope"),
        ("GET", "/v2/models/nope/ready"),
        ("GET", "/v2/models/santander/versions/999"),
        ("GET", "/v2/models/santander/versions/999/ready"),
        ("POST", "/v2/models/nope/infer"),
        ("POST", "/v2/models/santander/versions/999/infer"),
        ("GET", "/v2/models/santander/nothing-here"),
        ("GET", "/v2/repository/index"),
    ]:
        r = http.request(method, path, content=body if method == "POST" else None)
        assert r.status_code == 404, (path, r.text)
        assert isinstance(r.json()["error"], str)
    r = http.get("/v2/models/santander/infer")
    assert r.status_code == 405 and r.headers["allow"] == "POST"
    assert r.json()["error"] == "method not allowed"


def test_v2_routes_are_published_and_measured(http: httpx.Client) -> None:
    schema = http.get("/openapi.json").json()
    paths = {
        "/v2",
        "/v2/health/live",
        "/v2/health/ready",
        "/v2/models/{name}",
        "/v2/models/{name}/ready",
        "/v2/models/{name}/infer",
        "/v2/models/{name}/versions/{version}",
        "/v2/models/{name}/versions/{version}/ready",
        "/v2/models/{name}/versions/{version}/infer",
    }
    assert paths <= set(schema["paths"])
    assert not any("{path}" in p for p in schema["paths"])
    infer = schema["paths"]["/v2/models/{name}/infer"]["post"]
    assert infer["tags"] == ["v2"]
    assert "inputs" in infer["requestBody"]["content"]["application/json"]["schema"]["required"]
    assert {"400", "404", "413", "422", "503"} <= set(infer["responses"])
    before = metric(
        http.get("/metrics").text,
        "http_requests_total",
        route="/v2/models/{name}/infer",
        status="422",
    )
    http.post("/v2/models/santander/infer", content='{"inputs": []}')
    text = http.get("/metrics").text
    after = metric(text, "http_requests_total", route="/v2/models/{name}/infer", status="422")
    assert after == before + 1
    assert metric(text, "http_request_duration_seconds_count", route="/v2/health/ready") >= 1
