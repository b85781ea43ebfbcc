"""Real server processes (several workers): JSON logs, shared metrics, reload and polling under
load, and a sustained load run with its memory figure."""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from collections.abc import Iterator

import httpx
import mlflow
import numpy as np
import psutil
import pytest

from tests.conftest import LoggedModel
from tests.helpers import PYTHON, server_process
from tests.production.conftest import ADMIN_TOKEN
from tests.production.test_lifecycle_live import every_worker
from tests.production.test_observability import metric

JSON = {"content-type": "application/json"}


@pytest.fixture(scope="module")
def two_versions(booster_model: LoggedModel, classifier_model: LoggedModel) -> Iterator[dict]:
    """Registered model ``reload-test`` with two versions that answer differently."""
    client = mlflow.MlflowClient()
    name = "reload-test"
    client.create_registered_model(name)
    v1 = client.create_model_version(
        name, f"models:/{booster_model.model_id}", run_id=booster_model.run_id
    )
    v2 = client.create_model_version(
        name, f"models:/{classifier_model.model_id}", run_id=classifier_model.run_id
    )
    clf = mlflow.lightgbm.load_model(classifier_model.model_uri)
    rows = booster_model.frame
    yield {
        "name": name,
        "client": client,
        "v1": str(v1.version),
        "v2": str(v2.version),
        "body": rows.to_json(orient="split"),
        "expected_v1": booster_model.expected,
        "expected_v2": clf.predict_proba(rows)[:, 1],
    }


@pytest.fixture
def versions(two_versions: dict) -> Iterator[dict]:
    """``two_versions`` with the alias on v1 before and after each test."""
    two_versions["client"].set_registered_model_alias(
        two_versions["name"], "champion", two_versions["v1"]
    )
    yield two_versions
    two_versions["client"].set_registered_model_alias(
        two_versions["name"], "champion", two_versions["v1"]
    )


def serve(uri: str, log_file=None, workers: int = 2, **env: str):  # type: ignore[no-untyped-def]
    args = [PYTHON, "-m", "app", "--model-uri", uri, "--port", "{port}", "--workers", str(workers)]
    return server_process(args, env={"ADMIN_TOKEN": ADMIN_TOKEN, **env}, log_file=log_file)


class Load:
    """Threads posting the same body until stopped; counts answers by status and by model."""

    def __init__(self, base: str, body: str, expected: dict[str, np.ndarray], threads: int = 6):
        self.base, self.body, self.expected = base, body, expected
        self.results: Counter[str] = Counter()
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self.run) for _ in range(threads)]

    def run(self) -> None:
        with httpx.Client(timeout=30) as client:
            while not self.stop.is_set():
                try:
                    r = client.post(f"{self.base}/invocations", content=self.body, headers=JSON)
                except httpx.HTTPError as exc:
                    self.results[f"error {type(exc).__name__}"] += 1
                    continue
                if r.status_code != 200:
                    self.results[f"status {r.status_code}"] += 1
                    continue
                got = np.array(r.json()["predictions"])
                label = next(
                    (k for k, v in self.expected.items() if np.allclose(got, v, atol=1e-9)),
                    "unknown answer",
                )
                self.results[label] += 1

    def __enter__(self) -> Load:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(timeout=60)


def wait_for(condition, timeout: float = 60.0, what: str = "condition") -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def test_reload_under_load_drops_nothing_and_switches(versions: dict, tmp_path) -> None:  # type: ignore[no-untyped-def]
    v = versions
    log_file = tmp_path / "server.log"
    expected = {"v1": v["expected_v1"], "v2": v["expected_v2"]}
    with serve(f"models:/{v['name']}@champion", log_file=log_file, LOG_FORMAT="json") as (base, _):
        with Load(base, v["body"], expected) as load:
            wait_for(lambda: load.results["v1"] >= 50, what="load on v1")
            v["client"].set_registered_model_alias(v["name"], "champion", v["v2"])
            r = httpx.post(
                f"{base}/admin/reload",
                headers={"Authorization": f"Bearer {ADMIN_TOKEN}", "X-Request-ID": "reload-req-1"},
                timeout=120,
            )
            assert r.status_code == 200, r.text
            assert r.json()["status"] == "reloaded"
            assert r.json()["model"]["version"] == v["v2"]

            # Every worker follows (each loads v2 itself, which takes seconds): soon only v2.
            def only_v2_for_2s() -> bool:
                before = load.results["v1"]
                time.sleep(2)
                return load.results["v1"] == before and load.results["v2"] > 0

            wait_for(only_v2_for_2s, timeout=120, what="every worker to answer with v2")
            # The load's connections may all sit on one worker: ask each worker itself.
            every_worker(base, lambda card: card["version"] == v["v2"], "v2 everywhere", 2)
        results = dict(load.results)
        print(f"reload under load: {results}")
        assert set(results) == {"v1", "v2"}, results  # no errors, no other status, no mix-up

        # Both workers' figures add up on /metrics (any worker answers it).
        text = httpx.get(f"{base}/metrics").text
        assert metric(text, "http_requests_total", route="/invocations", status="200") == sum(
            results.values()
        )
        assert metric(text, "model_loads_total") >= 4  # 2 workers x (v1 + v2)
        card = httpx.get(f"{base}/model").json()
        assert card["version"] == v["v2"] and card["registered_name"] == v["name"]

        r = httpx.post(
            f"{base}/invocations", content=v["body"], headers={**JSON, "X-Request-ID": "trace-me-7"}
        )
        assert r.headers["x-request-id"] == "trace-me-7"

        # An answer is on /metrics as soon as it is in, whichever worker answers either (each
        # call a fresh connection; a worker writes its figures to the shared files a moment
        # after its answers, and /metrics waits that moment out).
        def answered() -> float:
            text = httpx.get(f"{base}/metrics").text
            return metric(text, "http_requests_total", route="/invocations", status="200")

        before = answered()
        for i in range(1, 11):
            assert httpx.post(f"{base}/invocations", content=v["body"], headers=JSON).is_success
            assert answered() == before + i
        time.sleep(0.5)
    v["client"].set_registered_model_alias(v["name"], "champion", v["v1"])

    lines = [json.loads(ln) for ln in log_file.read_text().splitlines() if ln.startswith("{")]
    access = [ln for ln in lines if ln.get("request_id") == "trace-me-7"]
    assert access, "the request's log line carries its id"
    entry = access[-1]
    assert entry["path"] == "/invocations" and entry["status"] == 200
    assert entry["rows"] == len(v["expected_v1"]) and entry["model_version"] == v["v2"]
    assert entry["duration_ms"] > 0
    assert any(
        ln.get("request_id") == "reload-req-1" and "serving" in ln["message"] for ln in lines
    ), "the reload's own log lines carry its request id"
    raw = log_file.read_text()
    assert ADMIN_TOKEN not in raw
    first_value = json.loads(v["body"])["data"][0][0]
    assert repr(first_value) not in raw, "the payload must never be logged"


