"""Champion and challenger side by side: who answers a request, and shadow scoring.

``CHALLENGER_URI`` (e.g. ``models:/santander@challenger``) is a second ``ModelHolder``, loaded,
checked, compiled, polled and reloaded exactly as the champion, but always in retry mode: a
challenger that cannot load never stops or slows the champion, and ``/model`` says why.

``CHALLENGER_MODE``:

- ``shadow`` (default): the champion answers every request; the same rows are queued (bounded,
  per worker) for the challenger, scored in a thread after the answer went out. A full queue or
  a challenger not loaded drops the rows, counted in ``shadow_dropped_rows_total``. The two
  models' agreement is counted per pair of versions: rows, the sum of absolute differences and
  the rows on different sides of ``DECISION_THRESHOLD``.
- ``split:<fraction>``: that share of requests is answered by the challenger, chosen by a hash
  of ``X-Routing-Key`` when sent (the same key always gets the same model) and at random
  otherwise. Until the challenger is loaded, the champion answers all.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import logging
import random
import time

import numpy as np

from app.dataplane import model_labels
from app.model_holder import ModelHolder
from app.observability import Metrics
from scoring.loading import LoadedModel

log = logging.getLogger(__name__)


def routed_to_challenger(fraction: float, routing_key: str | None) -> bool:
    """Whether a request goes to the challenger: a hash of its key, else a coin toss."""
    if routing_key is None:
        return random.random() < fraction  # a traffic split, not security
    digest = hashlib.sha256(routing_key.encode("utf-8", "replace")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < fraction


SHADOW_INLINE_ROWS = 4
"""Shadow batches up to this many rows are scored on the event loop (a fraction of a ms)."""
SHADOW_BATCH_ITEMS = 256
"""Queued requests scored together at most."""

_Item = tuple[np.ndarray, np.ndarray, str, tuple[str, ...]]


def _grouped(items: list[_Item]) -> list[tuple[_Item, int]]:
    """Queued requests as few batches as possible, each with how many requests it holds:
    consecutive ones scored by the same champion on the same features are stacked into one."""
    groups: list[list[_Item]] = []
    for item in items:
        if groups and groups[-1][0][2:] == item[2:]:
            groups[-1].append(item)
        else:
            groups.append([item])
    return [
        (
            group[0]
            if len(group) == 1
            else (
                np.vstack([g[0] for g in group]),
                np.concatenate([g[1] for g in group]),
                group[0][2],
                group[0][3],
            ),
            len(group),
        )
        for group in groups
    ]


class Shadow:
    """A bounded queue of the champion's scored rows, scored again by the challenger."""

    def __init__(
        self,
        challenger: ModelHolder,
        metrics: Metrics,
        threshold: float,
        size: int,
        *,
        max_rows: int = 100_000,
        linger: float = 0.01,
    ) -> None:
        """``size`` requests at most wait, holding ``max_rows`` rows at most between them;
        rows are scored in batches gathered over ``linger`` seconds."""
        self.challenger = challenger
        self.metrics = metrics
        self.threshold = threshold
        self.max_rows = max_rows
        self.linger = linger
        self.queued_rows = 0
        self.queue: asyncio.Queue[_Item] = asyncio.Queue(size)

    def submit(self, x: np.ndarray, predictions: np.ndarray, champion: LoadedModel) -> None:
        """Queue rows the champion scored (never waits: a full queue drops them, counted)."""
        if self.challenger.current is None:
            self.metrics.shadow_dropped.labels("challenger not loaded").inc(len(x))
            return
        if self.queued_rows + len(x) > self.max_rows:  # bounded in memory, not only in count
            self.metrics.shadow_dropped.labels("queue full").inc(len(x))
            return
        item = (x, predictions, champion.label, champion.predictor.features)
        try:
            self.queue.put_nowait(item)
        except asyncio.QueueFull:
            self.metrics.shadow_dropped.labels("queue full").inc(len(x))
            return
        self.queued_rows += len(x)

    async def run(self) -> None:
        """Score queued rows with the challenger: everything queued within ``linger`` of the
        first as one batch, on the event loop when it is a few rows (cheaper than a thread
        hop), else in a thread (the compiled trees release the GIL)."""
        while True:
            items = [await self.queue.get()]
            # Linger a little: a batch scored in one call costs far less per row than one call
            # per request, and most requests then never wait behind the challenger's work.
            await asyncio.sleep(self.linger)
            while len(items) < SHADOW_BATCH_ITEMS and not self.queue.empty():
                items.append(self.queue.get_nowait())
            try:
                for (x, predictions, champion, features), requests in _grouped(items):
                    work = functools.partial(
                        self.score, x, predictions, champion, features, requests=requests
                    )
                    try:
                        if len(x) <= SHADOW_INLINE_ROWS:
                            work()
                        else:
                            await asyncio.to_thread(work)
                    except Exception:
                        log.exception("shadow scoring failed")
                        self.metrics.shadow_dropped.labels("error").inc(len(x))
            finally:
                for x, *_ in items:
                    self.queued_rows -= len(x)
                    self.queue.task_done()

    def score(
        self,
        x: np.ndarray,
        predictions: np.ndarray,
        champion: str,
        features: tuple[str, ...],
        requests: int = 1,
    ) -> None:
        """Score the champion's rows (of ``requests`` requests) with the challenger, and count
        how the two agree."""
        model = self.challenger.current
        if model is None:
            self.metrics.shadow_dropped.labels("challenger not loaded").inc(len(x))
            return
        wanted = model.predictor.features
        if wanted != features:
            if set(wanted) != set(features):
                self.metrics.shadow_dropped.labels("different features").inc(len(x))
                return
            index = {name: i for i, name in enumerate(features)}
            x = np.ascontiguousarray(x[:, [index[name] for name in wanted]])
        started = time.perf_counter()
        theirs = np.asarray(model.predictor.predict(x, 1), dtype=np.float64)
        labels = model_labels(model, "challenger")
        m = self.metrics
        m.observe_scoring(
            theirs, labels, time.perf_counter() - started, answered=False, requests=requests
        )
        pair = (champion, model.label)
        m.shadow_rows.labels(*pair).inc(len(x))
        m.shadow_abs_difference.labels(*pair).inc(float(np.abs(predictions - theirs).sum()))
        sides = (predictions >= self.threshold) != (theirs >= self.threshold)
        m.shadow_disagreements.labels(*pair).inc(int(sides.sum()))
