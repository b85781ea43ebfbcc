"""Request ids, access logs (text or JSON lines) and Prometheus metrics.

One pure-ASGI middleware does all three per request, so the hot path pays for one wrapper, not
three. With several workers, metrics are shared through ``PROMETHEUS_MULTIPROC_DIR`` (set by
``python -m app``) and ``/metrics`` adds up every worker's figures.
"""

from __future__ import annotations

import asyncio
import atexit
import bisect
import contextvars
import itertools
import logging
import logging.handlers
import math
import os
import queue
import re
import threading
import time
from collections.abc import Awaitable, Callable, Iterator, MutableMapping
from dataclasses import dataclass
from operator import itemgetter
from typing import Any, Protocol

import numpy as np
import orjson
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client import multiprocess as prom_multiprocess
from prometheus_client.core import HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

request_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "request_id", default=None
)
_VALID_ID = re.compile(r"^[A-Za-z0-9._:@/+=-]{1,128}$")
access_log = logging.getLogger("app.access")

LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
)
PROBABILITY_BUCKETS = (*(round(0.1 * i, 1) for i in range(1, 10)), 1.0)
_EDGES = (*PROBABILITY_BUCKETS, math.inf)
_EDGES_ARRAY = np.array(_EDGES)
SMALL_BATCH = 32
FLUSH_SECONDS = 0.002
"""With several workers, how long a request's metrics may wait to be written to the shared
files (and how long ``/metrics`` waits before reading them)."""
ONE_ROWS_KEPT = 256
"""One-row scorings (and requests) noted before they are counted, if ``/metrics`` was not read
meanwhile."""
_BIN_LABELS = tuple(f"{edge:g}" for edge in (*PROBABILITY_BUCKETS, float("inf")))
_PROBABILITY = "prediction_probability"
_MODEL_PROBABILITY = "model_prediction_probability"
MODEL_LABELS = ("name", "version", "role")


@dataclass(frozen=True)
class _ModelChildren:
    requests: Any
    rows: Any
    latency: Any
    bins: tuple[Any, ...]
    total: Any


