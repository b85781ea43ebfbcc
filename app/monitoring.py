"""Watch the model in production: feature drift against the training data, and an inference log.

Both hang off one hook, ``Metrics.observe_scored`` (called by ``dataplane.score`` with the parsed
matrix and its predictions), and both do their work off the hot path:

* ``DriftMonitor`` copies the scored rows into a bounded ring buffer (the last ``DRIFT_WINDOW``
  rows; a slice copy under a lock per request) and, every ``DRIFT_EVERY_SECONDS``, in a thread,
  computes the PSI of each feature and of the predictions against the model's reference profile
  (``scoring.drift``). **Per worker**: each server process keeps its own window. ``/monitoring``
  answers for the worker that serves the call (its pid is in the answer); on ``/metrics`` the
  ``model_feature_psi`` and ``model_prediction_psi`` gauges show, with several workers, the
  highest PSI among the live workers (Prometheus ``livemax``): an alert fires if any worker's
  traffic drifted. Workers share traffic at random, so their windows sample the same population.
* ``InferenceLog`` samples rows into a bounded queue (never blocks: rows that do not fit are
  dropped and counted) and a writer thread writes them as Parquet files, rolled by size and age,
  each written under a hidden temporary name and renamed (local disk) or uploaded whole (object
  stores), so a crash leaves only complete files. A row is its request id, time, model name and
  version, the features and the prediction: nothing else of the request.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import threading
import time
from collections import deque
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import numpy as np

from app.config import Settings
from app.model_holder import ModelHolder
from app.observability import Metrics, request_id_var
from scoring.drift import ACT, WATCH, status_of, window_psi
from scoring.loading import LoadedModel

FLUSH_ROWS = 32
"""Scored rows noted before they are copied into the drift window at once."""

log = logging.getLogger(__name__)

TOP_FEATURES = 10
"""How many of the most drifted features ``/monitoring`` lists."""
WRITER_POLL_SECONDS = 0.5
"""How often the inference log's writer takes what is queued."""


def _model_labels(model: LoadedModel) -> tuple[str, str]:
    return model.registered_name or model.uri, model.version or ""


def _iso(ts: float | None) -> str | None:
    return None if ts is None else datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds")


