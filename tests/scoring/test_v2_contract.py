"""The V2 decoder against the shared table of request cases: the same checks as /invocations.

Every split-frame case of ``tests/contract_cases.py`` is sent again as a V2 request, as one tensor
per feature (the columns as the case names them, in its order) and, where the columns are the
model's in its order, as one [N, F] tensor. Accepted cases must give the very matrix the
contract's path gives; refused ones the same status and error code.
"""

from __future__ import annotations

import json
import re
from typing import Any

import numpy as np
import pytest

from scoring.contract import decode, v2
from scoring.errors import ServiceError
from tests.contract_cases import ACCEPTED, REFUSED, Case
from tests.helpers import FEATURES

MAX_ROWS = 1000
# V2 nests data by the tensor's shape: a feature's data starting with a list is nested data, and
# nested as no [N] shape can be.
DIFFERENT = {("nested list", "a tensor per feature"): ("ROW_LENGTH_MISMATCH", 422)}


def split_frame(case: Case) -> dict[str, Any] | None:
    """The case's split frame if it is a plain, rectangular one (nothing V2 has no word for)."""
    if case.headers.get("content-type") != "application/json":
        return None
    try:
        body = json.loads(case.body, object_pairs_hook=_no_repeated_keys)
    except ValueError:
        return None  # not JSON, or a key given twice (a JSON parser keeps the last)
    if not isinstance(body, dict) or set(body) != {"columns", "data"}:
        return None
    columns, data = body["columns"], body["data"]
    if not all(isinstance(r, list) and len(r) == len(columns) for r in data):
        return None
    return body


def _no_repeated_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    if len({k for k, _ in pairs}) != len(pairs):
        raise ValueError("a key given twice")
    return dict(pairs)


CASES = {
    name: case for name, case in {**ACCEPTED, **REFUSED}.items() if split_frame(case) is not None
}


def contract(case: Case) -> np.ndarray | ServiceError:
    try:
        body = case.body.encode() if isinstance(case.body, str) else case.body
        return decode.parse_body(body, "application/json", FEATURES, MAX_ROWS)
    except ServiceError as exc:
        return exc


def through_v2(request: dict[str, Any]) -> np.ndarray | ServiceError:
    try:
        return v2.decode_request(json.dumps(request).encode(), None, FEATURES, MAX_ROWS)[1]
    except ServiceError as exc:
        return exc


def v2_requests(frame: dict[str, Any]) -> dict[str, dict[str, Any]]:
    columns, data = frame["columns"], frame["data"]
    per_feature = {
        "parameters": {"content_type": "pd"},
        "inputs": [
            {"name": c, "shape": [len(data)], "datatype": "FP64", "data": [r[j] for r in data]}
            for j, c in enumerate(columns)
        ],
    }
    requests = {"a tensor per feature": per_feature}
    if columns == FEATURES:
        flat = [v for row in data for v in row]
        requests["one [N, F] tensor"] = {
            "inputs": [
                {"name": "x", "shape": [len(data), len(columns)], "datatype": "FP64", "data": flat}
            ]
        }
    return requests


def test_the_table_has_cases_for_v2() -> None:
    accepted = [n for n in CASES if n in ACCEPTED]
    refused = [n for n in CASES if n in REFUSED]
    assert len(accepted) >= 4 and len(refused) >= 8, (accepted, refused)


@pytest.mark.parametrize("name", sorted(CASES))
def test_v2_answers_each_case_as_the_contract_does(name: str) -> None:
    case = CASES[name]
    frame = split_frame(case)
    assert frame is not None
    expected = contract(case)
    for layout, request in v2_requests(frame).items():
        got = through_v2(request)
        if isinstance(expected, np.ndarray):
            assert isinstance(got, np.ndarray), (layout, got)
            np.testing.assert_array_equal(got, expected)
            continue
        assert isinstance(got, ServiceError), (layout, "accepted what the contract refuses")
        code, status = DIFFERENT.get((name, layout), (expected.error_code, expected.status_code))
        assert (got.error_code, got.status_code) == (code, status), (layout, got.message)
        named = re.search(r"'var_\d+'", case.fragment)
        assert named is None or named.group(0) in got.message, (layout, got.message)