class Tally:
    """The counter and histogram updates of the event loop's requests, kept as plain numbers
    and added to their Prometheus series in one go (``flush``), and gauges read then.

    Each Prometheus update takes a lock and checks its arguments (~1 us; in multiprocess mode
    it writes a shared file); a one-row request makes a dozen. Here an update is a dict entry
    of the loop's own thread, without a lock: the loop is the only writer (``own`` names it)
    and the only flusher (``/metrics`` flushes on the loop before rendering). Updates from any
    other thread (big bodies scored in threads) go straight to their series, as before. With
    several workers (``immediate``), ``/metrics`` is read by one worker from every worker's
    files, so a request's updates reach this worker's files ``FLUSH_SECONDS`` after its answer
    at the latest (``flush_soon``), once for all the requests answered meanwhile (each
    update a file write otherwise), and ``/metrics`` waits that long before reading the files.

    Histograms are kept as bucket counts and a sum (the buckets found as Prometheus' own
    ``observe`` finds them), so the tally holds a few numbers per series, however many
    requests come between scrapes.
    """

    __slots__ = (
        "before_flush", "buckets", "counts", "flush_due", "immediate", "owner", "samples", "sums"
    )  # fmt: skip

    def __init__(self, immediate: bool = False) -> None:
        self.immediate = immediate
        self.flush_due = False
        self.owner: int | None = None
        self.counts: dict[Any, float] = {}
        self.sums: dict[Any, float] = {}
        self.buckets: dict[tuple[Any, int], int] = {}
        self.samples: list[tuple[Any, Callable[[], float]]] = []
        self.before_flush: list[Callable[[], None]] = []
        """Called first by ``flush``: whoever keeps updates of its own hands them over here."""

    def keeps(self) -> bool:
        """Whether the calling thread may note one-row scorings and requests as tuples, counted
        at the owner's next ``flush``: not other threads, nor several workers, whose flushes
        come every ``FLUSH_SECONDS`` and would pay numpy's fixed cost for a few requests each
        (their updates go to the tally's dicts instead)."""
        return not self.immediate and threading.get_ident() == self.owner

    def observe_many(self, child: Any, values: np.ndarray) -> None:
        """``observe(child, v)`` for each value of a float array (owner's thread only)."""
        bounds = child._upper_bounds
        sums, buckets = self.sums, self.buckets
        sums[child] = sums.get(child, 0.0) + float(values.sum())
        found = np.bincount(np.searchsorted(bounds, values, side="left"), minlength=len(bounds))
        for i in np.flatnonzero(found).tolist():
            key = (child, i)
            buckets[key] = buckets.get(key, 0) + int(found[i])

    def own(self) -> None:
        """The calling thread (the event loop's) keeps its updates here from now on."""
        self.owner = threading.get_ident()

    def inc(self, child: Any, amount: float = 1.0) -> None:
        """``child.inc(amount)`` for a counter's series, at the next ``flush``."""
        if threading.get_ident() != self.owner:
            child.inc(amount)
            return
        counts = self.counts
        counts[child] = counts.get(child, 0.0) + amount

    def add(self, updates: list[tuple[Any, float]]) -> None:
        """``inc`` for each (counter series, amount) of ``updates``."""
        if threading.get_ident() != self.owner:
            for child, amount in updates:
                child.inc(amount)
            return
        counts = self.counts
        for child, amount in updates:
            counts[child] = counts.get(child, 0.0) + amount

    def observe(self, child: Any, value: float) -> None:
        """``child.observe(value)`` for a histogram's series (``value`` a number, not NaN), at
        the next ``flush``."""
        if threading.get_ident() != self.owner:
            child.observe(value)
            return
        sums = self.sums
        sums[child] = sums.get(child, 0.0) + value
        key = (child, bisect.bisect_left(child._upper_bounds, value))
        buckets = self.buckets
        buckets[key] = buckets.get(key, 0) + 1

    def inc_and_observe(self, counter: Any, histogram: Any, value: float) -> None:
        """``inc(counter)`` and ``observe(histogram, value)`` in one call (once per request)."""
        if threading.get_ident() != self.owner:
            counter.inc()
            histogram.observe(value)
            return
        counts, sums, buckets = self.counts, self.sums, self.buckets
        counts[counter] = counts.get(counter, 0.0) + 1.0
        sums[histogram] = sums.get(histogram, 0.0) + value
        key = (histogram, bisect.bisect_left(histogram._upper_bounds, value))
        buckets[key] = buckets.get(key, 0) + 1

    def sample(self, gauge: Any, read: Callable[[], float]) -> None:
        """Set ``gauge`` to ``read()`` at every ``flush`` (a count the app keeps anyway, such as
        the requests in progress, instead of a gauge update per change)."""
        self.samples.append((gauge, read))

    def flush_soon(self) -> None:
        """``flush`` in ``FLUSH_SECONDS`` (on the loop's thread), unless one is due already:
        every request answered meanwhile shares the one flush."""
        if not self.flush_due:
            self.flush_due = True
            asyncio.get_running_loop().call_later(FLUSH_SECONDS, self._flush_due)

    def _flush_due(self) -> None:
        self.flush_due = False
        self.flush()

    def flush(self) -> None:
        """Add what was kept to the series (on the owning thread, or before it owns this)."""
        for hand_over in self.before_flush:
            hand_over()
        counts, sums, buckets = self.counts, self.sums, self.buckets
        if counts:
            self.counts = {}
            for child, amount in counts.items():
                child.inc(amount)
        if sums:
            self.sums, self.buckets = {}, {}
            for child, total in sums.items():
                child._sum.inc(total)
            for (child, i), n in buckets.items():
                child._buckets[i].inc(n)
        for gauge, read in self.samples:
            gauge.set(read())


