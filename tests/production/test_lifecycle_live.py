"""Four real workers follow every alias move, on compiled trees, without a failed request.

``python -m app --workers 4`` on a real MLflow store with three registered versions whose trees
answer differently. The alias moves three times: picked up by polling, by ``/admin/reload``, and
back to the first version by polling. Meanwhile threads post with a fresh connection each time
(so every worker is hit); every answer names its version (``X-Model-Version``) and must equal that
version's own predictions to 1e-9, and none may fail. After each move ``/model`` is asked (fresh
connections) until every worker's pid has been seen on the new version; at the end, every worker
scores with compiled trees.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import lightgbm as lgb
import mlflow
import numpy as np
import pytest

from tests.conftest import LoggedModel, _log
from tests.helpers import PYTHON, make_frame, server_process
from tests.production.conftest import ADMIN_TOKEN

WORKERS = 4
JSON = {"content-type": "application/json"}
MOVE_TIMEOUT = 180.0  # the poll interval plus a load on every worker, on two shared cores


@pytest.fixture(scope="module")
def three_versions(
    booster_model: LoggedModel, classifier_model: LoggedModel
) -> Iterator[dict[str, Any]]:
    """Registered model ``lifecycle-test``: three versions with different trees."""
    x, y = make_frame(500, seed=11)
    third = lgb.train(
        {"objective": "binary", "num_leaves": 5, "verbose": -1, "seed": 11},
        lgb.Dataset(x, y),
        num_boost_round=20,
    )
    rows = booster_model.frame
    third_model = _log(third, "santander-third", rows, third.predict(rows.to_numpy()))
    clf = mlflow.lightgbm.load_model(classifier_model.model_uri)
    client = mlflow.MlflowClient()
    name = "lifecycle-test"
    client.create_registered_model(name)
    expected: dict[str, np.ndarray] = {}
    for model, predictions in (
        (booster_model, booster_model.expected),
        (classifier_model, clf.predict_proba(rows)[:, 1]),
        (third_model, third_model.expected),
    ):
        mv = client.create_model_version(name, f"models:/{model.model_id}", run_id=model.run_id)
        expected[f"{name}/{mv.version}"] = np.asarray(predictions)
    labels = list(expected)
    for a in labels:
        for b in labels:
            assert a == b or np.max(np.abs(expected[a] - expected[b])) > 1e-3
    client.set_registered_model_alias(name, "champion", labels[0].split("/")[1])
    yield {
        "name": name,
        "client": client,
        "labels": labels,
        "body": rows.to_json(orient="split"),
        "expected": expected,
    }


class FreshConnections:
    """Threads posting one body, each request on a new connection, until stopped."""

    def __init__(self, base: str, body: str, expected: dict[str, np.ndarray], threads: int = 4):
        self.base, self.body, self.expected = base, body, expected
        self.answers: Counter[str] = Counter()
        self.failures: Counter[str] = Counter()
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self.run) for _ in range(threads)]

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                r = httpx.post(f"{self.base}/invocations", content=self.body, headers=JSON)
            except httpx.HTTPError as exc:
                self.failures[f"error {type(exc).__name__}"] += 1
                continue
            if r.status_code != 200:
                self.failures[f"status {r.status_code}"] += 1
                continue
            label = r.headers.get("x-model-version", "no header")
            want = self.expected.get(label)
            got = np.asarray(r.json()["predictions"])
            if want is None or got.shape != want.shape or np.max(np.abs(got - want)) > 1e-9:
                self.failures[f"answer not {label}'s own predictions"] += 1
                continue
            self.answers[label] += 1

    def __enter__(self) -> FreshConnections:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(timeout=60)


def every_worker(
    base: str, accept: Callable[[dict[str, Any]], bool], what: str, workers: int = WORKERS
) -> dict[int, dict[str, Any]]:
    """Ask /model on fresh connections until ``workers`` pids were seen, each last accepted."""
    cards: dict[int, dict[str, Any]] = {}
    deadline = time.monotonic() + MOVE_TIMEOUT
    while True:
        r = httpx.get(f"{base}/model", timeout=30)
        assert r.status_code == 200, r.text
        card = r.json()
        cards[card["worker_pid"]] = card
        if len(cards) >= workers and all(accept(c) for c in cards.values()):
            return cards
        summary = {pid: (c["version"], c["backend"], c["last_error"]) for pid, c in cards.items()}
        assert time.monotonic() < deadline, f"timed out waiting for {what}: {summary}"
        time.sleep(0.05)


@pytest.mark.timeout(900)
def test_four_workers_follow_every_move_on_compiled_trees(three_versions: dict[str, Any]) -> None:
    v = three_versions
    name, client = v["name"], v["client"]
    first, second, third = v["labels"]
    number = {label: label.split("/")[1] for label in v["labels"]}
    args = [PYTHON, "-m", "app", "--model-uri", f"models:/{name}@champion", "--port", "{port}",
            "--workers", str(WORKERS)]  # fmt: skip
    env = {
        "ADMIN_TOKEN": ADMIN_TOKEN,
        "MODEL_POLL_SECONDS": "1",
        "COMPILED_PREDICTOR": "true",
    }

    def on(label: str) -> Callable[[dict[str, Any]], bool]:
        return lambda card: card["version"] == number[label] and card["last_error"] is None

    try:
        with server_process(args, env=env) as (base, _):
            every_worker(base, on(first), f"every worker on {first}")
            with FreshConnections(base, v["body"], v["expected"]) as load:
                # 1. Polling.
                client.set_registered_model_alias(name, "champion", number[second])
                every_worker(base, on(second), f"polling to move every worker to {second}")
                # 2. /admin/reload, answered once this worker swapped; the others follow.
                client.set_registered_model_alias(name, "champion", number[third])
                r = httpx.post(
                    f"{base}/admin/reload",
                    headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
                    timeout=120,
                )
                assert r.status_code == 200, r.text
                assert r.json()["model"]["version"] == number[third]
                every_worker(base, on(third), f"/admin/reload to move every worker to {third}")
                # 3. Back to the first version (its compiled trees are in the cache already).
                client.set_registered_model_alias(name, "champion", number[first])
                every_worker(base, on(first), f"every worker back on {first}")
                seen_before = sum(load.answers.values())
                deadline = time.monotonic() + 60
                while sum(load.answers.values()) < seen_before + 40:
                    assert time.monotonic() < deadline, "no answers after the last move"
                    time.sleep(0.1)
            cards = every_worker(
                base,
                lambda c: on(first)(c) and c["backend"] == "lleaves",
                "every worker on compiled trees",
            )
    finally:
        client.set_registered_model_alias(name, "champion", number[first])
    print(f"answers by version: {dict(load.answers)}; failures: {dict(load.failures)}")
    print({pid: c["backend_note"] for pid, c in cards.items()})
    assert not load.failures, dict(load.failures)
    assert set(load.answers) == {first, second, third}, dict(load.answers)
    assert len(cards) == WORKERS
