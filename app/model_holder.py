"""The model being served, split by job: the slot that holds it, and the lifecycle that feeds it.

``ModelSlot`` holds the current model and swaps it. Requests read ``slot.current`` once and keep
that reference to the end, so a swap is one assignment: requests in flight finish on the model
they started with, none fails. The slot keeps no other reference to a model it swapped out, so
its booster and compiled forest are freed once the last request on it ends. A failed load never
touches ``current``: the old model keeps serving and ``last_error`` (shown by /model,
/health/ready, the logs and /metrics) says what failed.

``ModelHolder`` runs the lifecycle around a slot: the first load with back-off, polling the URI
(an alias) for a new version, and following the reloads other workers announce. Every load
goes through ``reload``, which runs one load at a time in a thread and never blocks the event
loop: a reload asked while another is loading waits for it (on the loop, without blocking it)
and is then served by one more resolve that starts after it was asked, so several requests
made during one slow load cost one more load, not one each, and none is lost.

With several workers (``python -m app --workers N``) a reload asked of one worker is passed on
through a shared file, ``ReloadSignal``: any new content means "re-resolve and swap if it moved".
The worker that was asked announces before loading itself, so all workers load side by side.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from scoring.errors import ModelLoadError, ModelNotReady
from scoring.loading import LoadedModel, load_model
from scoring.model_ref import describe_cause, resolve_fingerprint

log = logging.getLogger(__name__)

Loader = Callable[[str], LoadedModel]
Resolver = Callable[[str], str | None]
SwapHook = Callable[[LoadedModel, LoadedModel | None], None]


class Clock(Protocol):
    """Time as the loops see it (a fake one in tests)."""

    def monotonic(self) -> float: ...

    async def sleep(self, seconds: float) -> None: ...


class SystemClock:
    def monotonic(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


class ReloadSignal:
    """A file the workers of one server share: each new content means "reload".

    A unique token rather than a counter: two workers announcing at once can never write the
    same value, so no announce is lost to a read-modify-write race between processes.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def read(self) -> str:
        try:
            return self.path.read_text()
        except OSError:
            return ""

    @staticmethod
    def new_token() -> str:
        return f"{os.getpid()}-{time.time_ns()}-{uuid.uuid4().hex[:8]}"

    def announce(self, token: str | None = None) -> str:
        """Write ``token`` (a new one by default) for the other workers to see; return it."""
        token = token or self.new_token()
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.{threading.get_ident()}")
        tmp.write_text(token)
        tmp.replace(self.path)  # atomic: a reader sees the old token or the new one
        return token


class ModelSlot:
    """The current model, the last load failure, and the swap."""

    def __init__(self, uri: str | None, role: str = "champion") -> None:
        self.uri = uri
        self.role = role
        self.current: LoadedModel | None = None
        self.last_error: str | None = None
        self.last_error_at: float | None = None
        self.attempts = 0
        self.failures = 0
        self.swaps = 0
        self.on_swap: list[SwapHook] = []
        self.on_failure: list[Callable[[str], None]] = []

    def require(self) -> LoadedModel:
        """The model to score with, or ``ModelNotReady`` naming why there is none."""
        model = self.current
        if model is None:
            raise ModelNotReady(self.not_ready_reason())
        return model

    def not_ready_reason(self) -> str:
        if self.uri is None:
            return "no model configured: set MODEL_URI"
        if self.last_error:
            return f"model not loaded yet; last attempt failed: {self.last_error}"
        return f"model {self.uri!r} is loading"

    def status(self) -> dict[str, object]:
        return {
            "load_attempts": self.attempts,
            "load_failures": self.failures,
            "last_error": self.last_error,
            "last_error_at": self.last_error_at,
            "worker_pid": os.getpid(),
        }

    def swap(self, model: LoadedModel) -> None:
        """Serve ``model`` from now on; the previous one is dropped (no reference kept here)."""
        previous, self.current = self.current, model
        self.last_error = None
        self.swaps += 1
        log.info(
            "serving %s (name %s, version %s, run %s) as %s, loaded in %.2fs",
            model.uri,
            model.registered_name,
            model.version,
            model.run_id,
            self.role,
            model.load_seconds,
        )
        for hook in self.on_swap:
            hook(model, previous)

    def fail(self, cause: str) -> None:
        self.failures += 1
        self.last_error = cause
        self.last_error_at = time.time()
        for hook in self.on_failure:
            hook(cause)


