"""The request contract, without HTTP: one table of cases through the contract's own path and
through each fast path (simdjson for big split bodies, orjson for small ones, and the choice the
service makes by size), which must agree on every case (same matrix, or same error)."""

from __future__ import annotations

import numpy as np
import pytest

from scoring.contract import decode
from scoring.contract.media import parse_media_type
from scoring.contract.models import contract_for
from scoring.errors import ServiceError
from tests.contract_cases import ACCEPTED, REFUSED, Case
from tests.helpers import FEATURES, make_frame

MAX_ROWS = 1000
CASES = {**ACCEPTED, **REFUSED}


def _body(case: Case) -> bytes:
    return case.body.encode() if isinstance(case.body, str) else case.body


def _decode(case: Case, path: str) -> np.ndarray | ServiceError:
    """``path``: "contract" (pydantic), "simdjson", "plain" (orjson, falling back to the
    contract when it declines, as the service does) or "auto" (the service's choice)."""
    body, content_type = _body(case), case.headers.get("content-type")
    try:
        media = parse_media_type(content_type)
        if path == "plain" and media.is_json and media.json_format != "pandas-records":
            x = decode._plain_split(body, FEATURES, MAX_ROWS)
            if x is not None:
                return x
        fast_path = {"contract": False, "simdjson": True}.get(path)
        return decode.parse_body(body, content_type, FEATURES, MAX_ROWS, fast_path=fast_path)
    except ServiceError as exc:
        return exc


@pytest.mark.parametrize("name", list(CASES))
def test_the_contract_answers_each_case(name: str) -> None:
    case = CASES[name]
    got = _decode(case, "contract")
    if case.status == 200:
        assert isinstance(got, np.ndarray), f"{name}: {got!r}"
        assert got.shape[1] == len(FEATURES) and got.dtype == np.float64
        assert not np.isinf(got).any()
    else:
        assert isinstance(got, ServiceError), f"{name} was accepted"
        assert (got.status_code, got.error_code) == (case.status, case.code), got.message
        assert case.fragment in got.message
        assert len(got.message) < 400


@pytest.mark.parametrize("path", ["simdjson", "plain", "auto"])
@pytest.mark.parametrize("name", list(CASES))
def test_the_fast_paths_agree_with_the_contract(name: str, path: str) -> None:
    case = CASES[name]
    precise, fast = _decode(case, "contract"), _decode(case, path)
    if isinstance(precise, np.ndarray):
        assert isinstance(fast, np.ndarray), f"{name}: fast path answered {fast!r}"
        np.testing.assert_array_equal(fast, precise)  # NaN where NaN, every bit otherwise
    else:
        assert isinstance(fast, ServiceError), f"{name}: the fast path accepted it"
        assert (fast.status_code, fast.error_code) == (precise.status_code, precise.error_code)


def test_the_fast_path_really_takes_the_plain_split_cases() -> None:
    """Not a vacuous agreement: plain numeric split bodies are decoded by simdjson itself."""

    def fast(case: Case) -> bool:
        try:
            media = parse_media_type(case.headers.get("content-type"))
            return media.is_json and decode._fast_split(_body(case), FEATURES, MAX_ROWS) is not None
        except ServiceError:
            return True  # the fast path itself refused it (the table above checks the code)

    taken = [name for name, case in CASES.items() if fast(case)]
    assert {"split", "split with index", "split, integers"} <= set(taken)
    assert "split with NaN token" not in taken  # declined: the contract's path reads NaN


