"""Connection limits, in uvicorn's HTTP protocol itself (``python -m app`` serves with it).

uvicorn alone closes idle keep-alive connections (``timeout_keep_alive``) and, with h11, bounds
the header size; it has no header read timeout, no bound on headers with httptools, no send
timeout, and its ``limit_concurrency`` answers 503 to every request (health probes included)
once that many connections are open, idle ones included. So each connection here also gets:

* a header deadline: the request headers must be complete within ``HEADER_TIMEOUT_SECONDS`` of
  the connection opening or of its previous answer, else it is closed (header slowloris,
  connections opened and left silent);
* a header size bound (``MAX_HEADER_BYTES``): 431 and closed;
* a send timeout: a client that takes none of its answer for ``SEND_TIMEOUT_SECONDS`` (the
  transport's buffer stays full) is dropped, and its buffered answer freed;
* a cap (``MAX_CONNECTIONS`` per worker, at most the file limit less a margin): a new connection
  beyond it closes the longest-idle one (as nginx reuses keep-alive connections when out of
  them); with none idle, the new one gets 503 and is closed.

Each is counted in ``/metrics`` (``connections_closed_total{reason}``,
``connections_refused_total``, ``connections_open``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import resource
from typing import Any, cast

from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from app.config import Settings
from app.loops import PerLoop
from app.observability import Metrics

log = logging.getLogger("app.connections")

FD_MARGIN = 64  # files a worker keeps for itself: logs, the model, MLflow, Prometheus


class _Guard:
    """This worker's connection limits and counters (set by ``guard_connections``)."""

    def __init__(self, settings: Settings, metrics: Metrics | None) -> None:
        self.settings = settings
        self.metrics = metrics
        self.max_connections = min(settings.max_connections, _file_limit() - FD_MARGIN)

    def closed(self, reason: str) -> None:
        if self.metrics is not None:
            self.metrics.connections_closed.labels(reason).inc()


_state: dict[str, _Guard] = {}  # "guard": this worker's, once the app is built