class DriftMonitor:
    """The last ``window`` scored rows of the current model, and their PSI against its profile."""

    def __init__(self, window: int, min_rows: int, metrics: Metrics) -> None:
        self.window = window
        self.min_rows = min(min_rows, window)
        self._lock = threading.Lock()
        self._model: LoadedModel | None = None
        self._x: np.ndarray | None = None
        self._p: np.ndarray | None = None
        self._columns: list[int] = []
        self._next = 0
        self._filled = 0
        self.rows_seen = 0
        self._computed_seen = -1
        self.result: dict[str, Any] | None = None
        kw: dict[str, Any] = {"registry": None if metrics.multiprocess else metrics.registry}
        self.feature_psi = _gauge(
            "model_feature_psi",
            "PSI of a feature in the drift window against the training data",
            ["feature", "model", "version"],
            kw,
        )
        self.prediction_psi = _gauge(
            "model_prediction_psi",
            "PSI of the predictions in the drift window against the training predictions",
            ["model", "version"],
            kw,
        )
        self._published: tuple[tuple[str, str], tuple[str, ...]] | None = None
        self._pending: deque[tuple[np.ndarray, np.ndarray, LoadedModel]] = deque()
        self._pending_rows = 0

    def observe(self, x: np.ndarray, predictions: np.ndarray, model: LoadedModel) -> None:
        """Note scored rows for the window: the hot-path part, an append. They are copied in
        ``FLUSH_ROWS`` at a time (one-row requests paid a lock and two slice copies each)."""
        if model is not self._model and not self._adopt(model):
            return
        self._pending.append((x, predictions, model))
        self._pending_rows += len(x)  # from several threads a count may be lost: flushes later
        if self._pending_rows >= FLUSH_ROWS:
            self.flush()

    def flush(self) -> None:
        """Copy the noted rows of the current model into the window."""
        with self._lock:
            self._pending_rows = 0
            items = []
            with contextlib.suppress(IndexError):
                while True:
                    items.append(self._pending.popleft())
            kept = [(x, p) for x, p, m in items if m is self._model]
            if not kept or self._x is None or self._p is None:
                return
            x = kept[0][0] if len(kept) == 1 else np.concatenate([x for x, _ in kept])
            p = kept[0][1] if len(kept) == 1 else np.concatenate([p for _, p in kept])
            self._write(x, p)

    def _write(self, x: np.ndarray, predictions: np.ndarray) -> None:
        """Rows into the ring (under the lock): two slice copies at most."""
        assert self._x is not None and self._p is not None
        n = len(x)
        self.rows_seen += n
        w = self.window
        if n > w:
            x, predictions, n = x[-w:], predictions[-w:], w
        start = self._next
        first = min(n, w - start)
        self._x[start : start + first] = x[:first]
        self._p[start : start + first] = predictions[:first]
        if n > first:
            self._x[: n - first] = x[first:]
            self._p[: n - first] = predictions[first:]
        self._next = (start + n) % w
        self._filled = min(w, self._filled + n)

    def _adopt(self, model: LoadedModel) -> bool:
        """Start a new window for a newly served model; ignore rows of an older one."""
        with self._lock:
            current = self._model
            if current is not None and model.loaded_at < current.loaded_at:
                return False  # a request that started on the previous model
            self._model = model
            self._next = self._filled = self.rows_seen = 0
            self._computed_seen = -1
            self.result = None
            profile = model.profile
            if profile is None:
                self._x = self._p = None
                return True
            features = list(model.predictor.features)
            self._columns = [features.index(f) for f in profile.features]
            # Column-major: big bodies arrive column-major (Parquet, Arrow) and are copied in
            # as they are; the PSI reads the window column by column.
            self._x = np.empty((self.window, len(features)), dtype=np.float64, order="F")
            self._p = np.empty(self.window, dtype=np.float64)
        return True

    def compute(self) -> dict[str, Any] | None:
        """PSI of the window now (in a worker thread); publishes the gauges. ``None``: no rows."""
        self.flush()
        with self._lock:
            model, filled, seen = self._model, self._filled, self.rows_seen
            if model is None or model.profile is None or self._x is None or self._p is None:
                return None
            if filled == 0 or seen == self._computed_seen:
                return self.result
            x = self._x[:filled].copy(order="F")
            p = self._p[:filled].copy()
            columns = list(self._columns)
        profile = model.profile
        features, prediction = window_psi(profile, x, p, columns)
        name, version = _model_labels(model)
        self._retire_labels((name, version))
        for feature, value in zip(profile.features, features.tolist(), strict=True):
            self.feature_psi.labels(feature, name, version).set(value)
        self.prediction_psi.labels(name, version).set(prediction)
        self._published = ((name, version), profile.features)
        order = np.argsort(-np.nan_to_num(features, nan=-1.0))
        result = {
            "model": name,
            "version": version,
            "computed_at": time.time(),
            "rows": filled,
            "rows_seen": seen,
            "prediction_psi": round(prediction, 6),
            "max_feature_psi": round(float(np.nanmax(features)), 6) if features.size else None,
            "features_over_watch": int(np.count_nonzero(features >= WATCH)),
            "features_over_act": int(np.count_nonzero(features >= ACT)),
            "feature_psi": {
                f: round(v, 6) for f, v in zip(profile.features, features.tolist(), strict=True)
            },
            "most_drifted": [
                {
                    "feature": profile.features[i],
                    "psi": round(float(features[i]), 6),
                    "status": status_of(float(features[i])),
                    "mean": _mean(x[:, columns[i]]),
                    "reference_mean": _none_if_nan(profile.columns[i].mean),
                    "reference_std": _none_if_nan(profile.columns[i].std),
                    "missing_rate": round(float(np.isnan(x[:, columns[i]]).mean()), 6),
                    "reference_missing_rate": profile.columns[i].missing_rate,
                }
                for i in order[:TOP_FEATURES]
            ],
        }
        with self._lock:
            if self._model is model:
                self.result = result
                self._computed_seen = seen
        return result

    def _retire_labels(self, keep: tuple[str, str]) -> None:
        """Drop the gauges of a model no longer served (in one process; with several workers the
        shared files keep the last values, labelled with the old version)."""
        if self._published is None or self._published[0] == keep:
            return
        (name, version), features = self._published
        with contextlib.suppress(KeyError):
            self.prediction_psi.remove(name, version)
        for feature in features:
            with contextlib.suppress(KeyError):
                self.feature_psi.remove(feature, name, version)

    def report(self, model: LoadedModel | None, every: float) -> dict[str, Any]:
        """What ``/monitoring`` says about drift for the model served now."""
        base: dict[str, Any] = {
            "window_size": self.window,
            "every_seconds": every,
            "min_rows": self.min_rows,
            "thresholds": {"watch": WATCH, "act": ACT},
            "scope": f"this worker (pid {os.getpid()})",
        }
        if model is None:
            return {**base, "status": "no_model", "reason": "no model is loaded yet"}
        name, version = _model_labels(model)
        base.update(model=name, version=version)
        if model.profile is None:
            return {
                **base,
                "status": "no_profile",
                "reason": model.profile_note or "the model has no reference profile",
            }
        base["reference"] = {"rows": model.profile.rows, "source": model.profile.source}
        self.flush()
        with self._lock:
            same = self._model is model
            rows, seen, result = (
                (self._filled, self.rows_seen, self.result) if same else (0, 0, None)
            )
        base.update(rows_in_window=rows, rows_seen=seen)
        if result is None or result["rows"] < self.min_rows:
            have = 0 if result is None else result["rows"]
            return {
                **base,
                "status": "warming_up",
                "reason": f"{have} rows in the last computed window; a verdict needs "
                f"{self.min_rows} (computed every {every:g}s)",
                "last": result and _summary(result),
            }
        worst = max(result["max_feature_psi"] or 0.0, result["prediction_psi"])
        return {**base, "status": status_of(worst), **_summary(result)}


