"""The metrics tally: updates kept as plain numbers and flushed give the same series as
Prometheus' own updates."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import numpy as np
import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from app import observability
from app.observability import (
    LATENCY_BUCKETS,
    ONE_ROWS_KEPT,
    Metrics,
    RequestContext,
    Tally,
)

VALUES = [0.0001, 0.0005, 0.0007, 0.001, 0.003, 0.25, 2.0, 30.0, 31.0, 0.0005]


def _series(registry: CollectorRegistry) -> tuple[Counter, Histogram, Gauge]:
    counter = Counter("c_total", "c", ["route"], registry=registry)
    histogram = Histogram("h_seconds", "h", ["route"], buckets=LATENCY_BUCKETS, registry=registry)
    gauge = Gauge("g", "g", registry=registry)
    return counter, histogram, gauge


def _text(registry: CollectorRegistry) -> list[str]:
    """The exposition's lines but the series' creation times."""
    return [ln for ln in generate_latest(registry).decode().splitlines() if "_created" not in ln]


def test_a_flushed_tally_gives_what_direct_updates_give() -> None:
    direct, tallied = CollectorRegistry(), CollectorRegistry()
    counter, histogram, gauge = _series(direct)
    t_counter, t_histogram, t_gauge = _series(tallied)
    tally = Tally()
    tally.own()
    level = 0
    tally.sample(t_gauge, lambda: level)
    for i, value in enumerate(VALUES):
        route = "/a" if i % 3 else "/b"
        counter.labels(route).inc(i + 0.5)
        histogram.labels(route).observe(value)  # on a bucket's bound, between, past the last
        tally.inc(t_counter.labels(route), i + 0.5)
        tally.observe(t_histogram.labels(route), value)
    level = 7
    gauge.set(7)
    assert _text(tallied) != _text(direct)  # kept, not yet added
    tally.flush()
    assert _text(tallied) == _text(direct)
    tally.flush()  # nothing twice
    assert _text(tallied) == _text(direct)


def test_other_threads_and_an_unowned_tally_update_at_once() -> None:
    registry = CollectorRegistry()
    counter, histogram, _ = _series(registry)
    tally = Tally()
    tally.inc(counter.labels("/a"))  # nobody owns it yet: straight to the series
    assert counter.labels("/a")._value.get() == 1
    tally.own()

    def elsewhere() -> None:
        tally.inc(counter.labels("/a"), 2)
        tally.observe(histogram.labels("/a"), 0.3)

    thread = threading.Thread(target=elsewhere)
    thread.start()
    thread.join()
    assert counter.labels("/a")._value.get() == 3
    assert histogram.labels("/a")._sum.get() == 0.3
    tally.inc(counter.labels("/a"))  # the owner's: kept
    assert counter.labels("/a")._value.get() == 3
    tally.flush()
    assert counter.labels("/a")._value.get() == 4


def _metric_lines(metrics: Metrics) -> list[str]:
    text = metrics.render()[0].decode()
    return sorted(
        ln for ln in text.splitlines() if ln and not ln.startswith("#") and "_created" not in ln
    )


def test_one_row_scorings_noted_on_the_loop_count_as_direct_updates_do() -> None:
    """One-row scorings and requests on the owner's thread are noted as tuples and counted
    with numpy at the flush (or once ``ONE_ROWS_KEPT`` wait): the same exposition as each one
    counted at once, with several models and statuses, a NaN prediction, latencies on and
    between bucket bounds."""
    rng = np.random.default_rng(3)
    values = [*rng.random(40).tolist(), 0.1, 0.5, 1.0, 0.0, float("nan")]
    latencies = [*rng.random(len(values) - 3).tolist(), 0.005, 0.0005, 40.0]
    models = [("santander", "3", "champion"), ("santander", "4", "challenger")]
    direct, noted = Metrics(), Metrics()
    noted.tally.own()
    for i, (value, seconds) in enumerate(zip(values, latencies, strict=True)):
        for metrics in (direct, noted):
            metrics.observe_scoring(np.array([value]), models[i % 2], seconds)
            metrics.request_done("/invocations", "POST", 200 if i % 3 else 422, seconds)
    assert noted._one_rows and not direct._one_rows  # the unowned tally counted at once
    assert noted._requests and not direct._requests
    direct.tally.flush()
    assert _metric_lines(noted) != _metric_lines(direct)  # noted, not yet counted
    noted.tally.flush()
    assert not noted._one_rows and not noted._requests
    got, want = _metric_lines(noted), _metric_lines(direct)
    assert [ln.rsplit(" ", 1)[0] for ln in got] == [ln.rsplit(" ", 1)[0] for ln in want]
    for a, b in zip(got, want, strict=True):  # sums may differ in the last bits
        assert float(a.rsplit(" ", 1)[1]) == pytest.approx(float(b.rsplit(" ", 1)[1]), rel=1e-12)

    for _ in range(ONE_ROWS_KEPT):  # a full list is counted without a flush
        noted.observe_scoring(np.array([0.3]), models[0], 0.001)
    assert not noted._one_rows


def test_several_workers_flush_once_for_the_requests_of_a_moment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With several workers (``immediate``: the figures live in files other workers read),
    the requests answered within ``FLUSH_SECONDS`` are flushed together, once, that long after
    the first: not one file write per update per request."""
    wait = 0.2  # long enough that three requests surely fall within it on a busy machine
    monkeypatch.setattr(observability, "FLUSH_SECONDS", wait)
    metrics = Metrics()
    metrics.tally = Tally(immediate=True)
    flushes: list[int] = []
    metrics.tally.before_flush.append(lambda: flushes.append(len(flushes)))
    requests = metrics.requests.labels("/p", "GET", "200")

    async def answer(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    context = RequestContext(answer, metrics)

    async def one() -> None:
        scope = {"type": "http", "method": "GET", "path": "/p", "headers": [], "route": _Route()}

        async def send(message: Any) -> None:
            pass

        await context(scope, _no_body, send)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        metrics.tally.own()
        started = loop.time()
        await one()
        for _ in range(2):
            await asyncio.sleep(0)
            await one()
        assert loop.time() - started < wait  # all three within the moment
        assert requests._value.get() == 0 and not flushes  # kept
        await asyncio.sleep(wait * 1.5)
        assert requests._value.get() == 3 and flushes == [0]  # one flush for the three
        await one()
        await asyncio.sleep(wait * 1.5)
        assert requests._value.get() == 4 and flushes == [0, 1]

    asyncio.run(main())


class _Route:
    path = "/p"


async def _no_body() -> dict[str, Any]:
    return {"type": "http.request", "body": b"", "more_body": False}