def test_the_plain_path_really_takes_small_plain_split_bodies() -> None:
    """Not vacuous either: the one-row bodies clients send are decoded by ``_plain_split``;
    what it must not judge by itself it declines."""
    frame, _ = make_frame(3, seed=1)
    frame.iloc[1, 4] = np.nan  # pandas writes null
    for body in (
        frame.to_json(orient="split").encode(),
        decode.orjson.dumps({"dataframe_split": frame.to_dict(orient="split")}),
    ):
        x = decode._plain_split(body, FEATURES, MAX_ROWS)
        assert x is not None
        np.testing.assert_array_equal(x, frame.to_numpy(dtype=np.float64))
    plain = frame.to_json(orient="split").encode()
    declined = {
        "a key twice": plain.replace(b'"index"', b'"data":[],"index"', 1),
        "columns reordered": frame[list(reversed(FEATURES))].to_json(orient="split").encode(),
        "NaN token": plain.replace(b"null", b"NaN", 1),
        "a string value": plain.replace(b"null", b'"1.5"', 1),
        "a boolean": plain.replace(b"null", b"true", 1),
        "index too short": plain.replace(b'"index":[0,1,2]', b'"index":[0,1]', 1),
        "too many rows": plain,
    }
    for what, body in declined.items():
        max_rows = 2 if what == "too many rows" else MAX_ROWS
        assert decode._plain_split(body, FEATURES, max_rows) is None, what


def test_the_canonical_path_takes_what_pandas_writes_and_declines_the_rest() -> None:
    """``DataFrame.to_json(orient="split")`` byte for byte (with or without its index) is read
    without parsing the column names; anything else is declined and read as before."""
    frame, _ = make_frame(3, seed=2)
    frame.iloc[0, 7] = np.nan
    plain = frame.to_json(orient="split").encode()
    no_index = decode.orjson.dumps({"columns": FEATURES, "data": frame.to_numpy().tolist()})
    values = frame.fillna(0.25).to_numpy().tolist()
    for body in (plain, no_index):
        x = decode._canonical_split(body, FEATURES, MAX_ROWS)
        assert x is not None
        np.testing.assert_array_equal(x, frame.to_numpy(dtype=np.float64))
    declined = {
        "spaces": decode.orjson.dumps(frame.to_dict(orient="split")).replace(b":", b": "),
        "index after data": plain.replace(b'"index":[0,1,2],', b"", 1)[:-1] + b',"index":[0,1,2]}',
        "a key twice": plain.replace(b'"data":', b'"data":[],"data":', 1),
        "index twice": plain.replace(b'"index"', b'"index":[0,1,2],"index"', 1),
        "nested index": plain.replace(b'"index":[0,1,2]', b'"index":[[0],[1],[2]]', 1),
        "a bracket in an index string": plain.replace(b'"index":[0,1,2]', b'"index":["]",1,2]', 1),
        "an object index": plain.replace(b'"index":[0,1,2]', b'"index":{"a":1}', 1),
        "index too short": plain.replace(b'"index":[0,1,2]', b'"index":[0,1]', 1),
        "a boolean in the index": plain.replace(b'"index":[0,1,2]', b'"index":[0,true,2]', 1),
        "a float in the index": plain.replace(b'"index":[0,1,2]', b'"index":[0,1,2.5]', 1),
        "a trailing space": plain + b" ",
        "an integer beyond 64 bits": no_index.replace(b"null", b"1" + b"0" * 30, 1),
        "a boolean": plain.replace(b"null", b"true", 1),
        "a ragged row": plain.replace(b"null,", b"", 1),
        "a row in a row": plain.replace(b"null", b"[1.5]", 1),
        "no rows": no_index.split(b'"data":')[0] + b'"data":[]}',
        "ragged rows of the right total (no nulls)": decode.orjson.dumps(
            {"columns": FEATURES, "data": [[*values[0], 0.5], values[1][:-1], values[2]]}
        ),
        "a string value": plain.replace(b"null", b'"1.5"', 1),
        "columns reordered": frame[list(reversed(FEATURES))].to_json(orient="split").encode(),
    }
    for what, body in declined.items():
        assert decode._canonical_split(body, FEATURES, MAX_ROWS) is None, what
    # Numbers without a point are read as the contract reads them (as floats), nulls or not.
    for what, number, value in (
        ("an integer", b"1", 1.0),
        ("an exponent without a point", b"1e-05", 1e-05),
        ("an integer past 2**53", b"9007199254740993", 9007199254740992.0),
        ("a negative zero", b"-0", 0.0),
    ):
        for body in (no_index.replace(b"null", number, 1), plain.replace(b",null", b"," + number)):
            x = decode._canonical_split(body, FEATURES, MAX_ROWS)
            assert x is not None and x[0, 7] == value, what
            contract = decode.validate_json(body, tuple(FEATURES), MAX_ROWS)
            np.testing.assert_array_equal(x, contract)
    # The general path still reads what it read before; the contract decides the rest.
    assert decode._plain_split(declined["spaces"], FEATURES, MAX_ROWS) is not None
    assert decode._plain_split(declined["index after data"], FEATURES, MAX_ROWS) is not None
    for what in ("a key twice", "index twice", "an object index", "a string value"):
        assert decode._plain_split(declined[what], FEATURES, MAX_ROWS) is None, what


