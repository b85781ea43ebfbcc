"""Property-based: every operation in the service's own /openapi.json, no 5xx, schema-true answers.

Runs in process over ASGI against the real model (loaded from the session's MLflow store), with
schemathesis' default checks (no server errors, status codes, content types, response schemas,
headers). Each operation gets ``EXAMPLES_PER_OPERATION`` generated requests.
"""

from __future__ import annotations

from collections import Counter

import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode

from app.model_holder import ModelHolder
from tests.production.conftest import ADMIN_TOKEN, make_app

EXAMPLES_PER_OPERATION = 60
MODES = (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)


def fuzz(operation, mode: GenerationMode, headers: dict[str, str], tried: Counter[str]) -> None:  # type: ignore[no-untyped-def]
    """Send ``EXAMPLES_PER_OPERATION`` generated requests to one operation and check each."""

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=EXAMPLES_PER_OPERATION,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    def run(case) -> None:  # type: ignore[no-untyped-def]
        # A CSV or binary body is "any string" to JSON Schema, so schema-valid does not mean
        # scoreable there; for those, 4xx is the right answer and only that check is off.
        excluded = (
            []
            if case.media_type in (None, "application/json")
            else [schemathesis.checks.positive_data_acceptance]
        )
        case.call_and_validate(headers=headers, excluded_checks=excluded)
        tried[f"{operation.label} ({mode.value})"] += 1

    run()


def test_every_operation_holds_its_contract(loaded_holder: ModelHolder) -> None:
    schema = schemathesis.openapi.from_asgi("/openapi.json", make_app(loaded_holder))
    tried: Counter[str] = Counter()
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {op.path for op in operations} >= {
        "/invocations",
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
