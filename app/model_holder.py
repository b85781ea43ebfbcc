"""Holds the model being served; loads it once, or keeps retrying with back-off.

Requests read ``holder.current`` once and keep that reference to the end, so swapping in another
model is a single assignment: requests in flight finish on the model they started with.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from starlette.concurrency import run_in_threadpool

from app.errors import ModelLoadError, ModelNotReady
from app.predictor import LoadedModel, load_model

log = logging.getLogger(__name__)

Loader = Callable[[str], LoadedModel]


class ModelHolder:
    """The served model, the last load failure, and the load loop."""

    def __init__(self, uri: str | None, loader: Loader = load_model) -> None:
        self.uri = uri
        self.loader = loader
        self.current: LoadedModel | None = None
        self.last_error: str | None = None
        self.attempts = 0
        self.failures = 0

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

    def load(self) -> LoadedModel:
        """Load ``uri`` now and swap it in (blocking). Raises ``ModelLoadError``."""
        if self.uri is None:
            raise ModelLoadError("", "no model configured: set MODEL_URI")
        self.attempts += 1
        try:
            model = self.loader(self.uri)
        except ModelLoadError as exc:
            self.failures += 1
            self.last_error = exc.cause
            raise
        self.current = model
        self.last_error = None
        log.info(
            "serving %s (run %s, version %s) loaded in %.2fs",
            model.uri,
            model.run_id,
            model.version,
            model.load_seconds,
        )
        return model

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