def test_missing_values_are_nan_and_values_land_in_model_order() -> None:
    reordered = list(reversed(FEATURES))
    body = decode.orjson.dumps(
        {"columns": reordered, "data": [[float(i) for i in range(200)]], "index": [0]}
    ).replace(b"199.0", b"NaN", 1)
    x = decode.parse_body(body, "application/json", FEATURES, MAX_ROWS, fast_path=False)
    assert np.isnan(x[0, 0])  # var_0 was the last column, sent as NaN
    assert x[0, 199] == 0.0 and x[0, 1] == 198.0


def test_the_schema_follows_the_model_features() -> None:
    mine = ("age", "income", "balance")
    contract = contract_for(mine)
    split = contract.components()["SplitFrame"]
    columns = split["properties"]["columns"]
    assert columns["items"]["enum"] == list(mine)
    assert columns["minItems"] == columns["maxItems"] == 3 and columns["uniqueItems"]
    assert contract_for(mine) is contract  # built once per feature list
    x = decode.parse_body(
        b'{"inputs": [{"age": 1, "income": null, "balance": 2.5}]}',
        "application/json",
        mine,
        10,
    )
    assert x.shape == (1, 3) and np.isnan(x[0, 1])
    with pytest.raises(ServiceError) as refused:
        decode.parse_body(b'{"inputs": [[1, 2]]}', "application/json", mine, 10)
    assert refused.value.error_code == "ROW_LENGTH_MISMATCH"


def test_big_bodies_share_one_parked_parser_then_give_it_back(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Bodies over ``REUSED_PARSER_BYTES`` reuse the last big body's parser (no fresh pages for
    each), read the same numbers whatever the parser parsed before, and the parser is freed once
    no big body came for ``PARKED_SECONDS``; bodies over ``PARKED_PARSER_BYTES`` never keep one."""
    import time

    monkeypatch.setattr(decode, "REUSED_PARSER_BYTES", 64 * 1024)
    monkeypatch.setattr(decode, "PARKED_PARSER_BYTES", 1024 * 1024)
    monkeypatch.setattr(decode, "PARKED_SECONDS", 0.5)
    monkeypatch.setattr(decode, "_parked", decode._ParkedParser())
    frames = [make_frame(rows, seed=rows)[0] for rows in (200, 60, 300, 45)]
    bodies = [frame.to_json(orient="split").encode() for frame in frames]
    assert all(64 * 1024 < len(b) <= 1024 * 1024 for b in bodies), [len(b) for b in bodies]
    used = []
    for frame, body in zip(frames, bodies, strict=True):  # bigger, smaller, bigger, smaller
        x = decode._fast_split(body, FEATURES, MAX_ROWS)
        assert x is not None
        np.testing.assert_array_equal(x, frame.to_numpy(dtype=np.float64))
        assert decode._parked.parked
        used.append(decode._parked._parser)  # held: a freed parser's id could come back
    assert all(parser is used[0] for parser in used), "each big body made its own parser"
    time.sleep(1.0)
    assert not decode._parked.parked, "the parser outlived PARKED_SECONDS"

    huge, _ = make_frame(800, seed=3)
    body = huge.to_json(orient="split").encode()
    assert len(body) > 1024 * 1024
    x = decode._fast_split(body, FEATURES, MAX_ROWS)
    np.testing.assert_array_equal(x, huge.to_numpy(dtype=np.float64))  # type: ignore[arg-type]
    assert not decode._parked.parked