def guard_connections(settings: Settings, metrics: Metrics) -> None:
    """Apply ``settings``' connection limits to this worker's connections, counted in
    ``metrics``. Raises the soft file limit to the hard one so the cap, not EMFILE, decides."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    guard = _state["guard"] = _Guard(settings, metrics)
    if guard.max_connections < settings.max_connections:
        log.warning(
            "MAX_CONNECTIONS=%d is over the file limit; capped at %d",
            settings.max_connections,
            guard.max_connections,
        )


def _file_limit() -> int:
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return soft if soft != resource.RLIM_INFINITY else 1 << 20


def _current() -> _Guard:
    if "guard" not in _state:
        from app.config import get_settings

        _state["guard"] = _Guard(get_settings(), None)
    return _state["guard"]


def _raw_answer(status: str, code: str, message: str, *headers: str) -> bytes:
    """A whole HTTP/1.1 answer that closes the connection, for use below the ASGI app."""
    body = json.dumps({"error_code": code, "message": message}).encode()
    head = [
        f"HTTP/1.1 {status}",
        "content-type: application/json",
        *headers,
        "connection: close",
        f"content-length: {len(body)}",
    ]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


_REFUSED = _raw_answer(
    "503 Service Unavailable", "OVERLOADED", "too many connections; retry shortly", "retry-after: 1"
)
_TOO_LARGE = _raw_answer(
    "431 Request Header Fields Too Large",
    "HEADERS_TOO_LARGE",
    "the request line and headers are too large",
)


class HeadWithBody:
    """The connection's transport, as uvicorn's protocol sees it: an answer's head (status
    line and headers: uvicorn writes it on its own) is held and written with the first write
    of its body, one send instead of two.

    A one-row answer is two small writes otherwise, each a system call and a TCP segment for
    the client to take in (a few microseconds each). A held head is written at the latest when
    the answer completes (``flush``, from ``on_response_complete``) or the connection closes,
    so an answer without a body (HEAD, 204) goes out whole too. Interim answers (1xx: ``100
    Continue``, a WebSocket's ``101``) are never held: the client waits for them.
    """

    __slots__ = ("_held", "transport")

    def __init__(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        self._held: bytes | None = None

    def write(self, data: bytes | bytearray | memoryview) -> None:
        held = self._held
        if held is not None:
            self._held = None
            self.transport.write(held + data)
        elif data[:9] == b"HTTP/1.1 " and data[9:10] != b"1":
            self._held = bytes(data)
        else:
            self.transport.write(data)

    def flush(self) -> None:
        """Write a held head (its answer is complete)."""
        held = self._held
        if held is not None:
            self._held = None
            self.transport.write(held)

    def close(self) -> None:
        self.flush()
        self.transport.close()

    def is_closing(self) -> bool:
        return self.transport.is_closing()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.transport, name)


class GuardedProtocol:
    """The limits above, mixed into one of uvicorn's HTTP protocols."""

    # Provided by uvicorn's protocol classes.
    cycle: Any
    transport: asyncio.Transport
    connections: set[Any]
    loop: asyncio.AbstractEventLoop

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio's; they have the same methods.
        transport = cast(asyncio.Transport, transport)
        guard = _current()
        self._guard = guard
        self._header_due: float | None = None
        self._send_timer: asyncio.TimerHandle | None = None
        self._header_bytes = 0
        self._waiting_after: Any = None
        self._idle_since = self.loop.time()
        refuse = False
        if len(self.connections) >= guard.max_connections:
            idle = [c for c in self.connections if isinstance(c, GuardedProtocol) and c.idle()]
            if idle:
                oldest = min(idle, key=lambda c: c._idle_since)
                oldest._close("idle_evicted")
            else:
                refuse = True
        self._writes = HeadWithBody(transport)
        super().connection_made(self._writes)  # type: ignore[misc]
        if refuse:
            if guard.metrics is not None:
                guard.metrics.connections_refused.inc()
            transport.write(_REFUSED)
            transport.close()
            return
        if guard.metrics is not None:
            guard.metrics.connections_open.inc()
            self._counted = True
        self._await_headers()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timers()
        HeaderSweep.of(self.loop).forget(self)
        if getattr(self, "_counted", False) and self._guard.metrics is not None:
            self._counted = False
            self._guard.metrics.connections_open.dec()
        super().connection_lost(exc)  # type: ignore[misc]

    def idle(self) -> bool:
        """Between requests: nothing in progress on this connection."""
        return (self.cycle is None or self.cycle.response_complete) and not getattr(
            self, "pipeline", None
        )

    def _awaiting_headers(self) -> bool:
        return self.cycle is self._waiting_after and self.idle()

    def _await_headers(self) -> None:
        """From now, the next request's headers must be in within the header timeout (checked
        by the loop's ``HeaderSweep``: no timer made and cancelled per request)."""
        self._waiting_after = self.cycle
        self._header_bytes = 0
        now = self._idle_since = self.loop.time()
        timeout = self._guard.settings.header_timeout_seconds
        self._header_due = now + timeout
        HeaderSweep.of(self.loop).watch(self, timeout)

    def _header_deadline(self) -> None:
        self._header_due = None
        if self._awaiting_headers():
            self._close("header_timeout")

    def data_received(self, data: bytes) -> None:
        super().data_received(data)  # type: ignore[misc]
        # Still no complete headers after this data (which may also carry a body once they are
        # complete): count it towards the header size bound.
        if self._awaiting_headers() and not self.transport.is_closing():
            self._header_bytes += len(data)
            if self._header_bytes > self._guard.settings.max_header_bytes:
                self._guard.closed("header_too_large")
                self.transport.write(_TOO_LARGE)
                self.transport.close()

    def on_response_complete(self) -> None:
        self._writes.flush()
        super().on_response_complete()  # type: ignore[misc]
        if not self.transport.is_closing():
            self._await_headers()

    def pause_writing(self) -> None:
        super().pause_writing()  # type: ignore[misc]
        if self._send_timer is None:
            self._send_timer = self.loop.call_later(
                self._guard.settings.send_timeout_seconds, self._send_deadline
            )

    def resume_writing(self) -> None:
        super().resume_writing()  # type: ignore[misc]
        if self._send_timer is not None:
            self._send_timer.cancel()
            self._send_timer = None

    def _send_deadline(self) -> None:
        self._send_timer = None
        # abort, not close: close would wait to flush what the client will never read.
        self._guard.closed("slow_reader")
        self.transport.abort()

    def _close(self, reason: str) -> None:
        if not self.transport.is_closing():
            self._guard.closed(reason)
            self.transport.close()

    def _cancel_timers(self) -> None:
        if self._send_timer is not None:
            self._send_timer.cancel()
        self._header_due = self._send_timer = None


class HeaderSweep(PerLoop):
    """The header deadlines of one event loop's connections, checked by one timer every
    ``header timeout / 4`` (at most a second): a connection past its deadline and still
    waiting for headers is closed. A deadline is met to within that step, and a request costs
    a number written instead of a timer made and cancelled; the timer runs only while some
    connection is open."""

    MAX_STEP_SECONDS = 1.0

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(loop)
        self.members: set[GuardedProtocol] = set()
        self.timer: asyncio.TimerHandle | None = None
        self.step = self.MAX_STEP_SECONDS

    def watch(self, connection: GuardedProtocol, timeout: float) -> None:
        self.members.add(connection)
        if self.timer is None:
            self.step = min(self.MAX_STEP_SECONDS, timeout / 4)
            self.timer = self.loop.call_later(self.step, self._sweep)

    def forget(self, connection: GuardedProtocol) -> None:
        self.members.discard(connection)

    def _sweep(self) -> None:
        self.timer = None
        now = self.loop.time()
        for connection in list(self.members):
            due = connection._header_due
            if due is not None and due <= now:
                connection._header_deadline()
        if self.members:
            self.timer = self.loop.call_later(self.step, self._sweep)


class GuardedHttpToolsProtocol(GuardedProtocol, HttpToolsProtocol):
    """httptools (the default where it is installed) with the limits above."""


class GuardedH11Protocol(GuardedProtocol, H11Protocol):
    """h11 with the limits above."""


def protocol_name() -> str:
    """The ``http=`` value for uvicorn: the guarded form of what uvicorn would pick itself."""
    try:
        import httptools  # noqa: F401
    except ImportError:
        return "app.connections:GuardedH11Protocol"
    return "app.connections:GuardedHttpToolsProtocol"