def _summary(result: dict[str, Any]) -> dict[str, Any]:
    return {
        "computed_at": _iso(result["computed_at"]),
        "computed_rows": result["rows"],
        "computed_rows_seen": result["rows_seen"],
        "prediction_psi": result["prediction_psi"],
        "max_feature_psi": result["max_feature_psi"],
        "features_over_watch": result["features_over_watch"],
        "features_over_act": result["features_over_act"],
        "most_drifted": result["most_drifted"],
        "feature_psi": result["feature_psi"],
    }


def _mean(values: np.ndarray) -> float | None:
    present = values[~np.isnan(values)]
    return round(float(present.mean()), 6) if present.size else None


def _none_if_nan(value: float) -> float | None:
    return None if math.isnan(value) else value


def _gauge(name: str, doc: str, labels: list[str], kw: dict[str, Any]) -> Any:
    from prometheus_client import Gauge

    return Gauge(name, doc, labels, multiprocess_mode="livemax", **kw)


def _counter(name: str, doc: str, kw: dict[str, Any]) -> Any:
    from prometheus_client import Counter

    return Counter(name, doc, **kw)


@dataclass
class _Batch:
    request_id: str
    at: float
    model: str
    version: str
    features: tuple[str, ...]
    x: np.ndarray
    predictions: np.ndarray


