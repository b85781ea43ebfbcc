"""One table of request cases, accepted and refused, shared by every test of the contract.

Each case: the body, its headers, and what the service must answer (status, error code, a
fragment of the message). ``tests/scoring/test_contract.py`` runs every case through the
contract's own path, through the fast path where it applies, and through HTTP;
``tests/app/test_invocations.py`` and ``tests/production/test_hostile.py`` reuse it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from tests.helpers import FEATURES

JSON = {"content-type": "application/json"}
CSV = {"content-type": "text/csv"}
ROW = [0.5] * 200


@dataclass(frozen=True)
class Case:
    body: str | bytes
    headers: dict[str, str]
    status: int
    code: str | None = None  # None for 200
    fragment: str = ""


def split(data: list[list[object]], columns: list[str] | None = None, **extra: object) -> str:
    return json.dumps({"columns": columns or FEATURES, "data": data, **extra})


def with_value(i: int, value: object, row: list[float] | None = None) -> list[object]:
    out: list[object] = list(row or ROW)
    out[i] = value
    return out


def record(row: list[object] | None = None) -> dict[str, object]:
    return dict(zip(FEATURES, row or ROW, strict=True))


def _raw(text: str, token: str) -> str:
    """``text`` with the first 0.5 replaced by a bare token (what json.dumps writes for NaN)."""
    return text.replace("0.5", token, 1)


ACCEPTED = {
    "split": Case(split([ROW, ROW]), JSON, 200),
    "split with index": Case(split([ROW, ROW], index=[0, 1]), JSON, 200),
    "split with string index": Case(split([ROW], index=["a"]), JSON, 200),
    "split with null": Case(split([with_value(3, None)]), JSON, 200),
    "split with NaN token": Case(_raw(split([ROW]), "NaN"), JSON, 200),
    "split, integers": Case(split([[1] * 200]), JSON, 200),
    "dataframe_split with params": Case(
        json.dumps({"dataframe_split": {"columns": FEATURES, "data": [ROW]}, "params": {"k": 1}}),
        JSON,
        200,
    ),
    "dataframe_split with NaN and index (MLflow's client)": Case(
        _raw(
            json.dumps({"dataframe_split": {"columns": FEATURES, "index": [7], "data": [ROW]}}),
            "NaN",
        ),
        JSON,
        200,
    ),
    "dataframe_records": Case(json.dumps({"dataframe_records": [record()]}), JSON, 200),
    "instances rows": Case(json.dumps({"instances": [ROW]}), JSON, 200),
    "instances columns": Case(json.dumps({"instances": {f: [0.5] for f in FEATURES}}), JSON, 200),
    "inputs records with params": Case(json.dumps({"inputs": [record()], "params": {}}), JSON, 200),
    "inputs columns": Case(json.dumps({"inputs": {f: [0.5, None] for f in FEATURES}}), JSON, 200),
    "charset utf-8": Case(split([ROW]), {"content-type": "application/json; charset=UTF-8"}, 200),
    "MLflow 1.x format=pandas-split": Case(
        split([ROW]), {"content-type": "application/json; format=pandas-split"}, 200
    ),
    "MLflow 1.x format=pandas-records": Case(
        json.dumps([record(), record()]),
        {"content-type": "application/json; format=pandas-records"},
        200,
    ),
    "csv": Case(",".join(FEATURES) + "\n" + ",".join(["0.5"] * 200) + "\n", CSV, 200),
}

REFUSED = {
    "missing column": Case(
        split([ROW[:199]], FEATURES[:199]), JSON, 422, "MISSING_COLUMNS", "'var_199'"
    ),
    "unknown column": Case(
        split([[*ROW, 1.0]], [*FEATURES, "var_200"]), JSON, 422, "UNKNOWN_COLUMNS", "'var_200'"
    ),
    "duplicated column": Case(
        split([[*ROW[:199], 1.0]], [*FEATURES[:199], "var_3"]),
        JSON,
        422,
        "DUPLICATE_COLUMNS",
        "'var_3'",
    ),
    "short row": Case(split([ROW, ROW[:150]]), JSON, 422, "ROW_LENGTH_MISMATCH", "row 1"),
    "ragged rows of the right total": Case(
        split([[*ROW, 0.5], ROW[:199]]), JSON, 422, "ROW_LENGTH_MISMATCH", "row 0"
    ),
    "string value": Case(
        split([ROW, with_value(7, "1.5")]), JSON, 422, "INVALID_VALUE", "row 1, column 'var_7'"
    ),
    "boolean value": Case(
        split([with_value(9, True)]), JSON, 422, "INVALID_VALUE", "row 0, column 'var_9'"
    ),
    "nested list": Case(split([with_value(2, [1.0])]), JSON, 422, "INVALID_VALUE", "'var_2'"),
    "beyond a double (1e999)": Case(
        split([ROW, ROW]).replace("0.5]", "1e999]", 1),
        JSON,
        422,
        "INVALID_VALUE",
        "row 0, column 'var_199': infinite",
    ),
    "Infinity token": Case(
        _raw(split([ROW]), "Infinity"), JSON, 422, "INVALID_VALUE", "row 0, column 'var_0'"
    ),
    "-Infinity token": Case(
        _raw(split([ROW]), "-Infinity"), JSON, 422, "INVALID_VALUE", "row 0, column 'var_0'"
    ),
    "csv infinity": Case(
        ",".join(FEATURES) + "\n" + ",".join(["1"] * 199 + ["inf"]) + "\n",
        CSV,
        422,
        "INVALID_VALUE",
        "row 0, column 'var_199': infinite",
    ),
    "empty data": Case(split([]), JSON, 422, "EMPTY_INPUT", "no rows"),
    "malformed JSON": Case('{"columns": ["var_0"', JSON, 400, "MALFORMED_REQUEST", "malformed"),
    "empty body": Case("", JSON, 400, "MALFORMED_REQUEST", "empty"),
    "JSON array body": Case("[[1, 2]]", JSON, 400, "MALFORMED_REQUEST", "must be an object"),
    "unrecognized keys": Case('{"rows": []}', JSON, 422, "INVALID_INPUT", "unrecognized"),
    "two protocols": Case(
        '{"instances": [], "inputs": []}', JSON, 422, "INVALID_INPUT", "exactly one"
    ),
    "no columns": Case(json.dumps({"data": [ROW]}), JSON, 422, "INVALID_INPUT", "'columns'"),
    "index shorter than data": Case(
        split([ROW, ROW, ROW], index=[0, 1]), JSON, 422, "INVALID_INPUT", "'index' has 2"
    ),
    "index with null": Case(split([ROW], index=[None]), JSON, 422, "INVALID_INPUT", "index"),
    "index with boolean": Case(split([ROW], index=[True]), JSON, 422, "INVALID_INPUT", "index"),
    "params beside a bare split frame": Case(
        split([ROW], params={}), JSON, 422, "INVALID_INPUT", "'params'"
    ),
    "unknown top-level field": Case(
        json.dumps({"dataframe_split": {"columns": FEATURES, "data": [ROW]}, "extra": 1}),
        JSON,
        422,
        "INVALID_INPUT",
        "'extra'",
    ),
    "key given twice": Case(
        split([ROW]).replace('"data":', '"data": [[1]], "data":', 1),
        JSON,
        400,
        "DUPLICATE_KEYS",
        "'data'",
    ),
    "record key given twice": Case(
        json.dumps({"dataframe_records": [record()]}).replace(
            '"var_0": 0.5', '"var_0": 0.5, "var_0": 0.5', 1
        ),
        JSON,
        400,
        "DUPLICATE_KEYS",
        "'var_0'",
    ),
    "unsupported type": Case(
        "a=1",
        {"content-type": "application/x-www-form-urlencoded"},
        415,
        "UNSUPPORTED_MEDIA_TYPE",
        "application/json",
    ),
    "no content type": Case(split([ROW]), {}, 415, "UNSUPPORTED_MEDIA_TYPE", "Content-Type"),
    "charset latin-1": Case(
        split([ROW]),
        {"content-type": "application/json; charset=latin-1"},
        415,
        "UNSUPPORTED_MEDIA_TYPE",
        "UTF-8",
    ),
    "unknown media type parameter": Case(
        split([ROW]),
        {"content-type": "application/json; something=else"},
        415,
        "UNSUPPORTED_MEDIA_TYPE",
        "'something'",
    ),
    "format=pandas-records with a split body": Case(
        split([ROW]),
        {"content-type": "application/json; format=pandas-records"},
        422,
        "INVALID_INPUT",
        "",
    ),
    "records missing key": Case(
        json.dumps({"dataframe_records": [dict(zip(FEATURES[1:], ROW, strict=False))]}),
        JSON,
        422,
        "MISSING_COLUMNS",
        "record 0 lacks column(s) 'var_0'",
    ),
    "records unknown key": Case(
        json.dumps({"dataframe_records": [{**record(), "var_x": 1.0}]}),
        JSON,
        422,
        "UNKNOWN_COLUMNS",
        "record 0 has unknown column(s) 'var_x'",
    ),
    "instances wrong length": Case(
        json.dumps({"instances": [ROW[:10]]}), JSON, 422, "ROW_LENGTH_MISMATCH", "row 0"
    ),
    "inputs columns of different lengths": Case(
        json.dumps({"inputs": {f: [0.5] * (1 + (f == "var_3")) for f in FEATURES}}),
        JSON,
        422,
        "ROW_LENGTH_MISMATCH",
        "different lengths",
    ),
    "inputs columns, one unknown": Case(
        json.dumps({"inputs": {**{f: [0.5] for f in FEATURES}, "zz": [1.0]}}),
        JSON,
        422,
        "UNKNOWN_COLUMNS",
        "'zz'",
    ),
    "csv text value": Case(
        ",".join(FEATURES) + "\n" + ",".join(["1"] * 199 + ["abc"]) + "\n",
        CSV,
        422,
        "INVALID_VALUE",
        "'var_199'",
    ),
    "csv unknown column": Case("a,b\n1,2\n", CSV, 422, "UNKNOWN_COLUMNS", "'a'"),
    "csv empty": Case("", CSV, 400, "MALFORMED_REQUEST", "empty"),
    "parquet garbage": Case(
        b"PAR1 not really",
        {"content-type": "application/vnd.apache.parquet"},
        400,
        "MALFORMED_REQUEST",
        "Parquet",
    ),
}
