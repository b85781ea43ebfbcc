"""POST /invocations: every accepted format gives the native model's predictions; bad input 4xx."""

from __future__ import annotations

import io
import json

import mlflow
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from fastapi.testclient import TestClient

from scoring.contract import decode
from scoring.contract.decode import parse_body
from tests.conftest import LoggedModel
from tests.contract_cases import ACCEPTED, REFUSED, ROW, split, with_value
from tests.helpers import FEATURES

JSON = {"content-type": "application/json"}


def predictions(response) -> np.ndarray:  # type: ignore[no-untyped-def]
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    return np.array(response.json()["predictions"], dtype=float)


def records(frame: pd.DataFrame) -> list[dict[str, float | None]]:
    return [
        {k: (None if pd.isna(v) else float(v)) for k, v in row.items()}
        for row in frame.to_dict(orient="records")
    ]


def bodies(frame: pd.DataFrame) -> dict[str, tuple[bytes | str, dict[str, str]]]:
    """The same rows in every format the service accepts."""
    split = json.loads(frame.to_json(orient="split"))
    shuffled = frame[list(reversed(frame.columns))]
    arrow_sink = io.BytesIO()
    table = pa.Table.from_pandas(frame, preserve_index=False)
    with pa.ipc.new_stream(arrow_sink, table.schema) as writer:
        writer.write_table(table)
    parquet_sink = io.BytesIO()
    pq.write_table(table, parquet_sink)
    rows = frame.astype(object).where(frame.notna(), None).to_numpy().tolist()
    return {
        "split": (frame.to_json(orient="split"), JSON),
        "split without index": (
            json.dumps({"columns": split["columns"], "data": split["data"]}),
            JSON,
        ),
        "split, columns shuffled": (shuffled.to_json(orient="split"), JSON),
        "dataframe_split": (json.dumps({"dataframe_split": split}), JSON),
        "dataframe_records": (json.dumps({"dataframe_records": records(frame)}), JSON),
        "instances records": (json.dumps({"instances": records(frame)}), JSON),
        "instances rows": (json.dumps({"instances": rows}), JSON),
        "inputs records": (json.dumps({"inputs": records(frame)}), JSON),
        "inputs columns": (
            json.dumps(
                {
                    "inputs": {
                        c: [None if pd.isna(v) else v for v in frame[c]] for c in shuffled.columns
                    }
                }
            ),
            JSON,
        ),
        "json with charset": (
            frame.to_json(orient="split"),
            {"content-type": "application/json; charset=utf-8"},
        ),
        "csv": (frame.to_csv(index=False), {"content-type": "text/csv"}),
        "csv, columns shuffled": (shuffled.to_csv(index=False), {"content-type": "text/csv"}),
        "parquet": (parquet_sink.getvalue(), {"content-type": "application/vnd.apache.parquet"}),
        "arrow stream": (
            arrow_sink.getvalue(),
            {"content-type": "application/vnd.apache.arrow.stream"},
        ),
    }


@pytest.mark.parametrize("fmt", list(bodies(pd.DataFrame(columns=FEATURES, data=[[0.0] * 200]))))
def test_every_format_matches_the_native_model(
    client: TestClient, booster_model: LoggedModel, fmt: str
) -> None:
    body, headers = bodies(booster_model.frame)[fmt]
    got = predictions(client.post("/invocations", content=body, headers=headers))
    assert got.shape == (len(booster_model.frame),)
    np.testing.assert_allclose(got, booster_model.expected, rtol=0, atol=1e-12)


def test_missing_values_are_scored_as_lightgbm_does(
    client: TestClient, booster_model: LoggedModel
) -> None:
    frame = booster_model.frame
    assert frame.isna().to_numpy().sum() == 1  # the fixture planted one NaN
    got = predictions(
        client.post("/invocations", content=frame.to_json(orient="split"), headers=JSON)
    )
    assert got[3] == pytest.approx(booster_model.expected[3], abs=1e-12)


