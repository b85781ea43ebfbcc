"""Champion and challenger from registry aliases, in real server processes (two workers).

Two registered versions with different trees: ``@champion`` on v1, ``@challenger`` on v2. In
``split:0.3`` mode 400 distinct routing keys get the challenger 30% ± 7% of the time, each answer
equal to the predictions of the version named in ``X-Model-Version``, and a repeated key gets
the same model again. In shadow mode the champion answers every request while ``/metrics`` counts
the challenger's rows and its agreement with the champion, checked against the figures computed
here from both models' own predictions.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import mlflow
import numpy as np
import pytest
from fastapi.testclient import TestClient

from app.config import Settings
from app.main import create_app
from tests.conftest import LoggedModel
from tests.helpers import PYTHON, server_process
from tests.production.test_lifecycle_live import every_worker
from tests.production.test_observability import metric
from training.promote import promote_challenger

JSON = {"content-type": "application/json"}
NAME = "cc-test"
ROWS = 5


@pytest.fixture(scope="module")
def pair(booster_model: LoggedModel, classifier_model: LoggedModel) -> Iterator[dict[str, Any]]:
    client = mlflow.MlflowClient()
    client.create_registered_model(NAME)
    v1 = client.create_model_version(
        NAME, f"models:/{booster_model.model_id}", run_id=booster_model.run_id
    )
    v2 = client.create_model_version(
        NAME, f"models:/{classifier_model.model_id}", run_id=classifier_model.run_id
    )
    client.set_registered_model_alias(NAME, "champion", str(v1.version))
    client.set_registered_model_alias(NAME, "challenger", str(v2.version))
    rows = booster_model.frame.head(ROWS)
    clf = mlflow.lightgbm.load_model(classifier_model.model_uri)
    champion, challenger = f"{NAME}/{v1.version}", f"{NAME}/{v2.version}"
    yield {
        "client": client,
        "champion": champion,
        "challenger": challenger,
        "body": rows.to_json(orient="split"),
        "rows": rows,
        "expected": {
            champion: booster_model.expected[:ROWS],
            challenger: clf.predict_proba(rows)[:, 1],
        },
    }


def serve(log_file: Path | None = None, **env: str):  # type: ignore[no-untyped-def]
    args = [PYTHON, "-m", "app", "--model-uri", f"models:/{NAME}@champion", "--port", "{port}",
            "--workers", "2"]  # fmt: skip
    return server_process(
        args, env={"CHALLENGER_URI": f"models:/{NAME}@challenger", **env}, log_file=log_file
    )


def per_model(text: str, sample: str, labels: dict[str, str]) -> float:
    """``metric`` for labels named like its own arguments (``name``)."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith(sample + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def v2_infer(client: httpx.Client, base: str, rows: Any, label: str) -> np.ndarray:
    """``/v2/models/{name}/versions/{version}/infer`` for ``label`` (``name/version``)."""
    name, version = label.split("/")
    x = rows.to_numpy()
    data = [None if np.isnan(v) else float(v) for v in x.ravel()]
    body = {"inputs": [{"name": "input", "shape": list(x.shape), "datatype": "FP64", "data": data}]}
    r = client.post(f"{base}/v2/models/{name}/versions/{version}/infer", json=body)
    assert r.status_code == 200, r.text
    assert r.headers["x-model-version"] == label
    return np.asarray(r.json()["outputs"][0]["data"], dtype=np.float64)


def post(client: httpx.Client, base: str, body: str, **headers: str) -> tuple[str, np.ndarray]:
    r = client.post(f"{base}/invocations", content=body, headers={**JSON, **headers})
    assert r.status_code == 200, r.text
    return r.headers["x-model-version"], np.asarray(r.json()["predictions"])


def test_split_routes_a_share_by_routing_key_and_names_the_answering_model(
    pair: dict[str, Any], tmp_path: Path
) -> None:
    log_file = tmp_path / "server.log"
    expected = pair["expected"]
    with serve(log_file, CHALLENGER_MODE="split:0.3", LOG_FORMAT="json") as (base, _):
        every_worker(base, lambda c: c["challenger"]["loaded"], "both models", workers=2)
        first: dict[str, str] = {}
        with httpx.Client(timeout=30) as client:
            for i in range(400):
                key = f"customer-{i}"
                label, got = post(client, base, pair["body"], **{"X-Routing-Key": key})
                assert label in expected, label
                np.testing.assert_allclose(got, expected[label], rtol=0, atol=1e-9)
                first[key] = label
            again = {key: post(client, base, pair["body"], **{"X-Routing-Key": key})[0]
                     for key in list(first)[:100]}  # fmt: skip
            unkeyed = Counter(post(client, base, pair["body"])[0] for _ in range(100))
    share = Counter(first.values())[pair["challenger"]] / len(first)
    print(f"challenger share over 400 keys: {share:.3f}; without a key: {dict(unkeyed)}")
    assert 0.23 <= share <= 0.37
    assert all(again[key] == first[key] for key in again), "a repeated key changed model"
    assert set(unkeyed) == {pair["champion"], pair["challenger"]}
    lines = [json.loads(ln) for ln in log_file.read_text().splitlines() if ln.startswith("{")]
    access = [ln for ln in lines if ln.get("path") == "/invocations"]
    assert {ln["model"] for ln in access} == {pair["champion"], pair["challenger"]}
    assert all(
        (ln["model_role"] == "challenger") == (ln["model"] == pair["challenger"]) for ln in access
    )