class Metrics:
    """The service's Prometheus metrics, on their own registry (one per app)."""

    def __init__(self, multiprocess_dir: str | None = None) -> None:
        """``multiprocess_dir``: Prometheus' shared folder when several workers serve (then the
        library itself reads ``PROMETHEUS_MULTIPROC_DIR``, which ``python -m app`` sets)."""
        self.multiprocess = bool(multiprocess_dir)
        self.tally = Tally(immediate=self.multiprocess)
        self._one_rows: list[tuple[tuple[str, str, str], float, float]] = []
        self._requests: list[tuple[str, str, int, float]] = []
        self.tally.before_flush += [self._count_one_rows, self._count_requests]
        # In multiprocess mode values live in files; the registry only serves single-process use.
        self.registry = CollectorRegistry(auto_describe=True)
        kw: dict[str, Any] = {"registry": None if self.multiprocess else self.registry}
        self.requests = Counter(
            "http_requests_total",
            "HTTP requests by route, method, status",
            ["route", "method", "status"],
            **kw,
        )
        self.latency = Histogram(
            "http_request_duration_seconds",
            "Request latency by route",
            ["route"],
            buckets=LATENCY_BUCKETS,
            **kw,
        )
        self.rows = Counter("rows_scored_total", "Rows scored", **kw)
        # Predicted probabilities arrive thousands at a time; a Histogram takes them one by one.
        # So rows are counted per bin (one step per bin) and ``render`` publishes these counters
        # as the histogram ``prediction_probability``, through public API only.
        self.probability_bins = Counter(
            f"{_PROBABILITY}_bin", "Predicted probabilities by bin (upper edge)", ["le"], **kw
        )
        self.probability_sum = Counter(f"{_PROBABILITY}_raw_sum", "Sum of probabilities", **kw)
        self.in_progress = Gauge(
            "invocations_in_progress",
            "Scoring requests in progress",
            multiprocess_mode="livesum",
            **kw,
        )
        self.model_info = Gauge(
            "model_info",
            "The model served (1) by name, version, run",
            ["uri", "name", "version", "run_id"],
            multiprocess_mode="livemax",
            **kw,
        )
        self.load_seconds = Gauge(
            "model_load_seconds",
            "Seconds the last model load took",
            multiprocess_mode="livemax",
            **kw,
        )
        self.load_failures = Counter("model_load_failures_total", "Failed model loads", **kw)
        self.loads = Counter("model_loads_total", "Successful model loads", **kw)
        self.api_key_requests = Counter(
            "api_key_requests_total",
            "Authenticated scoring requests by API key id",
            ["key_id"],
            **kw,
        )
        self.api_key_rejected = Counter(
            "api_key_rejected_total",
            "Scoring requests refused for a missing or wrong API key",
            **kw,
        )
        self.shed = Counter("requests_shed_total", "Requests refused with 503 (overload)", **kw)
        # Limits (app.limits, app.connections): what each one refused or cut.
        self.body_reads_shed = Counter(
            "body_reads_shed_total", "Requests refused (503): too many bodies arriving", **kw
        )
        self.bodies_cut = Counter(
            "request_bodies_cut_total",
            "Bodies cut off with 408: timeout (total time) or too_slow (under the minimum rate)",
            ["reason"],
            **kw,
        )
        self.memory_waits = Counter(
            "memory_waits_total", "Requests that waited for room in the memory budget", **kw
        )
        self.memory_shed = Counter(
            "memory_shed_total", "Requests refused (503): not enough memory budget in time", **kw
        )
        self.memory_limit = Gauge(
            "memory_limit_bytes", "Memory a worker may use", multiprocess_mode="livesum", **kw
        )
        self.memory_budget = Gauge(
            "memory_budget_bytes",
            "Memory a worker may spend on requests now (its limit less its idle use)",
            multiprocess_mode="livesum",
            **kw,
        )
        self.memory_reserved = Gauge(
            "memory_reserved_bytes",
            "Memory reserved by requests in progress",
            multiprocess_mode="livesum",
            **kw,
        )
        self.connections_open = Gauge(
            "connections_open", "Open client connections", multiprocess_mode="livesum", **kw
        )
        self.connections_refused = Counter(
            "connections_refused_total",
            "Connections refused (503, closed): at MAX_CONNECTIONS with none idle to close",
            **kw,
        )
        self.connections_closed = Counter(
            "connections_closed_total",
            "Connections closed by a limit: header_timeout, header_too_large, idle_evicted "
            "(closed for a new one at MAX_CONNECTIONS), slow_reader (answer unread)",
            ["reason"],
            **kw,
        )
        # Per model (name, version, role): champion and challenger side by side.
        self.model_requests = Counter(
            "model_requests_total",
            "Scoring requests per model (a shadowed request counts for the challenger too)",
            MODEL_LABELS,
            **kw,
        )
        self.model_rows = Counter("model_rows_total", "Rows scored per model", MODEL_LABELS, **kw)
        self.model_latency = Histogram(
            "model_scoring_duration_seconds",
            "Seconds to predict a request's rows per model (after parsing)",
            MODEL_LABELS,
            buckets=LATENCY_BUCKETS,
            **kw,
        )
        self.model_probability_bins = Counter(
            f"{_MODEL_PROBABILITY}_bin",
            "Predicted probabilities per model by bin (upper edge)",
            [*MODEL_LABELS, "le"],
            **kw,
        )
        self.model_probability_sum = Counter(
            f"{_MODEL_PROBABILITY}_raw_sum", "Sum of probabilities per model", MODEL_LABELS, **kw
        )
        # Shadow mode: how the challenger agrees with the champion on the same rows.
        pair = ("champion", "challenger")
        self.shadow_rows = Counter(
            "shadow_rows_total", "Rows scored by both champion and challenger", pair, **kw
        )
        self.shadow_abs_difference = Counter(
            "shadow_abs_difference",
            "Sum over shadowed rows of |champion - challenger| (÷ shadow_rows_total: the mean)",
            pair,
            **kw,
        )
        self.shadow_disagreements = Counter(
            "shadow_disagreements",
            "Shadowed rows on different sides of DECISION_THRESHOLD",
            pair,
            **kw,
        )
        self.shadow_dropped = Counter(
            "shadow_dropped_rows_total",
            "Rows the challenger did not score in shadow mode, by reason",
            ["reason"],
            **kw,
        )
        # Who else sees every scored batch (drift, the inference log: app.monitoring).
        self.scored_sinks: list[Callable[[np.ndarray, np.ndarray, Any], None]] = []
        # Series updated on every request, made once (see _model_children).
        self._bins = tuple(self.probability_bins.labels(le) for le in _BIN_LABELS)
        self._per_model: dict[tuple[str, str, str], _ModelChildren] = {}
        self._request_series: dict[tuple[str, str, int], tuple[Any, Any]] = {}

    def request_done(self, route: str, method: str, status: int, seconds: float) -> None:
        """Count one HTTP request and its latency: on the loop, a tuple noted and counted with
        the others at the next flush (``_count_requests``); elsewhere at once."""
        if self.tally.keeps():
            noted = self._requests
            noted.append((route, method, status, seconds))
            if len(noted) >= ONE_ROWS_KEPT:
                self._count_requests()
            return
        requests, latency = self.request_series(route, method, status)
        self.tally.inc_and_observe(requests, latency, seconds)

    def _count_requests(self) -> None:
        """Count the noted requests into the tally, per series with numpy. On the owner."""
        noted, self._requests = self._requests, []
        tally = self.tally
        for key, (seconds,) in _grouped(noted, 3):
            requests, latency = self.request_series(*key)
            tally.inc(requests, len(seconds))
            tally.observe_many(latency, seconds)

    def request_series(self, route: str, method: str, status: int) -> tuple[Any, Any]:
        """The request counter and latency histogram of one (route, method, status)."""
        key = (route, method, status)
        series = self._request_series.get(key)
        if series is None:
            series = self._request_series[key] = (
                self.requests.labels(route, method, str(status)),
                self.latency.labels(route),
            )
        return series

    def render(self) -> tuple[bytes, str]:
        if self.multiprocess:
            source = CollectorRegistry()
            prom_multiprocess.MultiProcessCollector(source)  # type: ignore[no-untyped-call]
        else:
            source = self.registry
        registry = CollectorRegistry(auto_describe=False)
        registry.register(_BinsAsHistogram(source))
        return generate_latest(registry), CONTENT_TYPE_LATEST

    def _model_children(self, model: tuple[str, str, str]) -> _ModelChildren:
        """The per-model series of one (name, version, role), made once: a metric's
        ``labels()`` costs more than the update itself on a one-row request."""
        children = self._per_model.get(model)
        if children is None:
            children = self._per_model[model] = _ModelChildren(
                requests=self.model_requests.labels(*model),
                rows=self.model_rows.labels(*model),
                latency=self.model_latency.labels(*model),
                bins=tuple(self.model_probability_bins.labels(*model, le) for le in _BIN_LABELS),
                total=self.model_probability_sum.labels(*model),
            )
        return children

    def observe_predictions(
        self, values: np.ndarray, model: tuple[str, str, str] | None = None, answered: bool = True
    ) -> None:
        """Count a batch of probabilities into the histograms: one step per bin, not per value.

        ``model`` (name, version, role) also counts them for that model; ``answered=False``
        (the challenger in shadow mode) counts them for that model only.
        """
        updates: list[tuple[Any, float]] = []
        self._prediction_updates(values, model, answered, updates)
        self.tally.add(updates)

    def _prediction_updates(
        self,
        values: np.ndarray,
        model: tuple[str, str, str] | None,
        answered: bool,
        updates: list[tuple[Any, float]],
    ) -> None:
        """``observe_predictions``' counter steps, appended to ``updates`` as (series, amount)."""
        counts: dict[int, int]
        if values.size == 1 and values.ndim == 1:  # one row: every one-row request
            total = float(values[0])
            if not math.isfinite(total):
                return
            counts, size = {bisect.bisect_left(_EDGES, total): 1}, 1
        elif values.size <= SMALL_BATCH and values.ndim == 1:
            # A few values: plain Python beats numpy's per-call overhead.
            finite = [v for v in values.tolist() if math.isfinite(v)]
            if not finite:
                return
            counts = {}
            for v in finite:
                i = bisect.bisect_left(_EDGES, v)
                counts[i] = counts.get(i, 0) + 1
            size, total = len(finite), math.fsum(finite)
        else:
            values = values[np.isfinite(values)] if values.ndim == 1 else values.ravel()
            if values.size == 0:
                return
            binned = np.bincount(np.searchsorted(_EDGES_ARRAY, values, side="left"))
            counts = {i: c for i, c in enumerate(binned.tolist()) if c}
            size, total = int(values.size), float(values.sum())
        bins = counts.items()
        if answered:
            updates.append((self.rows, size))
            for i, count in bins:
                updates.append((self._bins[i], count))
            updates.append((self.probability_sum, total))
        if model is not None:
            children = self._model_children(model)
            updates.append((children.rows, size))
            for i, count in bins:
                updates.append((children.bins[i], count))
            updates.append((children.total, total))

    def observe_scoring(
        self,
        predictions: np.ndarray,
        model: tuple[str, str, str],
        seconds: float,
        answered: bool = True,
        requests: int = 1,
    ) -> None:
        """Scored rows of ``model`` (``requests`` requests, scored together in ``seconds``):
        their probabilities, the requests and the latency."""
        tally = self.tally
        if predictions.size == 1 and requests == 1 and answered and tally.keeps():
            # One row, on the loop: a tuple noted; counted with the others at the next flush.
            one_rows = self._one_rows
            one_rows.append((model, float(predictions.flat[0]), seconds))
            if len(one_rows) >= ONE_ROWS_KEPT:
                self._count_one_rows()
            return
        children = self._model_children(model)
        updates: list[tuple[Any, float]] = [(children.requests, requests)]
        self._prediction_updates(predictions, model, answered, updates)
        tally.add(updates)
        tally.observe(children.latency, seconds)

    def _count_one_rows(self) -> None:
        """Count the noted one-row scorings into the tally, per model with numpy (a few
        microseconds of dict updates per request otherwise). On the tally's owner."""
        noted, self._one_rows = self._one_rows, []
        tally = self.tally
        for model, (values, seconds) in _grouped(noted, 1):
            children = self._model_children(model)
            updates: list[tuple[Any, float]] = [(children.requests, len(values))]
            self._prediction_updates(values, model, True, updates)
            tally.add(updates)
            tally.observe_many(children.latency, seconds)

    def observe_scored(self, x: np.ndarray, predictions: np.ndarray, model: Any) -> None:
        """Hand a scored batch (rows in the model's feature order) to the sinks; a failing sink
        is logged, never the request's failure."""
        for sink in self.scored_sinks:
            try:
                sink(x, predictions, model)
            except Exception:
                logging.getLogger(__name__).exception("a scored-rows sink failed")

    def model_loaded(
        self,
        labels: tuple[str, str, str, str],
        seconds: float,
        previous: tuple[str, str, str, str] | None,
    ) -> None:
        """Name the model now served (uri, name, version, run id) and retire the previous one."""
        if previous is not None:
            self.model_info.labels(*previous).set(0)
        self.model_info.labels(*labels).set(1)
        self.load_seconds.set(seconds)
        self.loads.inc()


