"""Request ids, access logs (text or JSON lines) and Prometheus metrics.

One pure-ASGI middleware does all three per request, so the hot path pays for one wrapper, not
three. With several workers, metrics are shared through ``PROMETHEUS_MULTIPROC_DIR`` (set by
``python -m app``) and ``/metrics`` adds up every worker's figures.
"""

from __future__ import annotations

import contextvars
import json
import logging
import os
import re
import time
import uuid
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import numpy as np
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
_BIN_LABELS = tuple(f"{edge:g}" for edge in (*PROBABILITY_BUCKETS, float("inf")))
_PROBABILITY = "prediction_probability"


class Metrics:
    """The service's Prometheus metrics, on their own registry (one per app)."""

    def __init__(self, multiprocess_dir: str | None = None) -> None:
        """``multiprocess_dir``: Prometheus' shared folder when several workers serve (then the
        library itself reads ``PROMETHEUS_MULTIPROC_DIR``, which ``python -m app`` sets)."""
        self.multiprocess = bool(multiprocess_dir)
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
        self.shed = Counter("requests_shed_total", "Requests refused with 503 (overload)", **kw)
        # Who else sees every scored batch (drift, the inference log: app.monitoring).
        self.scored_sinks: list[Callable[[np.ndarray, np.ndarray, Any], None]] = []

    def render(self) -> tuple[bytes, str]:
        if self.multiprocess:
            source = CollectorRegistry()
            prom_multiprocess.MultiProcessCollector(source)  # type: ignore[no-untyped-call]
        else:
            source = self.registry
        registry = CollectorRegistry(auto_describe=False)
        registry.register(_BinsAsHistogram(source))
        return generate_latest(registry), CONTENT_TYPE_LATEST

    def observe_predictions(self, values: np.ndarray) -> None:
        """Count a batch of probabilities into the histogram: one step per bin, not per value."""
        values = values[np.isfinite(values)] if values.ndim == 1 else values.ravel()
        if values.size == 0:
            return
        self.rows.inc(values.size)
        edges = np.array((*PROBABILITY_BUCKETS, np.inf))
        counts = np.bincount(np.searchsorted(edges, values, side="left"), minlength=len(edges))
        for label, count in zip(_BIN_LABELS, counts.tolist(), strict=False):
            if count:
                self.probability_bins.labels(label).inc(count)
        self.probability_sum.inc(float(values.sum()))

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


class _BinsAsHistogram(Collector):
    """Everything ``source`` collects, with the probability bin counters as one histogram."""

    def __init__(self, source: CollectorRegistry) -> None:
        self.source = source

    def collect(self) -> Any:
        bins: dict[str, float] = {}
        total = 0.0
        for family in self.source.collect():
            if family.name == f"{_PROBABILITY}_bin":
                for sample in family.samples:
                    if sample.name.endswith("_total"):
                        le = sample.labels["le"]
                        bins[le] = bins.get(le, 0.0) + sample.value
            elif family.name == f"{_PROBABILITY}_raw_sum":
                total += sum(s.value for s in family.samples if s.name.endswith("_total"))
            else:
                yield family
        cumulative, buckets = 0.0, []
        for label in _BIN_LABELS:
            cumulative += bins.get(label, 0.0)
            buckets.append(("+Inf" if label == "inf" else label, cumulative))
        hist: Metric = HistogramMetricFamily(
            _PROBABILITY, "Predicted P(target = 1)", buckets=buckets, sum_value=total
        )
        yield hist


def mark_worker_dead(multiprocess_dir: str | None) -> None:
    """On worker exit: drop its live gauges from the shared figures."""
    if multiprocess_dir:
        prom_multiprocess.mark_process_dead(os.getpid(), multiprocess_dir)  # type: ignore[no-untyped-call]


class RequestContext:
    """Request id in and out, one access-log line and the request metrics per HTTP request."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

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
        request_id = request_id or uuid.uuid4().hex
        token = request_id_var.set(request_id)
        started = time.perf_counter()
        status = 500
        raw_id = request_id.encode()

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", []), (b"x-request-id", raw_id)]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            duration = time.perf_counter() - started
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            method = scope["method"]
            self.metrics.requests.labels(route, method, str(status)).inc()
            self.metrics.latency.labels(route).observe(duration)
            state = scope.get("state") or {}
            access_log.info(
                "%s %s %s %.1fms",
                method,
                scope["path"],
                status,
                duration * 1000,
                extra={
                    "method": method,
                    "path": scope["path"],
                    "status": status,
                    "duration_ms": round(duration * 1000, 3),
                    "rows": state.get("rows"),
                    "model_version": state.get("model_version"),
                },
            )
            request_id_var.reset(token)


class RequestIdFilter(logging.Filter):
    """Stamp every log record with the id of the request it belongs to (or "-")."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id_var.get() or "-"
        return True


_ACCESS_FIELDS = ("method", "path", "status", "rows", "duration_ms", "model_version")


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
        return json.dumps(entry, default=str)


def configure_logging(fmt: str = "text", level: str = "INFO") -> None:
    """Root logging for the service: text or JSON lines, request ids on every line."""
    handler = logging.StreamHandler()
    handler.addFilter(RequestIdFilter())
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)s [%(request_id)s] %(name)s: %(message)s")
        )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for noisy in ("mlflow", "alembic", "urllib3", "httpx"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
