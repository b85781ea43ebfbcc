"""POST /invocations: every accepted format gives the native model's predictions; bad input 4xx."""

from __future__ import annotations

import io
import json

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from fastapi.testclient import TestClient

from tests.conftest import LoggedModel
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
    client: TestClient, booster_model: LoggedModel
) -> None:
    """Hundreds of rows (over the fast-path size) must give exactly the native predictions."""
    frame = pd.concat([booster_model.frame.fillna(0.5)] * 8, ignore_index=True)
    body = frame.to_json(orient="split")
    assert len(body) > 64 * 1024
    got = predictions(client.post("/invocations", content=body, headers=JSON))
    native = booster_model.frame.fillna(0.5)
    np.testing.assert_allclose(got[: len(native)], got[len(native) : 2 * len(native)])
    assert got.shape == (len(frame),)


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
    return json.dumps({"columns": columns or FEATURES, "data": data})


ROW = [0.5] * 200


def _with(i: int, value: object) -> list[object]:
    row: list[object] = list(ROW)
    row[i] = value
    return row


BAD = {
    "missing column": (
        _split([ROW[:199]], FEATURES[:199]),
        JSON,
        422,
        "MISSING_COLUMNS",
        "'var_199'",
    ),
    "unknown column": (
        _split([[*ROW, 1.0]], [*FEATURES, "var_200"]),
        JSON,
        422,
        "UNKNOWN_COLUMNS",
        "'var_200'",
    ),
    "duplicated column": (
        _split([[*ROW[:199], 1.0]], [*FEATURES[:199], "var_3"]),
        JSON,
        422,
        "DUPLICATE_COLUMNS",
        "'var_3'",
    ),
    "short row": (_split([ROW, ROW[:150]]), JSON, 422, "ROW_LENGTH_MISMATCH", "row 1"),
    "string value": (
        _split([ROW, _with(7, "1.5")]),
        JSON,
        422,
        "INVALID_VALUE",
        "row 1, column 'var_7'",
    ),
    "boolean value": (
        _split([_with(9, True)]),
        JSON,
        422,
        "INVALID_VALUE",
        "row 0, column 'var_9'",
    ),
    "nested list": (_split([_with(2, [1.0])]), JSON, 422, "INVALID_VALUE", "column 'var_2'"),
    "infinity (1e999)": (
        _split([ROW, ROW]).replace("0.5]", "1e999]", 1),
        JSON,
        400,
        "MALFORMED_REQUEST",
        "infinity",
    ),
    "csv infinity": (
        ",".join(FEATURES) + "\n" + ",".join(["1"] * 199 + ["inf"]) + "\n",
        {"content-type": "text/csv"},
        422,
        "INVALID_VALUE",
        "row 0, column 'var_199': infinite",
    ),
    "NaN literal": (
        _split([ROW]).replace("0.5", "NaN", 1),
        JSON,
        400,
        "MALFORMED_REQUEST",
        "malformed JSON",
    ),
    "Infinity literal": (
        _split([ROW]).replace("0.5", "Infinity", 1),
        JSON,
        400,
        "MALFORMED_REQUEST",
        "malformed JSON",
    ),
    "empty data": (_split([]), JSON, 422, "EMPTY_INPUT", "no rows"),
    "malformed JSON": ('{"columns": ["var_0"', JSON, 400, "MALFORMED_REQUEST", "malformed JSON"),
    "empty body": ("", JSON, 400, "MALFORMED_REQUEST", "empty"),
    "JSON array body": ("[[1, 2]]", JSON, 400, "MALFORMED_REQUEST", "must be an object"),
    "unrecognized keys": ('{"rows": []}', JSON, 422, "INVALID_INPUT", "unrecognized"),
    "two protocols": ('{"instances": [], "inputs": []}', JSON, 422, "INVALID_INPUT", "exactly one"),
    "no columns": (json.dumps({"data": [ROW]}), JSON, 422, "INVALID_INPUT", "'columns'"),
    "unsupported type": (
        "a=1",
        {"content-type": "application/x-www-form-urlencoded"},
        415,
        "UNSUPPORTED_MEDIA_TYPE",
        "application/json",
    ),
    "no content type": (_split([ROW]), {}, 415, "UNSUPPORTED_MEDIA_TYPE", "Content-Type"),
    "records missing key": (
        json.dumps({"dataframe_records": [dict(zip(FEATURES[1:], ROW, strict=False))]}),
        JSON,
        422,
        "MISSING_COLUMNS",
        "record 0 lacks column(s) 'var_0'",
    ),
    "instances wrong length": (
        json.dumps({"instances": [ROW[:10]]}),
        JSON,
        422,
        "ROW_LENGTH_MISMATCH",
        "row 0",
    ),
    "csv text value": (
        ",".join(FEATURES) + "\n" + ",".join(["1"] * 199 + ["abc"]) + "\n",
        {"content-type": "text/csv"},
        422,
        "INVALID_VALUE",
        "'var_199'",
    ),
    "csv unknown column": (
        "a,b\n1,2\n",
        {"content-type": "text/csv"},
        422,
        "UNKNOWN_COLUMNS",
        "'a'",
    ),
    "parquet garbage": (
        b"PAR1 not really",
        {"content-type": "application/vnd.apache.parquet"},
        400,
        "MALFORMED_REQUEST",
        "Parquet",
    ),
    "too many rows": (_split([ROW] * 1001), JSON, 413, "TOO_MANY_ROWS", "1001 rows"),
    "body too large": (_split([ROW]) + " " * 2_000_001, JSON, 413, "PAYLOAD_TOO_LARGE", "limit"),
}


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
    assert r.status_code == 400 and "infinity" in r.json()["message"]


def test_big_body_with_null_and_bool_is_checked_precisely(client: TestClient) -> None:
    rows = [ROW] * 300
    with_null = _split([*rows[:-1], _with(4, None)])
    r = client.post("/invocations", content=with_null, headers=JSON)
    assert r.status_code == 200 and len(r.json()["predictions"]) == 300
    with_bool = _split([*rows[:-1], _with(4, False)])
    r = client.post("/invocations", content=with_bool, headers=JSON)
    assert r.status_code == 422 and "row 299, column 'var_4'" in r.json()["message"]
    nested = _split([*rows[:-1], _with(4, [0.5])])
    r = client.post("/invocations", content=nested, headers=JSON)
    assert r.status_code == 422 and "row 299" in r.json()["message"]


def test_unknown_route_and_method_are_json(client: TestClient) -> None:
    r = client.get("/nope")
    assert r.status_code == 404 and r.json()["error_code"] == "NOT_FOUND"
    r = client.get("/invocations")
    assert r.status_code == 405 and r.json()["error_code"] == "METHOD_NOT_ALLOWED"
