"""``read_body``'s deadlines on one timer per loop (``BodyDeadlines``): a body that stops
arriving gets its 408 on time, a cancel from elsewhere stays a cancel, and nothing is left
watched."""

from __future__ import annotations

import asyncio
import time

import pytest
from starlette.requests import Request

from app.config import Settings
from app.dataplane import BodyDeadlines, read_body
from app.observability import Metrics
from scoring.errors import BodyTimeout


def _request(chunks: list[bytes], then_wait: bool) -> Request:
    """A request whose body comes in ``chunks``, then (``then_wait``) never ends."""
    queue = list(chunks)

    async def receive() -> dict:
        if queue:
            return {"type": "http.request", "body": queue.pop(0), "more_body": True}
        if then_wait:
            await asyncio.Event().wait()
        return {"type": "http.request", "body": b"", "more_body": False}

    scope = {"type": "http", "method": "POST", "path": "/invocations", "headers": []}
    return Request(scope, receive)


def test_a_stalled_body_gets_its_timeout_and_a_whole_one_is_read() -> None:
    settings = Settings(body_timeout_seconds=0.3, body_min_rate_bytes_per_second=0)
    metrics = Metrics(None)

    async def main() -> None:
        assert await read_body(_request([b"ab", b"cd"], False), settings, metrics) == b"abcd"
        started = time.monotonic()
        with pytest.raises(BodyTimeout, match=r"did not arrive within 0\.3s"):
            await read_body(_request([b"ab"], True), settings, metrics)
        waited = time.monotonic() - started
        assert 0.3 <= waited < 2.0  # a tick after the deadline; slack for a busy machine
        # The task is usable after the 408: its cancel was taken back.
        task = asyncio.current_task()
        assert task is not None and task.cancelling() == 0
        await asyncio.sleep(0.01)
        deadlines = BodyDeadlines.of(asyncio.get_running_loop())
        assert not deadlines.when and not deadlines.expired

    asyncio.run(main())


def test_a_cancel_from_elsewhere_is_not_taken_for_a_timeout() -> None:
    settings = Settings(body_timeout_seconds=30)

    async def main() -> None:
        reading = asyncio.ensure_future(read_body(_request([], True), settings, Metrics(None)))
        await asyncio.sleep(0.1)
        reading.cancel()
        with pytest.raises(asyncio.CancelledError):
            await reading
        deadlines = BodyDeadlines.of(asyncio.get_running_loop())
        assert not deadlines.when and not deadlines.expired

    asyncio.run(main())


def test_a_slow_body_gets_the_minimum_rate_refusal() -> None:
    settings = Settings(
        body_timeout_seconds=30,
        body_min_rate_bytes_per_second=1000,
        body_min_rate_grace_seconds=0.2,
    )

    async def main() -> None:
        started = time.monotonic()
        with pytest.raises(BodyTimeout, match="the minimum is 1000 bytes/s"):
            await read_body(_request([b"x" * 10], True), settings, Metrics(None))
        assert time.monotonic() - started < 3.0  # the grace period, not the 30 s limit

    asyncio.run(main())
