"""The request contract, without HTTP: one table of cases through the contract's own path and
through the fast path, which must agree on every case (same matrix, or same error)."""

from __future__ import annotations

import numpy as np
import pytest

from scoring.contract import decode
from scoring.contract.media import parse_media_type
from scoring.contract.models import contract_for
from scoring.errors import ServiceError
from tests.contract_cases import ACCEPTED, REFUSED, Case
from tests.helpers import FEATURES

MAX_ROWS = 1000
CASES = {**ACCEPTED, **REFUSED}


def _decode(case: Case, fast_path: bool) -> np.ndarray | ServiceError:
    body = case.body.encode() if isinstance(case.body, str) else case.body
    try:
        return decode.parse_body(
            body, case.headers.get("content-type"), FEATURES, MAX_ROWS, fast_path=fast_path
        )
    except ServiceError as exc:
        return exc


@pytest.mark.parametrize("name", list(CASES))
def test_the_contract_answers_each_case(name: str) -> None:
    case = CASES[name]
    got = _decode(case, fast_path=False)
    if case.status == 200:
        assert isinstance(got, np.ndarray), f"{name}: {got!r}"
        assert got.shape[1] == len(FEATURES) and got.dtype == np.float64
        assert not np.isinf(got).any()
    else:
        assert isinstance(got, ServiceError), f"{name} was accepted"
        assert (got.status_code, got.error_code) == (case.status, case.code), got.message
        assert case.fragment in got.message
        assert len(got.message) < 400


@pytest.mark.parametrize("name", list(CASES))
def test_the_fast_path_agrees_with_the_contract(name: str) -> None:
    case = CASES[name]
    precise, fast = _decode(case, fast_path=False), _decode(case, fast_path=True)
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
            body = case.body.encode() if isinstance(case.body, str) else case.body
            return media.is_json and decode._fast_split(body, FEATURES, MAX_ROWS) is not None
        except ServiceError:
            return True  # the fast path itself refused it (the table above checks the code)

    taken = [name for name, case in CASES.items() if fast(case)]
    assert {"split", "split with index", "split, integers"} <= set(taken)
    assert "split with NaN token" not in taken  # declined: the contract's path reads NaN


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