def _grouped(noted: list[tuple[Any, ...]], width: int) -> Iterator[tuple[Any, list[np.ndarray]]]:
    """The noted tuples by their first ``width`` fields (the key: that field itself when
    ``width`` is 1), with each further field as a float array. Noted tuples mostly share one
    key, and that case runs in C (``map``): a Python loop over a thousand tuples stalls the
    event loop for a millisecond, which the tail latency shows."""
    if not noted:
        return
    keys = list(map(itemgetter(*range(width)), noted))
    fields = [itemgetter(i) for i in range(width, len(noted[0]))]
    first = keys[0]
    if keys.count(first) == len(keys):
        n = len(noted)
        yield first, [np.fromiter(map(field, noted), np.float64, n) for field in fields]
        return
    by_key: dict[Any, list[tuple[Any, ...]]] = {}
    for key, item in zip(keys, noted, strict=True):
        by_key.setdefault(key, []).append(item)
    for key, items in by_key.items():
        n = len(items)
        yield key, [np.fromiter(map(field, items), np.float64, n) for field in fields]


class _BinsAsHistogram(Collector):
    """Everything ``source`` collects, with the probability bin counters as one histogram."""

    def __init__(self, source: CollectorRegistry) -> None:
        self.source = source

    def collect(self) -> Any:
        bins: dict[str, float] = {}
        total = 0.0
        model_bins: dict[tuple[str, ...], dict[str, float]] = {}
        model_totals: dict[tuple[str, ...], float] = {}
        for family in self.source.collect():
            if family.name == f"{_PROBABILITY}_bin":
                for sample in family.samples:
                    if sample.name.endswith("_total"):
                        le = sample.labels["le"]
                        bins[le] = bins.get(le, 0.0) + sample.value
            elif family.name == f"{_PROBABILITY}_raw_sum":
                total += sum(s.value for s in family.samples if s.name.endswith("_total"))
            elif family.name == f"{_MODEL_PROBABILITY}_bin":
                for sample in family.samples:
                    if sample.name.endswith("_total"):
                        key = tuple(sample.labels[k] for k in MODEL_LABELS)
                        per = model_bins.setdefault(key, {})
                        le = sample.labels["le"]
                        per[le] = per.get(le, 0.0) + sample.value
            elif family.name == f"{_MODEL_PROBABILITY}_raw_sum":
                for sample in family.samples:
                    if sample.name.endswith("_total"):
                        key = tuple(sample.labels[k] for k in MODEL_LABELS)
                        model_totals[key] = model_totals.get(key, 0.0) + sample.value
            else:
                yield family
        hist: Metric = HistogramMetricFamily(
            _PROBABILITY, "Predicted P(target = 1)", buckets=_cumulative(bins), sum_value=total
        )
        yield hist
        per_model = HistogramMetricFamily(
            _MODEL_PROBABILITY, "Predicted P(target = 1) per model", labels=MODEL_LABELS
        )
        for key, counts in sorted(model_bins.items()):
            per_model.add_metric(list(key), _cumulative(counts), model_totals.get(key, 0.0))
        yield per_model


