"""The data plane: read a body, decode it by the contract, score it. Shared by the scoring routes.

Routes stay thin (HTTP in, HTTP out); this module knows the limits, the threads and the timeouts.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import orjson
from anyio import CapacityLimiter, to_thread
from starlette.requests import ClientDisconnect

from app.admission import InFlight
from app.config import Settings
from app.limits import (
    CHUNKED_STEP,
    DECODED_COPIES,
    PER_REQUEST_BYTES,
    Admission,
    Reservation,
    format_of,
    need_bytes,
)
from app.loops import PerLoop
from app.observability import Metrics
from scoring.contract.decode import parse_body
from scoring.contract.media import media_type
from scoring.errors import BodyTimeout, PayloadTooLarge, ScoringTimeout
from scoring.explain import explain, reasons
from scoring.loading import LoadedModel


class Incoming(Protocol):
    """What the data plane reads of a request: Starlette's ``Request`` (the FastAPI routes')
    or the hot path's own ``HotRequest``."""

    @property
    def scope(self) -> MutableMapping[str, Any]: ...

    @property
    def receive(self) -> Callable[[], Awaitable[MutableMapping[str, Any]]]: ...

    @property
    def headers(self) -> Mapping[str, str]: ...


class Unread:
    """The type of ``UNREAD``: a header the caller has not read."""


UNREAD = Unread()


async def read_body(
    request: Incoming,
    settings: Settings,
    metrics: Metrics,
    reservation: Reservation | None = None,
    *,
    declared: int | Unread | None = UNREAD,
) -> bytes:
    """The whole body within ``body_timeout_seconds`` and, after a grace period, at
    ``body_min_rate_bytes_per_second`` at least (else 408), refusing (413) as soon as it is
    known to exceed ``max_body_bytes``. A body without ``Content-Length`` grows its memory
    ``reservation`` as it arrives (503 when the budget has no room). ``declared``: the
    ``Content-Length`` if the caller read it already (``declared_size``)."""
    limit = settings.max_body_bytes
    if isinstance(declared, Unread):
        declared = declared_size(request)
    if declared is not None and declared > limit:
        raise PayloadTooLarge(f"the body is {declared} bytes; the limit is {limit}")
    task = asyncio.current_task()
    assert task is not None
    # The task's loop: Python 3.11's get_running_loop() makes a getpid() system call each time.
    loop = task.get_loop()
    started = loop.time()
    last = started + settings.body_timeout_seconds
    rate = settings.body_min_rate_bytes_per_second
    grace = settings.body_min_rate_grace_seconds

    chunks: list[bytes] = []
    size = 0
    covered = declared if declared is not None else 0
    receive = request.receive
    # Not asyncio.timeout (a timer made and cancelled per request, ~5-9 us of a one-row
    # request): the loop's ``BodyDeadlines`` checks every request's deadline on one timer. The
    # ASGI messages are read here rather than through ``request.stream()``: a body that came
    # in one message (every small request) costs one await.
    deadlines = BodyDeadlines.of(loop)
    # Received bytes buy time at the minimum rate, after the grace period.
    deadlines.watch(task, min(last, started + grace) if rate else last)
    try:
        more = True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise ClientDisconnect()
            chunk = message.get("body", b"")
            more = message.get("more_body", False)
            if not chunk:
                continue
            size += len(chunk)
            if size > limit:
                raise PayloadTooLarge(f"the body is over the limit of {limit} bytes")
            if reservation is not None and size > covered:
                step = max(CHUNKED_STEP, size - covered)
                reservation.grow(need_bytes(reservation.kind, step) - PER_REQUEST_BYTES)
                covered += step
            chunks.append(chunk)
            if more:
                deadlines.watch(
                    task, min(last, started + max(grace, size / rate)) if rate else last
                )
    except asyncio.CancelledError:
        if not deadlines.forget(task):
            raise  # cancelled by someone else: not a timeout
        task.uncancel()
        if loop.time() < last - 0.05:
            metrics.bodies_cut.labels("too_slow").inc()
            raise BodyTimeout(
                f"the body arrived at {size / max(loop.time() - started, 1e-9):.0f} bytes/s; "
                f"the minimum is {rate} bytes/s"
            ) from None
        metrics.bodies_cut.labels("timeout").inc()
        raise BodyTimeout(
            f"the body did not arrive within {settings.body_timeout_seconds:g}s"
        ) from None
    finally:
        deadlines.forget(task)
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


