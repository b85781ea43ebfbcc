"""Property-based: every operation in the service's own /openapi.json holds its contract.

Runs in process over ASGI against the real model (loaded from the session's MLflow store), with
every check schemathesis has (``--checks all``: no server errors, status codes, content types,
headers, response schemas, schema-valid requests accepted, schema-invalid ones refused, ...),
in positive and negative mode, ``EXAMPLES_PER_OPERATION`` generated requests each.

Two exceptions, stated: for Parquet and Arrow bodies JSON Schema can only say "binary", so a
schema-valid body is random bytes there; and a V2 inference request's meaning lies in rules
JSON Schema cannot state (its tensors named after the model's features or one [N, F] tensor,
each shape's product the number of values sent), so a schema-valid one is mostly a wrong
request. Only the acceptance check is off for those (every other check, and the negative mode,
still run); `tests/app/test_v2.py` drives V2 with real clients. JSON and CSV bodies of
/invocations and /explain are held to every check.
"""

from __future__ import annotations

from collections import Counter

import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import CHECKS, load_all_checks

from app.model_holder import ModelHolder
from tests.production.conftest import ADMIN_TOKEN, make_app

EXAMPLES_PER_OPERATION = 100
MODES = (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
BINARY = ("application/vnd.apache.parquet", "application/vnd.apache.arrow.stream")


def all_checks():  # type: ignore[no-untyped-def]
    load_all_checks()
    return list(CHECKS.get_all())


def fuzz(operation, mode: GenerationMode, headers: dict[str, str], tried: Counter[str]) -> None:  # type: ignore[no-untyped-def]
    """Send ``EXAMPLES_PER_OPERATION`` generated requests to one operation and check each."""
    checks = all_checks()

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=EXAMPLES_PER_OPERATION,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    def run(case) -> None:  # type: ignore[no-untyped-def]
        unstated = case.media_type in BINARY or operation.path.endswith("/infer")
        excluded = [schemathesis.checks.positive_data_acceptance] if unstated else []
        case.call_and_validate(headers=headers, checks=checks, excluded_checks=excluded)
        tried[f"{operation.label} ({mode.value})"] += 1

    run()


def test_every_operation_holds_its_contract(loaded_holder: ModelHolder) -> None:
    schema = schemathesis.openapi.from_asgi("/openapi.json", make_app(loaded_holder))

    @schema.hook("filter_body")  # type: ignore[misc]
    def equal_lengths(ctx, body) -> bool:  # type: ignore[no-untyped-def]
        """The two rules JSON Schema cannot state (both are in the schema's descriptions): an
        ``index`` has one label per row, and an object of columns has columns of one length.
        Generated bodies that break them are not schema-true, so they are not sent."""
        if not isinstance(body, dict):
            return True
        frame = body.get("dataframe_split", body)
        if isinstance(frame, dict) and isinstance(frame.get("index"), list):
            data = frame.get("data")
            if isinstance(data, list) and len(frame["index"]) != len(data):
                return False
        for key in ("instances", "inputs"):
            columns = body.get(key)
            if isinstance(columns, dict) and columns:
                lengths = {len(v) if isinstance(v, list) else -1 for v in columns.values()}
                if len(lengths) > 1:
                    return False
        return True

    tried: Counter[str] = Counter()
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {op.path for op in operations} >= {
        "/invocations",
        "/explain",
        "/model",
        "/health/ready",
        "/metrics",
        "/admin/reload",
    }
    auth = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    # Negative cases need something to get wrong: a body or a parameter (the POST operations).
    for operation in operations:
        for mode in MODES:
            if mode is GenerationMode.NEGATIVE and operation.method.upper() != "POST":
                continue
            fuzz(operation, mode, auth if operation.path.startswith("/admin") else {}, tried)
    print(
        f"schemathesis: {sum(tried.values())} requests over {len(tried)} operation/mode pairs: "
        f"{dict(tried)}"
    )
    assert {label.split(" (")[0] for label in tried} == {op.label for op in operations}
    assert tried["POST /invocations (positive)"] >= EXAMPLES_PER_OPERATION // 2
    assert tried["POST /invocations (negative)"] >= EXAMPLES_PER_OPERATION // 2