def _cumulative(bins: dict[str, float]) -> list[tuple[str, float]]:
    cumulative, buckets = 0.0, []
    for label in _BIN_LABELS:
        cumulative += bins.get(label, 0.0)
        buckets.append(("+Inf" if label == "inf" else label, cumulative))
    return buckets


def mark_worker_dead(multiprocess_dir: str | None) -> None:
    """On worker exit: drop its live gauges from the shared figures."""
    if multiprocess_dir:
        prom_multiprocess.mark_process_dead(os.getpid(), multiprocess_dir)  # type: ignore[no-untyped-call]


class RequestIds:
    """Request ids for requests that came without one: 32 hex digits, a random prefix per
    process and a counter (unique, which is what an id is for, without a system call for
    random bytes per request)."""

    def __init__(self) -> None:
        self.reset()
        os.register_at_fork(after_in_child=self.reset)

    def reset(self) -> None:
        self._prefix = os.urandom(8).hex()
        self._next = itertools.count(int.from_bytes(os.urandom(4), "big")).__next__

    def new(self) -> str:
        return f"{self._prefix}{self._next() & 0xFFFFFFFFFFFFFFFF:016x}"


_request_ids = RequestIds()


Answer = tuple[int, list[tuple[bytes, bytes]], bytes]
"""An answer as ASGI sends it: status, raw headers, body."""