class ModelHolder:
    """A ``ModelSlot`` and the loops that fill it: first load, back-off, polling, following."""

    def __init__(
        self,
        uri: str | None,
        loader: Loader = load_model,
        resolver: Resolver = resolve_fingerprint,
        *,
        signal_file: str | Path | None = None,
        clock: Clock | None = None,
        role: str = "champion",
    ) -> None:
        self.slot = ModelSlot(uri, role)
        self.loader = loader
        self.resolver = resolver
        self.clock: Clock = clock or SystemClock()
        self.signal = ReloadSignal(signal_file) if signal_file else None
        self._seen = self.signal.read() if self.signal else ""
        self._blocking = threading.Lock()  # one load at a time; only ever taken in a thread
        self._queue: asyncio.Lock | None = None  # reloads wait here, on the loop, unblocking
        self._asked = 0  # reload requests so far
        self._served = 0  # requests covered by the last finished reload
        self._force_asked = False
        self._outcome: tuple[bool, ModelLoadError | None] = (False, None)

    # --- the slot, as the routes read it ----------------------------------------------------

    @property
    def uri(self) -> str | None:
        return self.slot.uri

    @property
    def current(self) -> LoadedModel | None:
        return self.slot.current

    @current.setter
    def current(self, model: LoadedModel | None) -> None:
        self.slot.current = model

    @property
    def last_error(self) -> str | None:
        return self.slot.last_error

    @property
    def on_swap(self) -> list[SwapHook]:
        return self.slot.on_swap

    @property
    def on_failure(self) -> list[Callable[[str], None]]:
        return self.slot.on_failure

    def require(self) -> LoadedModel:
        return self.slot.require()

    def not_ready_reason(self) -> str:
        return self.slot.not_ready_reason()

    def status(self) -> dict[str, object]:
        return self.slot.status()

    # --- loading ----------------------------------------------------------------------------

    def load(self) -> LoadedModel:
        """Load ``uri`` now and swap it in, blocking (start-up outside a loop, tests).

        Raises ``ModelLoadError``.
        """
        self._load_blocking(force=True)
        return self.slot.require()

    def _load_blocking(self, force: bool) -> bool:
        """Resolve, and load and swap if the URI points elsewhere now (or ``force``)."""
        slot = self.slot
        if slot.uri is None:
            raise ModelLoadError("", "no model configured: set MODEL_URI")
        with self._blocking:
            current = slot.current
            if not force and current is not None:
                try:
                    now = self.resolver(slot.uri)
                except ModelLoadError as exc:
                    slot.fail(exc.cause)
                    raise
                except Exception as exc:
                    log.exception("resolving %s failed", slot.uri)
                    slot.fail(describe_cause(exc))
                    raise ModelLoadError(slot.uri, describe_cause(exc)) from None
                # A URI that cannot move (a run, a fixed version) resolves to None: unchanged.
                if now is None or now == current.fingerprint:
                    return False
            del current
            slot.attempts += 1
            try:
                model = self.loader(slot.uri)
            except ModelLoadError as exc:
                slot.fail(exc.cause)
                raise
            except Exception as exc:  # a bug in a loader must not end a loop: say it, go on
                log.exception("loading %s failed", slot.uri)
                slot.fail(describe_cause(exc))
                raise ModelLoadError(slot.uri, describe_cause(exc)) from None
            slot.swap(model)
            del model
        # Boosters and compiled forests may sit in reference cycles: free the one swapped out
        # now (once no request holds it), not at some later collection.
        gc.collect()
        return True

    async def reload(self, force: bool = False) -> bool:
        """Re-resolve ``uri``; load and swap in a thread if it points elsewhere (or ``force``).

        Returns whether a new model was swapped in. Raises ``ModelLoadError`` (logged, counted)
        and keeps the old model serving when resolving or loading fails. Never blocks the loop:
        while another reload runs, this one waits for it, then a resolve that started after
        this call answers it (shared with every call that waited meanwhile).
        """
        if self._queue is None:
            self._queue = asyncio.Lock()
        self._asked += 1
        ticket = self._asked
        self._force_asked = self._force_asked or force
        async with self._queue:
            if self._served >= ticket:  # a reload that started after this call has answered
                swapped, error = self._outcome
                if error is not None:
                    raise error
                return swapped
            covers, force, self._force_asked = self._asked, self._force_asked, False
            try:
                swapped = await asyncio.to_thread(self._load_blocking, force)
            except ModelLoadError as exc:
                log.error("reload failed, still serving the previous model: %s", exc)
                self._outcome = (False, exc)
                raise
            else:
                self._outcome = (swapped, None)
            finally:
                self._served = covers
            return swapped

    async def load_until_ready(self, max_delay: float, first_delay: float = 1.0) -> None:
        """Retry loading with exponential back-off (capped at ``max_delay``) until it works."""
        delay = first_delay
        while self.slot.current is None:
            started = self.clock.monotonic()
            try:
                await self.reload(force=True)
                return
            except ModelLoadError as exc:
                log.warning("%s; retrying in %.0fs", exc, delay)
            except Exception:  # a bug must not end the loop: log it, keep serving health checks
                log.exception("unexpected error while loading %s", self.slot.uri)
            await self.clock.sleep(max(0.0, delay - (self.clock.monotonic() - started)))
            delay = min(delay * 2, max_delay)

    async def poll(self, every: float) -> None:
        """Every ``every`` seconds, follow the URI (e.g. an alias) to a new version if it moved."""
        while True:
            await self.clock.sleep(every)
            if self.slot.current is None:
                continue  # the retry loop owns the first load
            try:
                if await self.reload():
                    log.info("polling: swapped in %s", _fingerprint(self.slot.current))
            except ModelLoadError:
                pass  # logged, counted, old model kept; try again next time
            except Exception:
                log.exception("polling %s failed", self.slot.uri)

    # --- several workers: pass a reload on --------------------------------------------------

    async def announce_reload(self) -> None:
        """Tell the other workers to reload (they re-resolve the URI themselves)."""
        if self.signal is not None:
            # Seen before it is written: this worker's own follow loop, which reads the file
            # while the write runs in a thread, must not take the announce for someone else's.
            self._seen = token = self.signal.new_token()
            await asyncio.to_thread(self.signal.announce, token)

    async def follow_reloads(self, every: float = 0.5) -> None:
        """Reload whenever another worker has announced one."""
        if self.signal is None:
            return
        while True:
            await self.clock.sleep(every)
            token = self.signal.read()  # a few bytes in a local temporary folder
            if token == self._seen:
                continue
            self._seen = token
            try:
                if await self.reload():
                    log.info("following: swapped in %s", _fingerprint(self.slot.current))
            except ModelLoadError:
                pass  # logged, counted, old model kept
            except Exception:
                log.exception("following a reload of %s failed", self.slot.uri)


def _fingerprint(model: LoadedModel | None) -> str | None:
    return model.fingerprint if model is not None else None