class BodyDeadlines(PerLoop):
    """The body-read deadlines of one event loop's requests, checked every ``TICK_SECONDS``
    by one timer: a request past its deadline is cancelled, and ``read_body`` turns that into
    its 408 (``forget`` says whether the deadline cancelled it). Deadlines are kept to within
    a tick; the timer runs only while some body is being read."""

    TICK_SECONDS = 0.05

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(loop)
        self.when: dict[asyncio.Task[Any], float] = {}
        self.expired: set[asyncio.Task[Any]] = set()
        self.timer: asyncio.TimerHandle | None = None

    def watch(self, task: asyncio.Task[Any], when: float) -> None:
        """Cancel ``task`` once ``loop.time()`` passes ``when`` (a later call moves it)."""
        self.when[task] = when
        if self.timer is None:
            self.timer = self.loop.call_later(self.TICK_SECONDS, self._tick)

    def forget(self, task: asyncio.Task[Any]) -> bool:
        """Stop watching ``task``; whether its deadline had cancelled it."""
        self.when.pop(task, None)
        if task in self.expired:
            self.expired.discard(task)
            return True
        return False

    def _tick(self) -> None:
        self.timer = None
        now = self.loop.time()
        for task, when in list(self.when.items()):
            if when <= now:
                del self.when[task]
                self.expired.add(task)
                task.cancel()
        if self.when:
            self.timer = self.loop.call_later(self.TICK_SECONDS, self._tick)


def reserve_decoded(body: bytes, reservation: Reservation) -> None:
    """Parquet is compressed: a small body may decode into a big matrix. Its footer says how
    many rows and columns it holds; reserve for those (503 when there is no room)."""
    if reservation.kind != "parquet":
        return
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        meta = pq.read_metadata(pa.BufferReader(body))
    except (pa.ArrowException, OSError, ValueError):
        return  # not Parquet after all: the parser says so
    decoded = meta.num_rows * meta.num_columns * 8 * DECODED_COPIES
    if decoded > reservation.nbytes:
        reservation.grow(decoded - reservation.nbytes)


def declared_size(request: Incoming) -> int | None:
    """The body's ``Content-Length``, if it has a valid one."""
    declared = request.headers.get("content-length")
    return int(declared) if declared is not None and declared.isdigit() else None


def memory_need(kind: str, settings: Settings, declared: int | None) -> tuple[str, int]:
    """The body's format and the bytes its request will need by its declared size
    (``Content-Length``, or a first step of a body without one); 413 when the declared size is
    over ``max_body_bytes``."""
    if declared is not None and declared > settings.max_body_bytes:
        raise PayloadTooLarge(
            f"the body is {declared} bytes; the limit is {settings.max_body_bytes}"
        )
    fmt = format_of(kind)
    return fmt, need_bytes(fmt, declared if declared is not None else 0)


@dataclass(slots=True)
class Scored:
    """One scored body: the answer, and the rows and probabilities (for shadow scoring)."""

    content: bytes
    x: np.ndarray
    predictions: np.ndarray
    media_type: str = "application/json"
    headers: dict[str, str] | None = None

    @property
    def rows(self) -> int:
        return len(self.x)


def model_labels(model: LoadedModel, role: str) -> tuple[str, str, str]:
    """(name, version, role) of a model for the per-model metrics."""
    return model.metric_name, model.version or "", role


def answered_by(model: LoadedModel, role: str) -> dict[str, str]:
    """Response headers naming the model that answered: a caller (or a test) can match every
    answer to its version, champion or challenger."""
    return dict(answer_headers(model.label, role))


def answer_headers(label: str, role: str) -> tuple[tuple[str, str], ...]:
    """``answered_by``'s headers for a model's label."""
    return (("X-Model-Version", label.encode("ascii", "replace").decode()), ("X-Model-Role", role))


def predict(
    x: np.ndarray, model: LoadedModel, settings: Settings, metrics: Metrics, role: str = "champion"
) -> np.ndarray:
    """P(target = 1) for each row of a validated matrix, counted in the metrics (per model too)."""
    started = time.perf_counter()
    predictions = np.asarray(
        model.predictor.predict(x, settings.threads_for(len(x))), dtype=np.float64
    )
    seconds = time.perf_counter() - started
    metrics.observe_scoring(predictions, model_labels(model, role), seconds)
    if role == "champion":  # drift and the inference log follow the served model
        metrics.observe_scored(x, predictions, model)
    return predictions


def score(
    body: bytes,
    content_type: str | None,
    model: LoadedModel,
    settings: Settings,
    metrics: Metrics,
    *,
    role: str = "champion",
) -> Scored:
    """Parse and validate one body by the contract, and score it: MLflow's answer shape."""
    x = parse_body(body, content_type, model.predictor.features, settings.max_rows)
    predictions = predict(x, model, settings, metrics, role)
    content = orjson.dumps({"predictions": predictions}, option=orjson.OPT_SERIALIZE_NUMPY)
    return Scored(content, x, predictions)


