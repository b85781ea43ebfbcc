"""Admission by memory and by body reads: what a request will need is reserved before its body is
read, so a burst of big legal bodies waits or gets 503 instead of taking the worker past its limit.

A request's need is estimated from its declared (``Content-Length``) or received size, by body
format, before anything is parsed. The factors are measured peaks of ``parse_body`` over the body
itself (10,000 rows x 200 features, resident memory sampled while parsing, ``/tmp`` script in the
branch's report), rounded up, plus the body itself:

=============================  ==============  ==========================================
format                         peak / body      why
=============================  ==============  ==========================================
JSON split, plain numbers      5.4             simdjson tape + float buffer + matrix
JSON with nulls, records       10.4            Python floats and lists (the precise path)
CSV                            6.0             Arrow columns + matrix
Parquet                        4.6             decoded columns + matrix
Arrow IPC stream               ~0              the matrix is read off the body's buffer
=============================  ==============  ==========================================

JSON is reserved at its worst case (the precise path), since which path a body takes is only
known once it is parsed.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import ctypes
import ctypes.util
import functools
import logging
import os
import sys
from typing import Any

from app.config import Settings
from app.observability import Metrics
from scoring.contract.decode import release_parked_parser
from scoring.errors import Overloaded, PayloadTooLarge

log = logging.getLogger("app.limits")

MIB = 1024 * 1024
# Peak parse memory per body byte, over the body itself (see the table above).
PARSE_FACTOR = {"json": 11.0, "csv": 6.5, "parquet": 5.0, "arrow": 0.5}
# Parquet decodes to columns, then the matrix: reserved by rows x columns from its footer.
DECODED_COPIES = 3
PER_REQUEST_BYTES = 64 * 1024  # the request's own objects, the answer, LightGBM's buffers
HEADROOM = 0.1  # of the limit, for allocator slack and what the estimate misses
CHUNKED_STEP = 1 * MIB  # a body without Content-Length is reserved in steps as it arrives
TRIM_DELAY_SECONDS = 2.0  # without a big request this long, freed memory goes back
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def rss_bytes() -> int:
    """This process's resident memory (``/proc/self/statm``; 0 where there is no /proc)."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * _PAGE
    except (OSError, IndexError, ValueError):
        return 0


def need_bytes(kind: str, body_bytes: int) -> int:
    """What parsing and scoring a body of ``body_bytes`` in format ``kind`` will take."""
    return int(body_bytes * (1 + PARSE_FACTOR[kind])) + PER_REQUEST_BYTES


def format_of(media: str) -> str:
    """The ``PARSE_FACTOR`` key of an accepted media type."""
    if "csv" in media:
        return "csv"
    if "parquet" in media:
        return "parquet"
    if "arrow" in media:
        return "arrow"
    return "json"


@functools.cache
def _glibc() -> Any:
    """glibc through ctypes, or ``None`` (musl, macOS: nothing to trim or tune)."""
    name = ctypes.util.find_library("c")
    try:
        lib = ctypes.CDLL(name) if name else None
    except OSError:
        return None
    return lib if lib is not None and hasattr(lib, "malloc_trim") else None


def limit_arenas(arenas: int) -> bool:
    """At most ``arenas`` glibc malloc arenas from now on (``MALLOC_ARENA_MAX`` at run time)."""
    libc = _glibc()
    if libc is None or arenas <= 0:
        return False
    m_arena_max = -8
    return bool(libc.mallopt(m_arena_max, arenas))


def arrow_allocates_with_malloc() -> str:
    """Arrow allocates through glibc's ``malloc`` in this process (``ARROW_DEFAULT_MEMORY_POOL``
    unless already set); the pool in use.

    Arrow's default pool (mimalloc) keeps freed memory in per-thread heaps, and big bodies are
    decoded in worker threads: asking the pool to release its unused memory from the loop's
    thread reached none of it, and a burst of 10,000-row Parquet bodies left a worker ~90 MB
    larger for good. With ``malloc``, ``malloc_trim`` gives it back like the rest; decoding
    takes as long (42.0 / 42.8 ms a 10,000-row Parquet body, median of 15, in one process)."""
    choice = os.environ.setdefault("ARROW_DEFAULT_MEMORY_POOL", "system")
    arrow = sys.modules.get("pyarrow")
    if arrow is not None and choice == "system":
        arrow.set_memory_pool(arrow.system_memory_pool())  # imported already: set it now
    return choice