def test_big_body_takes_the_fast_path_with_same_answer(
    client: TestClient, booster_model: LoggedModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Hundreds of rows (over the fast-path size): the fast path decodes them (seen), and the
    answer equals the native model's predictions."""
    frame = pd.concat([booster_model.frame.fillna(0.5)] * 8, ignore_index=True)
    body = frame.to_json(orient="split")
    assert len(body) > 64 * 1024
    taken: list[bool] = []
    original = decode._fast_split

    def watched(*args, **kwargs):  # type: ignore[no-untyped-def]
        out = original(*args, **kwargs)
        taken.append(out is not None)
        return out

    monkeypatch.setattr(decode, "_fast_split", watched)
    got = predictions(client.post("/invocations", content=body, headers=JSON))
    assert taken == [True]
    booster = mlflow.lightgbm.load_model(booster_model.model_uri)
    np.testing.assert_allclose(got, booster.predict(frame.to_numpy()), rtol=0, atol=1e-12)


def test_rows_keep_input_order(client: TestClient, booster_model: LoggedModel) -> None:
    frame = booster_model.frame.iloc[::-1]
    got = predictions(
        client.post("/invocations", content=frame.to_json(orient="split"), headers=JSON)
    )
    np.testing.assert_allclose(got, booster_model.expected[::-1], atol=1e-12)


def test_readme_request_verbatim(client: TestClient) -> None:
    columns = [f"var_{i}" for i in range(0, 200)]
    random_data = pd.DataFrame(np.random.random((1, 200)), columns=columns)
    r = client.post(
        "/invocations",
        headers={"Content-Type": "application/json"},
        content=random_data.to_json(orient="split"),
    )
    p = predictions(r)
    assert p.shape == (1,) and 0.0 <= p[0] <= 1.0


def test_classifier_serves_probabilities_not_labels(
    classifier_client: TestClient, classifier_model: LoggedModel
) -> None:
    got = predictions(
        classifier_client.post(
            "/invocations", content=classifier_model.frame.to_json(orient="split"), headers=JSON
        )
    )
    np.testing.assert_allclose(got, classifier_model.expected, atol=1e-12)
    assert not set(np.unique(got)) <= {0.0, 1.0}


def _split(data: list[list[object]], columns: list[str] | None = None) -> str:
    return split(data, columns)


BAD = {name: (c.body, c.headers, c.status, c.code, c.fragment) for name, c in REFUSED.items()}
BAD["too many rows"] = (_split([ROW] * 1001), JSON, 413, "TOO_MANY_ROWS", "1001 rows")
BAD["body too large"] = (_split([ROW]) + " " * 2_000_001, JSON, 413, "PAYLOAD_TOO_LARGE", "limit")


@pytest.mark.parametrize("name", list(ACCEPTED) + list(REFUSED))
def test_http_answers_as_the_contract(
    client: TestClient, booster_model: LoggedModel, name: str
) -> None:
    """The shared table through HTTP: same status and code as the contract's own path, and
    for accepted bodies the model's own predictions of the contract's matrix."""
    case = {**ACCEPTED, **REFUSED}[name]
    r = client.post("/invocations", content=case.body, headers=case.headers)
    assert r.status_code == case.status, r.text[:300]
    if case.status != 200:
        assert r.json()["error_code"] == case.code
        return
    body = case.body.encode() if isinstance(case.body, str) else case.body
    x = parse_body(body, case.headers["content-type"], FEATURES, 1000, fast_path=False)
    booster = mlflow.lightgbm.load_model(booster_model.model_uri)
    np.testing.assert_allclose(predictions(r), booster.predict(x), rtol=0, atol=1e-12)


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_gets_a_clear_4xx(client: TestClient, case: str) -> None:
    body, headers, status, code, fragment = BAD[case]
    r = client.post("/invocations", content=body, headers=headers)
    assert r.status_code == status, r.text[:300]
    payload = r.json()
    assert set(payload) == {"error_code", "message"}
    assert payload["error_code"] == code
    assert fragment in payload["message"]
    assert len(payload["message"]) < 400  # names the fault, never echoes the payload
    if isinstance(body, str) and len(body) > 400:
        assert body[100:200] not in payload["message"]
    # ... and the server keeps serving.
    ok = client.post("/invocations", content=_split([ROW]), headers=JSON)
    assert ok.status_code == 200


def test_infinity_in_big_body_is_refused(client: TestClient) -> None:
    body = _split([ROW] * 300)
    assert len(body) > 32 * 1024
    # 1e999 is valid JSON that overflows a double; the fast path must not let it through.
    r = client.post("/invocations", content=body.replace("0.5]]", "1e999]]"), headers=JSON)
    assert r.status_code == 422, r.text
    assert "row 299, column 'var_199': infinite" in r.json()["message"]


def test_big_body_with_null_and_bool_is_checked_precisely(client: TestClient) -> None:
    rows = [ROW] * 300
    with_null = _split([*rows[:-1], with_value(4, None)])
    r = client.post("/invocations", content=with_null, headers=JSON)
    assert r.status_code == 200 and len(r.json()["predictions"]) == 300
    with_bool = _split([*rows[:-1], with_value(4, False)])
    r = client.post("/invocations", content=with_bool, headers=JSON)
    assert r.status_code == 422 and "row 299, column 'var_4'" in r.json()["message"]
    nested = _split([*rows[:-1], with_value(4, [0.5])])
    r = client.post("/invocations", content=nested, headers=JSON)
    assert r.status_code == 422 and "row 299" in r.json()["message"]


def test_unknown_route_and_method_are_json(client: TestClient) -> None:
    r = client.get("/nope")
    assert r.status_code == 404 and r.json()["error_code"] == "NOT_FOUND"
    r = client.get("/invocations")
    assert r.status_code == 405 and r.json()["error_code"] == "METHOD_NOT_ALLOWED"


def test_the_hot_paths_headers_answer_as_starlettes() -> None:
    """``IndexedHeaders`` (one dict per request) gives what Starlette's ``Headers`` gives:
    any case, the first of a repeated header, ``None`` or ``KeyError`` for a missing one."""
    from starlette.datastructures import Headers

    from app.hotpath import IndexedHeaders

    raw = [
        (b"host", b"x"),
        (b"content-type", b"application/json"),
        (b"content-length", b"12"),
        (b"x-routing-key", b"first"),
        (b"x-routing-key", b"second"),
    ]
    ours, theirs = IndexedHeaders(list(raw)), Headers(raw=list(raw))
    for key in ("Content-Type", "content-length", "X-Routing-Key", "authorization", "HOST"):
        assert ours.get(key) == theirs.get(key) and (key in ours) == (key in theirs), key
        assert ours.get(key, "-") == theirs.get(key, "-")
        if key in theirs:
            assert ours[key] == theirs[key]
        else:
            with pytest.raises(KeyError):
                ours[key]
    assert ours.getlist("x-routing-key") == theirs.getlist("x-routing-key") == ["first", "second"]
    assert list(ours.items()) == list(theirs.items()) and ours.raw == theirs.raw
