"""Holds the model being served: loads it once, retries with back-off, reloads without downtime.

Requests read ``holder.current`` once and keep that reference to the end, so swapping in another
model is one assignment: requests in flight finish on the model they started with, none fails.
A failed load never touches ``current``: the old model keeps serving, and ``last_error`` (shown
by /model, /health/ready, the logs and /metrics) says what failed.

With several workers, a reload asked of one worker is passed on through a generation counter in
a shared file (setting ``reload_signal_file``, set by ``python -m app``); each worker re-resolves
the URI and swaps on its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

from starlette.concurrency import run_in_threadpool

from scoring.errors import ModelLoadError, ModelNotReady
from scoring.loading import LoadedModel, load_model
from scoring.model_ref import resolve_fingerprint

log = logging.getLogger(__name__)

Loader = Callable[[str], LoadedModel]
Resolver = Callable[[str], str | None]
SwapHook = Callable[[LoadedModel, LoadedModel | None], None]


class ModelHolder:
    """The served model, the last load failure, and the load, retry, poll and reload loops."""

    def __init__(
        self,
        uri: str | None,
        loader: Loader = load_model,
        resolver: Resolver = resolve_fingerprint,
        signal_file: str | None = None,
    ) -> None:
        self.uri = uri
        self.loader = loader
        self.resolver = resolver
        self.current: LoadedModel | None = None
        self.last_error: str | None = None
        self.last_error_at: float | None = None
        self.attempts = 0
        self.failures = 0
        self.on_swap: list[SwapHook] = []
        self.on_failure: list[Callable[[str], None]] = []
        self._lock = threading.Lock()  # one load at a time; held across a download
        self._signal_lock = threading.Lock()  # never held long: taken on the event loop
        self.signal_file = Path(signal_file) if signal_file else None
        self._generation = self._read_generation()

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
        }

    def load(self) -> LoadedModel:
        """Load ``uri`` now and swap it in (blocking). Raises ``ModelLoadError``."""
        if self.uri is None:
            raise ModelLoadError("", "no model configured: set MODEL_URI")
        with self._lock:
            self.attempts += 1
            try:
                model = self.loader(self.uri)
            except ModelLoadError as exc:
                self._failed(exc.cause)
                raise
            previous, self.current = self.current, model
            self.last_error = None
        log.info(
            "serving %s (name %s, version %s, run %s), loaded in %.2fs",
            model.uri,
            model.registered_name,
            model.version,
            model.run_id,
            model.load_seconds,
        )
        for hook in self.on_swap:
            hook(model, previous)
        return model

    def _failed(self, cause: str) -> None:
        self.failures += 1
        self.last_error = cause
        self.last_error_at = time.time()
        for hook in self.on_failure:
            hook(cause)

    def reload(self, force: bool = False) -> bool:
        """Re-resolve ``uri``; load and swap if it points elsewhere now (or ``force``).

        Returns whether a new model was swapped in. Raises ``ModelLoadError`` and keeps the old
        model serving when resolving or loading fails.
        """
        current = self.current
        if not force and current is not None and self.uri is not None:
            try:
                now = self.resolver(self.uri)
            except ModelLoadError as exc:
                self._failed(exc.cause)
                log.error("reload failed, still serving the previous model: %s", exc)
                raise
            if now is not None and now == current.fingerprint:
                return False
        try:
            self.load()
        except ModelLoadError as exc:
            log.error("reload failed, still serving the previous model: %s", exc)
            raise
        return True

    async def load_until_ready(self, max_delay: float, first_delay: float = 1.0) -> None:
        """Retry ``load`` with exponential back-off (capped at ``max_delay``) until it works."""
        delay = first_delay
        while self.current is None:
            started = time.monotonic()
            try:
                await run_in_threadpool(self.load)
                return
            except ModelLoadError as exc:
                log.warning("%s; retrying in %.0fs", exc, delay)
            except Exception:  # a bug must not end the loop: log it, keep serving health checks
                log.exception("unexpected error while loading %s", self.uri)
            await asyncio.sleep(max(0.0, delay - (time.monotonic() - started)))
            delay = min(delay * 2, max_delay)

    async def poll(self, every: float) -> None:
        """Every ``every`` seconds, follow the URI (e.g. an alias) to a new version if it moved."""
        while True:
            await asyncio.sleep(every)
            if self.current is None:
                continue  # the retry loop owns the first load
            try:
                if await run_in_threadpool(self.reload):
                    log.info(
                        "polling: swapped in %s", self.current.fingerprint if self.current else None
                    )
            except ModelLoadError:
                pass  # logged, counted, old model kept; try again next time
            except Exception:
                log.exception("polling %s failed", self.uri)

    # --- several workers: pass a reload on -------------------------------------------------

    def _read_generation(self) -> int:
        if self.signal_file is None:
            return 0
        try:
            return int(self.signal_file.read_text().strip() or 0)
        except (OSError, ValueError):
            return 0

    def announce_reload(self) -> None:
        """Tell the other workers to reload (they re-resolve the URI themselves)."""
        if self.signal_file is None:
            return
        with self._signal_lock:
            generation = self._read_generation() + 1
            tmp = self.signal_file.with_suffix(f".{os.getpid()}")
            tmp.write_text(str(generation))
            tmp.replace(self.signal_file)
            self._generation = generation

    async def follow_reloads(self, every: float = 0.5) -> None:
        """Reload when another worker has announced one."""
        while True:
            await asyncio.sleep(every)
            generation = self._read_generation()
            if generation <= self._generation:
                continue
            self._generation = generation
            # A failure is logged and counted; the old model keeps serving.
            with contextlib.suppress(ModelLoadError):
                await run_in_threadpool(self.reload)