def test_shadow_answers_with_the_champion_and_counts_the_agreement(pair: dict[str, Any]) -> None:
    expected = pair["expected"]
    mine, theirs = expected[pair["champion"]], expected[pair["challenger"]]
    threshold = float((mine[0] + theirs[0]) / 2)  # row 0 falls on different sides of it
    requests = 60
    with serve(DECISION_THRESHOLD=str(threshold)) as (base, _):
        every_worker(base, lambda c: c["challenger"]["loaded"], "both models", workers=2)
        with httpx.Client(timeout=30) as client:
            for _ in range(requests):
                label, got = post(client, base, pair["body"])
                assert label == pair["champion"]
                np.testing.assert_allclose(got, mine, rtol=0, atol=1e-9)
        sent = requests * ROWS
        deadline = time.monotonic() + 60
        while True:
            text = httpx.get(f"{base}/metrics").text
            shadowed = metric(text, "shadow_rows_total")
            dropped = metric(text, "shadow_dropped_rows_total")
            if shadowed + dropped == sent:
                break
            assert time.monotonic() < deadline, (shadowed, dropped, sent)
            time.sleep(0.2)
        # The V2 routes name both models by version, side by side (after the counts above).
        with httpx.Client(timeout=30) as client:
            for label, want in ((pair["champion"], mine), (pair["challenger"], theirs)):
                got = v2_infer(client, base, pair["rows"], label)
                np.testing.assert_allclose(got, want, rtol=0, atol=1e-9)
    print(f"shadow: {shadowed:.0f} rows scored by the challenger, {dropped:.0f} dropped")
    assert shadowed > 0 and shadowed % ROWS == 0
    pair_labels = {"champion": pair["champion"], "challenger": pair["challenger"]}
    assert metric(text, "shadow_rows_total", **pair_labels) == shadowed
    challenger = {"name": NAME, "version": pair["challenger"].split("/")[1], "role": "challenger"}
    champion = {"name": NAME, "version": pair["champion"].split("/")[1], "role": "champion"}
    assert per_model(text, "model_rows_total", challenger) == shadowed
    assert per_model(text, "model_prediction_probability_count", challenger) == shadowed
    assert per_model(text, "model_rows_total", champion) == sent
    assert per_model(text, "model_requests_total", champion) == requests
    batches = shadowed / ROWS
    mean_abs = metric(text, "shadow_abs_difference_total", **pair_labels) / shadowed
    assert mean_abs == pytest.approx(float(np.mean(np.abs(mine - theirs))), rel=1e-9)
    different = int(np.sum((mine >= threshold) != (theirs >= threshold)))
    assert different >= 1
    assert metric(text, "shadow_disagreements_total", **pair_labels) == different * batches


def test_a_challenger_that_fails_to_load_never_affects_the_champion(
    pair: dict[str, Any], booster_model: LoggedModel
) -> None:
    settings = Settings(
        model_uri=f"models:/{NAME}@champion",
        challenger_uri=f"models:/{NAME}@no-such-alias",
        model_retry_max_seconds=1,
    )
    with TestClient(create_app(settings)) as client:
        deadline = time.monotonic() + 60
        while (card := client.get("/model").json())["challenger"]["last_error"] is None:
            assert time.monotonic() < deadline
            time.sleep(0.2)
        assert client.get("/health/ready").status_code == 200
        r = client.post("/invocations", content=pair["body"], headers=JSON)
        assert r.status_code == 200 and r.headers["x-model-version"] == pair["champion"]
    assert card["version"] == pair["champion"].split("/")[1] and card["last_error"] is None
    assert card["challenger"]["loaded"] is False
    assert "no-such-alias" in card["challenger"]["reason"]


def test_promote_moves_the_champion_to_the_challenger(pair: dict[str, Any]) -> None:
    client = pair["client"]
    champion = pair["champion"].split("/")[1]
    try:
        version = promote_challenger(client, NAME)
        assert version == pair["challenger"].split("/")[1]
        assert str(client.get_model_version_by_alias(NAME, "champion").version) == version
    finally:
        client.set_registered_model_alias(NAME, "champion", champion)