def test_polling_follows_the_alias(versions: dict) -> None:
    v = versions
    # Several workers, each polling on its own; fresh connections reach all of them.
    with serve(f"models:/{v['name']}@champion", workers=3, MODEL_POLL_SECONDS="1") as (base, _):

        def answer() -> np.ndarray:
            r = httpx.post(f"{base}/invocations", content=v["body"], headers=JSON)
            assert r.status_code == 200
            return np.array(r.json()["predictions"])

        assert np.allclose(answer(), v["expected_v1"], atol=1e-9)
        v["client"].set_registered_model_alias(v["name"], "champion", v["v2"])
        try:
            seen: list[str] = []

            def all_v2() -> bool:
                got = [answer() for _ in range(12)]
                seen[:] = [_which(g, v) for g in got]
                return seen == ["v2"] * 12

            try:
                wait_for(all_v2, timeout=120, what="polling to swap in v2")
            except AssertionError as exc:
                raise AssertionError(f"{exc}; last answers: {seen}") from None
            # And each of the three workers, asked one by one, says so.
            every_worker(
                base, lambda card: card["version"] == v["v2"], "every worker on v2", workers=3
            )
        finally:
            v["client"].set_registered_model_alias(v["name"], "champion", v["v1"])


def _which(got: np.ndarray, v: dict) -> str:
    for label in ("v1", "v2"):
        if np.allclose(got, v[f"expected_{label}"], atol=1e-9):
            return label
    return f"neither (max diff to v2 {np.max(np.abs(got - v['expected_v2'])):.2e})"


def rss(pid: int) -> int:
    proc = psutil.Process(pid)
    return sum(p.memory_info().rss for p in [proc, *proc.children(recursive=True)])


LOAD_SECONDS = 30
CONCURRENCY = 32


def test_sustained_load_has_no_errors_and_flat_memory(booster_model: LoggedModel) -> None:
    import asyncio

    body = booster_model.frame.head(1).to_json(orient="split")

    async def hammer(base: str, seconds: float) -> Counter[str]:
        counts: Counter[str] = Counter()
        deadline = time.monotonic() + seconds
        limits = httpx.Limits(max_connections=CONCURRENCY)
        async with httpx.AsyncClient(timeout=30, limits=limits) as client:

            async def one() -> None:
                while time.monotonic() < deadline:
                    try:
                        r = await client.post(f"{base}/invocations", content=body, headers=JSON)
                        counts[str(r.status_code)] += 1
                    except httpx.HTTPError as exc:
                        counts[type(exc).__name__] += 1

            await asyncio.gather(*(one() for _ in range(CONCURRENCY)))
        return counts

    with serve(booster_model.model_uri) as (base, proc):
        warm = asyncio.run(hammer(base, 5))
        assert set(warm) == {"200"}, warm
        after_warmup = rss(proc.pid)
        counts = asyncio.run(hammer(base, LOAD_SECONDS))
        after_load = rss(proc.pid)
    total = sum(counts.values())
    growth = after_load / after_warmup - 1
    print(
        f"load: {total} requests in {LOAD_SECONDS}s at concurrency {CONCURRENCY} "
        f"({total / LOAD_SECONDS:.0f}/s), outcomes {dict(counts)}; RSS after warm-up "
        f"{after_warmup / 2**20:.1f} MiB, after load {after_load / 2**20:.1f} MiB "
        f"({growth:+.1%})"
    )
    assert set(counts) == {"200"}, counts
    assert total > 1000
    assert abs(growth) <= 0.10