def trim_memory() -> bool:
    """Give freed memory back to the system: what Arrow's memory pool keeps, and the free
    memory at the top of glibc's heaps and in its arenas.

    Arrow allocates through its own pool (mimalloc or jemalloc), which keeps what Parquet and
    Arrow bodies freed until told: ~75 MB after a few 10,000-row Parquet bodies, that
    ``malloc_trim`` does not reach. Arrow is only asked if a body already imported it."""
    arrow = sys.modules.get("pyarrow")
    if arrow is not None:
        try:
            arrow.default_memory_pool().release_unused()
        except Exception:  # an older or unusual build: glibc's trim still runs
            log.debug("Arrow's memory pool kept its memory", exc_info=True)
    libc = _glibc()
    return bool(libc.malloc_trim(0)) if libc is not None else False


class Reservation:
    """Bytes held in the budget for one request; given back when its work ends."""

    __slots__ = ("handed_over", "kind", "nbytes", "owner", "released", "small")

    def __init__(self, owner: MemoryBudget, nbytes: int, small: bool) -> None:
        self.owner = owner
        self.nbytes = nbytes
        self.small = small
        self.handed_over = False
        self.released = False
        self.kind = "json"

    def grow(self, nbytes: int) -> None:
        """Take ``nbytes`` more at once (a body without ``Content-Length``), or 503."""
        self.owner.grow(self, nbytes)

    def release(self) -> None:
        if not self.released:
            self.released = True
            self.owner.give_back(self)

    def release_when_done(self, work: asyncio.Future[Any]) -> None:
        """Hold the bytes until ``work`` ends, even if the client was answered (504) before."""
        self.handed_over = True
        work.add_done_callback(lambda _: self.release())