def redact_url(url: str) -> str:
    """``url`` without a password or user (s3://key:secret@bucket -> s3://bucket)."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port:
        host += f":{parts.port}"
    return urlunsplit(parts._replace(netloc=host))


class InferenceLog:
    """Sampled scored rows to Parquet files under a folder or fsspec URL, from a writer thread."""

    def __init__(
        self,
        url: str,
        *,
        sample: float,
        roll_bytes: int,
        roll_seconds: float,
        queue_rows: int,
        metrics: Metrics,
    ) -> None:
        import fsspec
        from fsspec.implementations.local import LocalFileSystem

        self.url = url
        self.sample = sample
        self.roll_bytes = roll_bytes
        self.roll_seconds = roll_seconds
        self.queue_rows = queue_rows
        self.fs, self.root = fsspec.core.url_to_fs(url)
        self.local = isinstance(self.fs, LocalFileSystem)
        self.fs.makedirs(self.root, exist_ok=True)
        self._cond = threading.Condition()
        self._queue: deque[_Batch] = deque()
        self._pending = 0
        self._closing = False
        self._rng = np.random.default_rng()
        self._thread: threading.Thread | None = None
        self._seq = 0
        self.files = 0
        self.rows_written = 0
        self.rows_dropped = 0
        kw: dict[str, Any] = {"registry": None if metrics.multiprocess else metrics.registry}
        self.written_total = _counter("inference_log_rows", "Rows written to the inference log", kw)
        self.dropped_total = _counter(
            "inference_log_dropped_rows",
            "Rows not logged: the writer's queue was full, or a write failed",
            kw,
        )
        self.files_total = _counter("inference_log_files", "Inference log files written", kw)

    def observe(self, x: np.ndarray, predictions: np.ndarray, model: LoadedModel) -> None:
        """Queue the sampled rows of one request; never blocks, drops (and counts) when full."""
        request_id = request_id_var.get() or ""
        at = time.time()
        with self._cond:
            if self.sample < 1.0:
                keep = self._rng.random(len(x)) < self.sample
                x, predictions = x[keep], predictions[keep]
            n = len(x)
            if n == 0:
                return
            if self._pending + n > self.queue_rows or self._closing:
                self.rows_dropped += n
                self.dropped_total.inc(n)
                return
            name, version = _model_labels(model)
            features = tuple(model.predictor.features)
            self._queue.append(_Batch(request_id, at, name, version, features, x, predictions))
            self._pending += n
            # Wake the writer only for a big backlog: a wake-up per request would cost the
            # request a thread switch. Otherwise it looks every WRITER_POLL_SECONDS.
            if self._pending >= self.queue_rows // 4:
                self._cond.notify()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="inference-log", daemon=True)
        self._thread.start()

    def close(self, timeout: float = 30.0) -> None:
        """Write what is queued and stop the writer."""
        with self._cond:
            self._closing = True
            self._cond.notify()
        if self._thread is not None:
            self._thread.join(timeout)

    def status(self) -> dict[str, Any]:
        with self._cond:
            pending = self._pending
        return {
            "enabled": True,
            "url": redact_url(self.url),
            "sample": self.sample,
            "rows_written": self.rows_written,
            "rows_dropped": self.rows_dropped,
            "rows_queued": pending,
            "files": self.files,
            "roll_bytes": self.roll_bytes,
            "roll_seconds": self.roll_seconds,
        }

    def _run(self) -> None:
        batches: list[_Batch] = []
        size = 0
        opened = 0.0
        while True:
            with self._cond:
                if not self._closing:
                    wait = WRITER_POLL_SECONDS
                    if batches:
                        wait = min(wait, self.roll_seconds - (time.monotonic() - opened))
                    self._cond.wait(max(wait, 0.0))
                taken = list(self._queue)
                self._queue.clear()
                closing = self._closing
            for batch in taken:
                if batches and batch.features != batches[0].features:
                    self._flush(batches)  # another model's columns: another file
                    batches, size = [], 0
                if not batches:
                    opened = time.monotonic()
                batches.append(batch)
                size += batch.x.nbytes + batch.predictions.nbytes + 64 * len(batch.x)
                if size >= self.roll_bytes:
                    self._flush(batches)
                    batches, size = [], 0
            if batches and (closing or time.monotonic() - opened >= self.roll_seconds):
                self._flush(batches)
                batches, size = [], 0
            if closing:
                with self._cond:
                    if not self._queue:
                        return

    def _flush(self, batches: list[_Batch]) -> None:
        rows = sum(len(b.x) for b in batches)
        try:
            self._write(batches, rows)
        except Exception:
            log.exception(
                "could not write %d rows to the inference log %s", rows, redact_url(self.url)
            )
            self.rows_dropped += rows
            self.dropped_total.inc(rows)
        else:
            self.rows_written += rows
            self.files += 1
            self.written_total.inc(rows)
            self.files_total.inc()
        with self._cond:
            self._pending -= rows

    def _write(self, batches: list[_Batch], rows: int) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        def repeat(values: list[Any]) -> np.ndarray:
            return np.repeat(np.array(values, dtype=object), [len(b.x) for b in batches])

        x = np.concatenate([b.x for b in batches])
        columns: dict[str, Any] = {
            "request_id": pa.array(repeat([b.request_id for b in batches]), pa.string()),
            "time": pa.array(
                np.repeat(
                    np.array([int(b.at * 1e6) for b in batches], dtype="datetime64[us]"),
                    [len(b.x) for b in batches],
                ),
                pa.timestamp("us", tz="UTC"),
            ),
            "model": pa.array(repeat([b.model for b in batches]), pa.string()),
            "version": pa.array(repeat([b.version for b in batches]), pa.string()),
        }
        for j, feature in enumerate(batches[0].features):
            columns[feature] = pa.array(x[:, j], pa.float64())
        columns["prediction"] = pa.array(
            np.concatenate([b.predictions for b in batches]), pa.float64()
        )
        table = pa.table(columns)
        now = datetime.now(UTC)
        self._seq += 1
        folder = f"{self.root.rstrip('/')}/date={now:%Y-%m-%d}"
        name = f"part-{now:%Y%m%dT%H%M%S%f}-{os.getpid()}-{self._seq:06d}.parquet"
        self.fs.makedirs(folder, exist_ok=True)
        if self.local:
            # Hidden while written (readers skip names starting with "."), renamed when whole.
            tmp = os.path.join(folder, f".{name}.tmp")
            with open(tmp, "wb") as handle:
                pq.write_table(table, handle)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, os.path.join(folder, name))
        else:
            # Object stores publish an object only once its upload completes: write once.
            with self.fs.open(f"{folder}/{name}", "wb") as handle:
                pq.write_table(table, handle)
        log.debug("inference log: %d rows to %s", rows, name)


class Monitoring:
    """Drift and the inference log of one app: the scored-rows hooks and the background task."""

    def __init__(self, settings: Settings, metrics: Metrics, holder: ModelHolder) -> None:
        self.settings = settings
        self.holder = holder
        self.drift: DriftMonitor | None = None
        self.log: InferenceLog | None = None
        if settings.drift_window > 0:
            self.drift = DriftMonitor(settings.drift_window, settings.drift_min_rows, metrics)
            metrics.scored_sinks.append(self.drift.observe)
        if settings.inference_log_dir:
            self.log = InferenceLog(
                settings.inference_log_dir,
                sample=1.0
                if settings.inference_log_sample is None
                else settings.inference_log_sample,
                roll_bytes=settings.inference_log_roll_bytes,
                roll_seconds=settings.inference_log_roll_seconds,
                queue_rows=settings.inference_log_queue_rows,
                metrics=metrics,
            )
            metrics.scored_sinks.append(self.log.observe)

    async def run(self) -> None:
        """The lifespan's task: start the log writer, compute drift on schedule, flush at exit."""
        if self.log is not None:
            self.log.start()
        try:
            while True:
                await asyncio.sleep(self.settings.drift_every_seconds)
                if self.drift is not None:
                    try:
                        await asyncio.to_thread(self.drift.compute)
                    except Exception:
                        log.exception("drift computation failed")
        finally:
            if self.log is not None:
                await asyncio.to_thread(self.log.close)

    def report(self) -> dict[str, Any]:
        """The body of ``GET /monitoring``."""
        model = self.holder.current
        every = self.settings.drift_every_seconds
        if self.drift is not None:
            drift = self.drift.report(model, every)
        else:
            drift = {"status": "disabled", "reason": "DRIFT_WINDOW is 0: drift is not measured"}
        return {
            "drift": drift,
            "inference_log": (
                self.log.status()
                if self.log is not None
                else {"enabled": False, "reason": "INFERENCE_LOG_DIR is not set"}
            ),
        }
