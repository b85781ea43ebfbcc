"""Admission to scoring: a bounded number of scoring requests in progress per worker."""

from __future__ import annotations

import asyncio
from typing import Any

from app.observability import Metrics
from scoring.errors import Overloaded


class Slot:
    """One place among the scoring requests in progress; given back when its block ends,
    unless handed over to work that outlives it (then when that work ends).

    A class, not a generator context manager: this runs on every request."""

    __slots__ = ("_handed_over", "_owner")

    def __init__(self, owner: InFlight) -> None:
        self._owner = owner
        self._handed_over = False

    def __enter__(self) -> Slot:
        return self

    def __exit__(self, *_: object) -> None:
        if not self._handed_over:
            self._owner.leave()

    def release_when_done(self, work: asyncio.Future[Any]) -> None:
        """Keep the slot until ``work`` ends, even if the client was answered (504) before."""
        self._handed_over = True
        work.add_done_callback(lambda _: self._owner.leave())


class InFlight:
    """Counts scoring work in progress, including work whose client was already answered 504.

    The ``requests_in_progress`` gauge reads ``count`` whenever the metrics are flushed
    (``Tally.sample``), not on every change."""

    def __init__(self, limit: int, metrics: Metrics) -> None:
        self.limit = limit
        self.count = 0
        self.metrics = metrics
        metrics.tally.sample(metrics.in_progress, lambda: self.count)

    def slot(self) -> Slot:
        """A slot for one request (``with in_flight.slot() as slot:``), or ``Overloaded`` (503 +
        Retry-After) when all are taken.

        Released when the block ends, on every path, unless handed over to background work.
        """
        if self.count >= self.limit:
            self.metrics.shed.inc()
            raise Overloaded(f"{self.count} requests in progress; retry shortly")
        self.count += 1
        return Slot(self)

    def leave(self) -> None:
        self.count -= 1