class MemoryBudget:
    """The bytes one worker may spend on requests: its limit less its resident memory when idle
    (the model, the libraries, what the allocator kept) and a headroom.

    Big requests wait in a bounded FIFO queue for room and are refused (503) after
    ``wait_seconds``; small ones (bodies up to ``small_body``) may also use a share kept for them,
    which big ones never take, so one-row requests keep answering through a burst of big ones.
    """

    def __init__(
        self,
        limit: int,
        metrics: Metrics,
        *,
        wait_seconds: float,
        queue: int,
        small_share: float,
        small_body: int,
        trim: bool,
    ) -> None:
        self.limit = limit
        self.metrics = metrics
        self.wait_seconds = wait_seconds
        self.queue = queue
        self.small_share = small_share
        self.small_body = small_body
        self.small_need = need_bytes("json", small_body)
        self.trim = trim
        self.reserved = 0
        self.reserved_big = 0
        self.baseline = rss_bytes()
        self.idle_rss = self.baseline
        self._waiters: collections.deque[tuple[Reservation, asyncio.Future[None]]] = (
            collections.deque()
        )
        self._trimming = False
        self._trim_timer: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        metrics.memory_limit.set(limit)
        metrics.tally.sample(metrics.memory_reserved, lambda: self.reserved)

    def start(self) -> None:
        """Measure the idle worker (model loaded) that the budget is counted from."""
        self._loop = asyncio.get_running_loop()
        if self.trim:
            trim_memory()
        self.baseline = self.idle_rss = rss_bytes()
        self.metrics.memory_budget.set(self.capacity)
        if self.capacity < self.small_need * 4:
            log.warning(
                "the memory budget is %d MiB (limit %d MiB, %d MiB used when idle): "
                "big requests will be refused; raise MEMORY_LIMIT_MB",
                self.capacity // MIB,
                self.limit // MIB,
                self.idle_rss // MIB,
            )

    @property
    def capacity(self) -> int:
        """Bytes for requests now: the limit less the idle worker and the headroom."""
        return max(0, int(self.limit * (1 - HEADROOM)) - self.idle_rss)

    @property
    def ceiling(self) -> int:
        """The most one big request may ever have (when the worker is back to its start)."""
        start = max(0, int(self.limit * (1 - HEADROOM)) - self.baseline)
        return int(start * (1 - self.small_share))

    def _fits(self, nbytes: int, small: bool) -> bool:
        capacity = self.capacity
        if small:
            return self.reserved + nbytes <= capacity
        # Big requests also count the small ones in flight: the share is a floor for small ones,
        # not a gift to big ones.
        room = int(capacity * (1 - self.small_share))
        return self.reserved_big + nbytes <= room and self.reserved + nbytes <= capacity

    def _take(self, r: Reservation) -> None:
        self.reserved += r.nbytes
        if not r.small:
            self.reserved_big += r.nbytes

    def take_small(self, nbytes: int) -> Reservation | None:
        """``nbytes`` reserved now if they are a small request's and fit (every one-row
        request: no coroutine to make and await); else ``None``, and ``reserve`` decides."""
        if nbytes <= self.small_need and self.reserved + nbytes <= self.capacity:
            self.reserved += nbytes  # _fits and _take, inline
            return Reservation(self, nbytes, True)
        return None

    async def reserve(self, nbytes: int) -> Reservation:
        """Reserve ``nbytes``, waiting up to ``wait_seconds`` for room; else 503 (or 413 when no
        room could ever be enough)."""
        taken = self.take_small(nbytes)
        if taken is not None:
            return taken
        small = nbytes <= self.small_need
        r = Reservation(self, nbytes, small)
        if not small and nbytes > self.ceiling:
            raise PayloadTooLarge(
                f"this body needs about {nbytes // MIB} MiB to parse; the memory budget of a "
                f"worker allows {self.ceiling // MIB} MiB per request"
            )
        if (small or not self._big_waiting()) and self._fits(nbytes, small):
            self._take(r)
            return r
        release_parked_parser()  # short of room: what no request holds goes first
        if len(self._waiters) >= self.queue or self.wait_seconds <= 0:
            self._shed()
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (r, waiter)
        self._waiters.append(entry)
        self.metrics.memory_waits.inc()
        try:
            async with asyncio.timeout(self.wait_seconds):
                await waiter
        except (TimeoutError, asyncio.CancelledError) as exc:
            if waiter.done() and not waiter.cancelled():
                r.release()  # granted just as the wait ended: give it back
            else:
                with contextlib.suppress(ValueError):
                    self._waiters.remove(entry)
            if isinstance(exc, asyncio.CancelledError):
                raise
            self._shed()
        return r

    def _big_waiting(self) -> bool:
        return any(not r.small for r, _ in self._waiters)

    def _shed(self) -> None:
        self.metrics.memory_shed.inc()
        self.metrics.shed.inc()
        raise Overloaded(
            "not enough memory for this body now; retry shortly "
            f"({self.reserved // MIB} of {self.capacity // MIB} MiB in use by requests)"
        )

    def grow(self, r: Reservation, nbytes: int) -> None:
        small = r.small and r.nbytes + nbytes <= self.small_need
        big_more = 0 if small else nbytes + (r.nbytes if r.small else 0)
        room = int(self.capacity * (1 - self.small_share))
        if self.reserved + nbytes > self.capacity or (
            big_more and self.reserved_big + big_more > room
        ):
            self._shed()
        r.small = small
        self.reserved += nbytes
        self.reserved_big += big_more
        r.nbytes += nbytes

    def give_back(self, r: Reservation) -> None:
        self.reserved -= r.nbytes
        if not r.small:
            self.reserved_big -= r.nbytes
        if not r.small and self.reserved_big == 0:
            self._settle()
        self._wake()

    def _wake(self) -> None:
        """Grant waiters in order while they fit; big ones strictly in turn, small ones
        whenever they fit (they never wait behind a big one)."""
        if not self._waiters:
            return
        big_blocked = False
        for entry in list(self._waiters):
            r, waiter = entry
            if waiter.done():
                self._waiters.remove(entry)
                continue
            if (not r.small and big_blocked) or not self._fits(r.nbytes, r.small):
                big_blocked = big_blocked or not r.small
                continue
            self._waiters.remove(entry)
            self._take(r)
            waiter.set_result(None)

    def _settle(self) -> None:
        """No big request in flight: once none came for ``TRIM_DELAY_SECONDS``, give memory
        back, then re-measure the idle worker.

        Not at once: memory given back is memory the next big body faults in again, page by
        page (trimming after every 10,000-row request made the next one 10-15% slower); a
        client sending big bodies one after another keeps it, and the end of the burst gives
        it back."""
        if not self.trim:
            self._measure_idle()
            return
        if self._trim_timer is not None:
            self._trim_timer.cancel()
        loop = asyncio.get_running_loop()
        self._trim_timer = loop.call_later(TRIM_DELAY_SECONDS, self._trim)

    def _trim(self) -> None:
        self._trim_timer = None
        if self._trimming or self.reserved_big:
            return  # a big request in flight settles again when it ends
        # The parser parked for the next big body goes too: the idle worker is measured
        # without it, so the budget never counts it as the worker's own.
        release_parked_parser()
        self._trimming = True
        loop = asyncio.get_running_loop()
        # malloc_trim walks the heaps for a few ms: not on the event loop.
        done = loop.run_in_executor(None, trim_memory)
        done.add_done_callback(lambda _: self._trimmed())

    def _trimmed(self) -> None:
        self._trimming = False
        self._measure_idle()
        self._wake()

    def remeasure(self) -> None:
        """The model changed: count the budget from the worker's new idle size."""
        self._measure_idle()

    def remeasure_soon(self) -> None:
        """``remeasure`` from any thread (work a model finished in the background: compiled
        trees, the explanation engine, ~140 MB): on the loop, as the budget's other steps."""
        loop = self._loop
        if loop is None or loop.is_closed():
            self.remeasure()
        else:
            loop.call_soon_threadsafe(self.remeasure)

    def _measure_idle(self) -> None:
        if self.reserved_big == 0:
            # What a worker holds between requests: never counted below where it started.
            self.idle_rss = max(self.baseline, rss_bytes() - self.reserved)
            self.metrics.memory_budget.set(self.capacity)