CONTRIBUTION_COST = 16
"""What one row's exact contributions cost in predictions of a row (on the benchmark's 1000 trees
of 13 leaves, 0.08 ms a prediction: ~1 ms with ``scoring.treeshap``, 2-3 ms where LightGBM's own
TreeSHAP explains; 16 is cautious).
Explanations go off the event loop that much sooner than scoring. They always get every thread:
the fast engine splits a few rows' trees among them (one row in about half the time on two
cores)."""


def explain_body(
    body: bytes,
    content_type: str | None,
    model: LoadedModel,
    settings: Settings,
    metrics: Metrics,
    *,
    role: str = "champion",
    top: int | None = None,
) -> Scored:
    """``score``'s twin for ``POST /explain``: the same parse and checks, then each prediction
    with its exact contributions (``scoring.explain``), and ``top`` reasons per row if asked."""
    predictor = model.predictor
    x = parse_body(body, content_type, predictor.features, settings.max_rows)
    explanation = explain(predictor, x, settings.all_threads, settings.threads_for(len(x)))
    answer: dict[str, object] = {
        "predictions": explanation.predictions,
        "base_value": explanation.base_value,
        "features": explanation.features,
        "contributions": explanation.contributions,
    }
    if top:
        answer["reasons"] = reasons(explanation, x, top)
    content = orjson.dumps(answer, option=orjson.OPT_SERIALIZE_NUMPY)
    return Scored(content, x, np.asarray(explanation.predictions, dtype=np.float64))


Work = Callable[..., Scored]
"""What a scoring route does with a body once it is in: ``work(body, content_type, model,
settings, metrics, role=...)`` gives the answer's bytes and the rows and probabilities."""


async def handle(
    request: Incoming,
    model: LoadedModel,
    *,
    settings: Settings,
    metrics: Metrics,
    in_flight: InFlight,
    admission: Admission,
    work: Work = score,
    role: str = "champion",
    inline_bytes: int | None = None,
    content_type: str | Unread | None = UNREAD,
) -> Scored:
    """The one path of every scoring route: admit the body (a body-read place, then memory),
    read it, then run ``work`` within a scoring slot: on the event loop for a body up to
    ``inline_bytes`` (``inline_body_bytes`` unless told), else ``score_in_thread``.
    ``content_type``: the header, if the caller read it already."""
    if isinstance(content_type, Unread):
        content_type = request.headers.get("content-type")
    kind = media_type(content_type)
    declared = declared_size(request)
    # Bodies arriving, then memory, then (once the body is in) a scoring slot.
    with admission.body_reads.enter():
        fmt, need = memory_need(kind, settings, declared)
        # Memory: at once if it fits (a small request), else waiting briefly for room (or 503).
        memory = admission.memory
        reservation = memory.take_small(need) or await memory.reserve(need)
        reservation.kind = fmt
        try:
            body = await read_body(request, settings, metrics, reservation, declared=declared)
            reserve_decoded(body, reservation)
        except BaseException:
            reservation.release()
            raise
    inline = settings.inline_body_bytes if inline_bytes is None else inline_bytes
    try:
        if len(body) <= inline:
            # Small bodies cost less than a thread hop: scored right here, within a slot.
            with in_flight.slot():
                return work(body, content_type, model, settings, metrics, role=role)
        return await score_in_thread(
            body,
            content_type,
            model,
            settings,
            metrics,
            in_flight=in_flight,
            reservation=reservation,
            limiter=admission.limiter,
            work=work,
            role=role,
        )
    finally:
        del body
        if not reservation.handed_over:
            reservation.release()


async def score_in_thread(
    body: bytes,
    content_type: str | None,
    model: LoadedModel,
    settings: Settings,
    metrics: Metrics,
    *,
    in_flight: InFlight,
    reservation: Reservation | None = None,
    limiter: CapacityLimiter | None = None,
    work: Work = score,
    role: str = "champion",
) -> Scored:
    """``work`` (default ``score``) on a big body in a thread (at most ``limiter``'s at once),
    within a scoring slot, under ``request_timeout_seconds`` (504; the slot and the memory
    reservation stay taken until the work really ends)."""
    with in_flight.slot() as slot:
        task = asyncio.ensure_future(
            to_thread.run_sync(
                functools.partial(work, role=role),
                body,
                content_type,
                model,
                settings,
                metrics,
                limiter=limiter,
            )
        )
        slot.release_when_done(task)
        if reservation is not None:
            reservation.release_when_done(task)
        try:
            return await asyncio.wait_for(asyncio.shield(task), settings.request_timeout_seconds)
        except TimeoutError:
            raise ScoringTimeout(
                f"scoring took longer than {settings.request_timeout_seconds:g}s"
            ) from None