class HotAnswers(Protocol):
    """What the request context asks of the hot path (``app.hotpath.HotPath``)."""

    async def answer(self, scope: Scope, receive: Receive) -> Answer | None:
        """Status, raw headers and body of the answer to a request the hot path takes, else
        ``None`` (nothing read)."""


class RequestContext:
    """Request id in and out, one access-log line and the request metrics per HTTP request;
    and, given ``on_error`` (``(scope, exc) ->`` an ASGI response), the answer to an unexpected
    error, as Starlette's ``ServerErrorMiddleware`` gives it: that response if none was started,
    then the exception raised on for the server to log (a layer of calls per request fewer than
    that middleware inside this one).

    ``hot``: the hot path (``app.hotpath.HotPath``) when nothing stands between it and this
    context: its answers are sent from here, with the request id among their headers, rather
    than through a layer of its own and a ``send`` wrapped to add the id (three Python calls
    of a one-row request)."""

    def __init__(
        self,
        app: ASGIApp,
        metrics: Metrics,
        on_error: Callable[[Scope, Exception], Awaitable[ASGIApp]] | None = None,
        hot: HotAnswers | None = None,
    ) -> None:
        self.app = app
        self.metrics = metrics
        self.on_error = on_error
        self.hot = hot

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = None
        for key, value in scope["headers"]:
            if key == b"x-request-id":
                text = value.decode("latin-1")
                request_id = text if _VALID_ID.match(text) else None
                break
        request_id = request_id or _request_ids.new()
        token = request_id_var.set(request_id)
        started = time.perf_counter()
        status = 0  # no answer started
        raw_id = request_id.encode()

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", []), (b"x-request-id", raw_id)]
            await send(message)

        try:
            hot = self.hot
            answer = await hot.answer(scope, receive) if hot is not None else None
            if answer is None:
                await self.app(scope, receive, send_with_id)
            else:
                headers = answer[1]
                headers.append((b"x-request-id", raw_id))
                status = answer[0]
                await send({"type": "http.response.start", "status": status, "headers": headers})
                await send({"type": "http.response.body", "body": answer[2]})
        except Exception as exc:
            if self.on_error is not None:
                response = await self.on_error(scope, exc)
                if not status:
                    await response(scope, receive, send_with_id)
            raise
        finally:
            status = status or 500
            duration = time.perf_counter() - started
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            method = scope["method"]
            metrics = self.metrics
            metrics.request_done(route, method, status, duration)
            tally = metrics.tally
            if tally.owner is None:
                tally.flush()
            elif tally.immediate:
                tally.flush_soon()
            state = scope.get("state") or {}
            if access_log.isEnabledFor(logging.INFO):
                writer = _access_writer
                if writer is not None:
                    writer.write(
                        request_id, method, scope["path"], status, duration=duration, state=state
                    )
                else:  # logging not configured by serve_app (tests, embedding): plain logging
                    access_log.info(
                        _access_message(method, scope["path"], status, duration, state),
                        extra=_access_fields(method, scope["path"], status, duration, state),
                    )
            request_id_var.reset(token)