class BodyReads:
    """Bodies being received at once per worker, bounded (503 + Retry-After beyond).

    ``with body_reads.enter():`` holds a place while a body arrives. The object is its own
    context manager (no generator made per request)."""

    __slots__ = ("count", "limit", "metrics")

    def __init__(self, limit: int, metrics: Metrics) -> None:
        self.limit = limit
        self.count = 0
        self.metrics = metrics

    def enter(self) -> BodyReads:
        """A place for one body (``with``), or ``Overloaded`` (503) when all are taken."""
        if self.count >= self.limit:
            self.metrics.body_reads_shed.inc()
            self.metrics.shed.inc()
            raise Overloaded(f"{self.count} request bodies are arriving; retry shortly")
        self.count += 1
        return self

    def __enter__(self) -> None:
        return None

    def __exit__(self, *_: object) -> None:
        self.count -= 1


class Admission:
    """A worker's request limits, in the order a request meets them: bodies arriving, memory,
    then (``app.admission.InFlight``) scoring slots; and the threads big bodies are scored on."""

    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        self.body_reads = BodyReads(settings.max_body_reads, metrics)
        self.memory = MemoryBudget(
            settings.memory_limit_bytes(),
            metrics,
            wait_seconds=settings.memory_wait_seconds,
            queue=settings.memory_queue,
            small_share=settings.memory_small_share,
            small_body=settings.inline_body_bytes,
            trim=settings.memory_trim,
        )
        self.scoring_threads = settings.scoring_threads or os.cpu_count() or 1
        self.limiter: Any = None

    def start(self) -> None:
        """In the running loop, model loaded: size the thread pools and measure the idle worker.

        anyio's default pool (40 threads, used by sync routes and dependencies) is cut down, and
        big bodies are scored on a limiter of their own, one thread per core: more threads only
        hold more buffers and malloc arenas, not more throughput.
        """
        from anyio import CapacityLimiter, to_thread

        self.limiter = CapacityLimiter(self.scoring_threads)
        to_thread.current_default_thread_limiter().total_tokens = max(8, 2 * self.scoring_threads)
        self.memory.start()
