"""A table of hostile requests against a real server process: each gets its documented 4xx,
none gets a 5xx or an echo of its payload, and the server stays healthy after all of them."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.conftest import LoggedModel
from tests.helpers import FEATURES, PYTHON, server_process

ROW = [0.5] * 200
SPLIT = {"columns": FEATURES, "data": [ROW]}
J = "application/json"
LIMIT = 3_000_000


def split(**changes: object) -> bytes:
    return json.dumps({**SPLIT, **changes}).encode()


def with_value(value: str) -> bytes:
    return split().replace(b"0.5]]", value.encode() + b"]]")


# name: (content-type, body, status, error_code)
HOSTILE: dict[str, tuple[str | None, bytes, int, str]] = {
    "text/plain": ("text/plain", split(), 415, "UNSUPPORTED_MEDIA_TYPE"),
    "no content type": (None, split(), 415, "UNSUPPORTED_MEDIA_TYPE"),
    "multipart": ("multipart/form-data; boundary=x", b"--x--", 415, "UNSUPPORTED_MEDIA_TYPE"),
    "xml": ("application/xml", b"<rows/>", 415, "UNSUPPORTED_MEDIA_TYPE"),
    "form": ("application/x-www-form-urlencoded", b"a=1", 415, "UNSUPPORTED_MEDIA_TYPE"),
    "empty body": (J, b"", 400, "MALFORMED_REQUEST"),
    "whitespace body": (J, b"   \n ", 400, "MALFORMED_REQUEST"),
    "truncated JSON": (J, split()[:-20], 400, "MALFORMED_REQUEST"),
    "deeply nested array": (J, b"[" * 100_000 + b"]" * 100_000, 400, "MALFORMED_REQUEST"),
    "deeply nested in data": (
        J,
        split().replace(b'"data": [', b'"data": ' + b"[" * 5000, 1) + b"]" * 4999,
        400,
        "MALFORMED_REQUEST",
    ),
    # NaN is a missing value (as MLflow and pandas read it); infinities are values out of range.
    "Infinity literal": (J, with_value("Infinity"), 422, "INVALID_VALUE"),
    "-Infinity literal": (J, with_value("-Infinity"), 422, "INVALID_VALUE"),
    "number overflowing a double": (J, with_value("1e999"), 422, "INVALID_VALUE"),
    "400-digit integer": (J, with_value("9" * 400), 422, "INVALID_VALUE"),
    "invalid UTF-8": (J, b'{"columns": ["\xff\xfe"], "data": [[1]]}', 400, "MALFORMED_REQUEST"),
    "JSON null": (J, b"null", 400, "MALFORMED_REQUEST"),
    "JSON string": (J, b'"rows"', 400, "MALFORMED_REQUEST"),
    "duplicate keys": (J, split()[:-1] + b', "data": [[1]]}', 400, "DUPLICATE_KEYS"),
    "100k columns": (
        J,
        json.dumps({"columns": [f"c{i}" for i in range(100_000)], "data": [[0] * 10]}).encode(),
        422,
        "UNKNOWN_COLUMNS",
    ),
    "unicode column names": (J, split(columns=["vär_0", *FEATURES[1:]]), 422, "UNKNOWN_COLUMNS"),
    "duplicate columns": (J, split(columns=[*FEATURES[:199], "var_0"]), 422, "DUPLICATE_COLUMNS"),
    "string value": (J, with_value('"0.5"'), 422, "INVALID_VALUE"),
    "boolean value": (J, with_value("true"), 422, "INVALID_VALUE"),
    "object value": (J, with_value('{"v": 1}'), 422, "INVALID_VALUE"),
    "short row": (J, split(data=[ROW[:3]]), 422, "ROW_LENGTH_MISMATCH"),
    "data not a list": (J, split(data="rows"), 422, "INVALID_INPUT"),
    "columns not a list": (J, split(columns="var_0"), 422, "INVALID_INPUT"),
    "empty object": (J, b"{}", 422, "INVALID_INPUT"),
    "empty data": (J, split(data=[]), 422, "EMPTY_INPUT"),
    "records with extra key": (
        J,
        json.dumps({"dataframe_records": [{**dict.fromkeys(FEATURES, 0.5), "evil": 1}]}).encode(),
        422,
        "UNKNOWN_COLUMNS",
    ),
    "too many rows": (J, split(data=[ROW] * 1001), 413, "TOO_MANY_ROWS"),
    "oversize body": (J, split() + b" " * LIMIT, 413, "PAYLOAD_TOO_LARGE"),
    "csv garbage": ("text/csv", b'"unterminated\n1,2', 422, "UNKNOWN_COLUMNS"),
    "parquet garbage": ("application/vnd.apache.parquet", b"PAR1" * 10, 400, "MALFORMED_REQUEST"),
    "arrow garbage": (
        "application/vnd.apache.arrow.stream",
        b"\xff" * 64,
        400,
        "MALFORMED_REQUEST",
    ),
}


@pytest.fixture(scope="module")
def server(booster_model: LoggedModel) -> Iterator[str]:
    env = {"MAX_BODY_BYTES": str(LIMIT), "MAX_ROWS": "1000", "BODY_TIMEOUT_SECONDS": "2"}
    args = [PYTHON, "-m", "app", "--model-uri", booster_model.model_uri, "--port", "{port}"]
    with server_process(args, env=env) as (base, _):
        yield base


@pytest.mark.parametrize("route", ["/invocations", "/explain"])  # one contract, both routes
@pytest.mark.parametrize("name", list(HOSTILE))
def test_hostile_request_gets_its_4xx(server: str, name: str, route: str) -> None:
    content_type, body, status, code = HOSTILE[name]
    headers = {"content-type": content_type} if content_type else {}
    r = httpx.post(f"{server}{route}", content=body, headers=headers, timeout=30)
    assert r.status_code == status, r.text[:300]
    payload = r.json()
    assert payload["error_code"] == code
    assert len(r.content) < 600, "an error must name the fault, not carry the payload"
    assert httpx.get(f"{server}/health/ready").status_code == 200


def test_oversize_chunked_body_is_cut_off(server: str) -> None:
    def chunks() -> Iterator[bytes]:
        yield split()[:-1]
        for _ in range(40):
            yield b" " * 100_000

    r = httpx.post(
        f"{server}/invocations", content=chunks(), headers={"content-type": J}, timeout=30
    )
    assert r.status_code == 413 and r.json()["error_code"] == "PAYLOAD_TOO_LARGE"


def test_slow_sender_gets_408(server: str) -> None:
    host, port = server.removeprefix("http://").split(":")
    body = split()
    with socket.create_connection((host, int(port)), timeout=20) as s:
        s.sendall(
            b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            + f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body[:100]
        )
        started = time.monotonic()
        answer = ""
        while "BODY_TIMEOUT" not in answer:  # headers and body may come in separate packets
            chunk = s.recv(65536).decode(errors="replace")
            if not chunk:
                break
            answer += chunk
    assert " 408 " in answer.split("\r\n", 1)[0] and "BODY_TIMEOUT" in answer
    assert time.monotonic() - started < 15


def test_the_server_is_healthy_after_the_table(server: str) -> None:
    r = httpx.post(f"{server}/invocations", content=split(), headers={"content-type": J})
    assert r.status_code == 200 and len(r.json()["predictions"]) == 1
    metrics = httpx.get(f"{server}/metrics").text
    assert 'status="500"' not in metrics