def _access_message(
    method: str, path: str, status: int, duration: float, state: dict[str, Any]
) -> str:
    model = state.get("model")
    return f"{method} {path} {status} {duration * 1000:.1f}ms{' ' + model if model else ''}"


def _access_fields(
    method: str, path: str, status: int, duration: float, state: dict[str, Any]
) -> dict[str, Any]:
    return {
        "method": method,
        "path": path,
        "status": status,
        "duration_ms": round(duration * 1000, 3),
        "rows": state.get("rows"),
        "model_version": state.get("model_version"),
        "key_id": state.get("key_id"),
        "model": state.get("model"),
        "model_role": state.get("model_role"),
    }


class AccessLog:
    """The access lines, one per request: noted on the request's thread (a tuple appended),
    formatted on the event loop in batches, a step of ``FORMAT_STEP`` lines per callback every
    ``FLUSH_SECONDS``, and written by a thread of their own.

    Handing each record to a writer thread, as ``logging``'s queue does, wakes that thread per
    request; on a busy 2-core machine the switches cost a one-row request about half its time
    (measured in ``make bench``). Formatting on the writer thread (the tenth session) cost the
    GIL instead: each of its steps had to take the GIL back from a busy event loop, a forced
    switch per 16 lines, ~30 us of CPU per request at 16 connections (CPU per request, in
    turn, against the service with the access log off; ``bench/results/``). On the loop, in
    callbacks of a few lines, the requests ready meanwhile run between the steps and no thread
    waits for the GIL; the writer thread wakes once per batch to write it (the write lets go of
    the GIL). Lines noted where no event loop runs (or left by a loop that stopped) are
    formatted by the writer thread. The lines are exactly what the service's log format gives
    (text or JSON), in order, and they are flushed at exit.
    """

    FLUSH_SECONDS = 0.05
    FORMAT_STEP = 32
    """Lines formatted per callback on the loop (~60-120 us)."""
    STALE_SECONDS = 1.0
    """Lines noted this long ago and not yet taken by a loop are formatted by the writer."""

    def __init__(self, fmt: str, stream: Any) -> None:
        self.json = fmt == "json"
        self.stream = stream
        self.lines: list[tuple[float, str, str, str, int, float, dict[str, Any]]] = []
        self._timer: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._noted_at = 0.0
        # The batch being formatted, how far, and its text so far (under ``_lock``).
        self._batch: list[tuple[float, str, str, str, int, float, dict[str, Any]]] = []
        self._done = 0
        self._parts: list[str] = []
        self._texts: list[str] = []
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="access-log", daemon=True)
        self._thread.start()

    def write(
        self,
        request_id: str,
        method: str,
        path: str,
        status: int,
        *,
        duration: float,
        state: dict[str, Any],
    ) -> None:
        """Note a request's line (``state``: what ``access_notes`` says of it, not changed
        after this)."""
        self.lines.append((time.time(), request_id, method, path, status, duration, state))
        if self._timer is None:
            self._schedule()

    def _schedule(self) -> None:
        """The loop formats what is noted ``FLUSH_SECONDS`` from now (or, with no loop
        running here, the writer thread at once)."""
        self._noted_at = time.monotonic()
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self._wake.set()
            return
        self._loop = loop
        self._timer = loop.call_later(self.FLUSH_SECONDS, self._step)

    def _step(self) -> None:
        """On the loop: format the next ``FORMAT_STEP`` lines; again once the requests ready
        meanwhile ran, until the batch is done."""
        with self._lock:
            if self._done >= len(self._batch):  # a new batch: what is noted now
                self._timer = None
                self._batch, self.lines = self.lines, []
                self._done = 0
            more = self._format_some(self.FORMAT_STEP)
        if more:
            # This step's own loop (``_loop`` is the last loop a line was noted on).
            asyncio.get_running_loop().call_soon(self._step)
            return
        self._wake.set()
        if self.lines and self._timer is None:
            self._schedule()  # noted while the batch was formatted; no write came since

    def _format_some(self, n: int) -> bool:
        """Format ``n`` more lines of the batch (under ``_lock``); whether any are left. A
        finished batch's text goes to the writer."""
        end = self._done + n
        if self._batch:
            self._parts.append(self.format(self._batch[self._done : end]))
        self._done = end
        if end < len(self._batch):
            return True
        if self._parts:
            self._texts.append("".join(self._parts))
        self._batch, self._parts, self._done = [], [], 0
        return False

    def flush(self) -> None:
        """Format and write everything noted, here and now (in order: a batch the loop is
        formatting first)."""
        with self._lock:
            self._format_some(len(self._batch))
            self._batch, self.lines = self.lines, []
            self._format_some(len(self._batch))
        self._write_out()

    def _write_out(self) -> None:
        with self._lock:
            texts, self._texts = self._texts, []
        if not texts:
            return
        try:
            self.stream.write("".join(texts))
            self.stream.flush()
        except (OSError, ValueError):
            pass  # stderr closed at exit: nothing left to tell

    def format(self, noted: list[tuple[float, str, str, str, int, float, dict[str, Any]]]) -> str:
        """The lines of the noted requests, in order, each ending in a newline."""
        pattern = "%Y-%m-%dT%H:%M:%S" if self.json else "%Y-%m-%d %H:%M:%S"
        name = access_log.name
        last_second, stamp = -1, ""
        lines = []
        for now, request_id, method, path, status, duration, state in noted:
            second = int(now)
            if second != last_second:
                last_second, stamp = second, time.strftime(pattern, time.localtime(second))
            message = _access_message(method, path, status, duration, state)
            if self.json:
                entry = {
                    "time": stamp,
                    "level": "INFO",
                    "logger": name,
                    "message": message,
                    "request_id": request_id,
                    **_access_fields(method, path, status, duration, state),
                }
                lines.append(orjson.dumps(entry, default=str).decode())
            else:
                millis = int((now - second) * 1000)
                lines.append(f"{stamp},{millis:03d} INFO [{request_id}] {name}: {message}")
        lines.append("")
        return "\n".join(lines)

    def _run(self) -> None:
        while not self._closed:
            self._wake.wait(self.FLUSH_SECONDS)
            self._wake.clear()
            self._write_out()
            if self.lines and (
                self._loop is None or time.monotonic() - self._noted_at > self.STALE_SECONDS
            ):
                # Noted where no loop runs, or its loop stopped before its timer: here.
                self._timer = None
                self.flush()

    def close(self) -> None:
        self._closed = True
        self._wake.set()
        self._thread.join(timeout=2)
        self.flush()


_access_writer: AccessLog | None = None


class RequestIdFilter(logging.Filter):
    """Stamp every log record with the id of the request it belongs to (or "-")."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id_var.get() or "-"
        return True


_ACCESS_FIELDS = (
    "method",
    "path",
    "status",
    "rows",
    "duration_ms",
    "model_version",
    "model",
    "model_role",
    "key_id",
)


class JsonFormatter(logging.Formatter):
    """One JSON object per line; never the payload (nothing logs it)."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": getattr(record, "request_id", None),
        }
        for field in _ACCESS_FIELDS:
            if hasattr(record, field):
                entry[field] = getattr(record, field)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(entry, default=str).decode()


class _EnqueueRecord(logging.handlers.QueueHandler):
    """Hands records to the writer thread as they are: formatting and the write happen there.

    (The stock ``QueueHandler.prepare`` formats on the caller's thread, which is the request's.)
    Filters still run here, on the request's thread, so the request id is stamped in time.
    """

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        return record


_listener: logging.handlers.QueueListener | None = None


def configure_logging(fmt: str = "text", level: str = "INFO") -> None:
    """Root logging for the service: text or JSON lines, request ids on every line.

    Lines are written by background threads: other records from an in-memory queue (a record
    pays for the put, not for its formatting or the write to stderr), the access lines in
    batches (``AccessLog``). Both are flushed at exit.
    """
    global _listener, _access_writer  # noqa: PLW0603
    handler = logging.StreamHandler()
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)s [%(request_id)s] %(name)s: %(message)s")
        )
    if _listener is not None:
        _listener.stop()
    if _access_writer is not None:
        _access_writer.close()
    _access_writer = AccessLog(fmt, handler.stream)
    atexit.register(_access_writer.close)
    records: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
    enqueue = _EnqueueRecord(records)
    enqueue.addFilter(RequestIdFilter())
    _listener = logging.handlers.QueueListener(records, handler, respect_handler_level=True)
    _listener.start()
    atexit.register(_listener.stop)
    root = logging.getLogger()
    root.handlers[:] = [enqueue]
    root.setLevel(level)
    for noisy in ("mlflow", "alembic", "urllib3", "httpx"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    for name in ("uvicorn", "uvicorn.error"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
    silence_uvicorn_access()


def silence_uvicorn_access() -> None:
    """No uvicorn access lines: the request context writes one per request (with its id,
    rows, model version), and uvicorn's would be a second one in every worker process.

    Not by level alone: uvicorn's protocol asks once per connection whether its access logger
    has handlers (its own or, propagating, the root's), and if so builds each line's
    arguments (the client's address, the path quoted by ``urllib``) before ``info`` drops
    them: a few microseconds of a one-row request. Without handlers and propagation it skips
    the line altogether."""
    uvicorn_access = logging.getLogger("uvicorn.access")
    uvicorn_access.handlers[:] = []
    uvicorn_access.propagate = False
    uvicorn_access.setLevel(logging.WARNING)
