"""The access log: one line per request, noted on the request's thread, formatted on the event
loop in batches and written by a thread of its own, in the service's text or JSON format."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import re
import threading
import time
from typing import Any

import pytest
from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from app.observability import AccessLog, silence_uvicorn_access
from bench.bare import app as bare_app

STATE = {"model": "santander/3", "model_version": "3", "rows": 2, "model_role": "champion"}


def test_text_lines_are_written_in_order_once_flushed() -> None:
    stream = io.StringIO()
    log = AccessLog("text", stream)
    log.write("id-1", "POST", "/invocations", 200, duration=0.0015, state=STATE)
    log.write("id-2", "GET", "/health/ready", 503, duration=0.25, state={})
    log.close()
    lines = stream.getvalue().splitlines()
    stamp = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}"
    assert re.fullmatch(
        stamp + r" INFO \[id-1\] app\.access: POST /invocations 200 1\.5ms santander/3", lines[0]
    ), lines[0]
    assert re.fullmatch(
        stamp + r" INFO \[id-2\] app\.access: GET /health/ready 503 250\.0ms", lines[1]
    ), lines[1]
    assert len(lines) == 2


def test_json_lines_carry_every_field() -> None:
    stream = io.StringIO()
    log = AccessLog("json", stream)
    log.write("id-3", "POST", "/invocations", 200, duration=0.002, state=STATE)
    log.flush()
    (line,) = [json.loads(text) for text in stream.getvalue().splitlines()]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d", line.pop("time"))
    assert line == {
        "level": "INFO",
        "logger": "app.access",
        "message": "POST /invocations 200 2.0ms santander/3",
        "request_id": "id-3",
        "method": "POST",
        "path": "/invocations",
        "status": 200,
        "duration_ms": 2.0,
        "rows": 2,
        "model_version": "3",
        "key_id": None,
        "model": "santander/3",
        "model_role": "champion",
    }
    log.close()
    assert stream.getvalue().count("\n") == 1  # nothing written twice


def test_a_batch_of_many_steps_comes_out_whole_and_in_order() -> None:
    stream = io.StringIO()
    log = AccessLog("text", stream)
    n = 3 * AccessLog.FORMAT_STEP + 5
    for i in range(n):
        log.write(f"id-{i}", "POST", "/invocations", 200, duration=0.001, state={})
    log.flush()
    ids = [re.search(r"\[(id-\d+)\]", line)[1] for line in stream.getvalue().splitlines()]  # type: ignore[index]
    assert ids == [f"id-{i}" for i in range(n)]
    log.close()


def test_the_writer_thread_writes_without_being_asked() -> None:
    stream = io.StringIO()
    log = AccessLog("text", stream)
    for i in range(3):
        log.write(f"id-{i}", "POST", "/invocations", 200, duration=0.001, state={})
    waited = 0.0
    while stream.getvalue().count("\n") < 3 and waited < 5:
        time.sleep(0.01)
        waited += 0.01
    assert stream.getvalue().count("\n") == 3  # within a few FLUSH_SECONDS, unprompted
    log.close()
    assert stream.getvalue().count("\n") == 3


def test_lines_noted_on_a_loop_are_formatted_there_in_steps_and_written_in_order() -> None:
    """On a running loop the lines are formatted by the loop's own callbacks (no thread takes
    the GIL from it), a few at a time with other callbacks between, and all come out in
    order, those noted while a batch was being formatted too."""
    stream = io.StringIO()
    log = AccessLog("text", stream)
    formatted_on: set[int] = set()
    steps: list[int] = []
    format_lines = log.format

    def format_and_note(noted: list[Any]) -> str:
        formatted_on.add(threading.get_ident())
        steps.append(len(noted))
        return format_lines(noted)

    log.format = format_and_note  # type: ignore[method-assign]
    n = 3 * AccessLog.FORMAT_STEP + 5
    others: list[int] = []

    async def requests() -> None:
        loop = asyncio.get_running_loop()
        for i in range(n):
            log.write(f"id-{i}", "POST", "/invocations", 200, duration=0.001, state={})
        await asyncio.sleep(AccessLog.FLUSH_SECONDS * 0.5)
        for i in range(n, n + 3):  # noted while the first batch waits or is being formatted
            log.write(f"id-{i}", "POST", "/invocations", 200, duration=0.001, state={})
        deadline = loop.time() + 5
        while stream.getvalue().count("\n") < n + 3 and loop.time() < deadline:
            others.append(len(steps))  # other work of the loop, between the steps
            await asyncio.sleep(0)

    asyncio.run(requests())
    ids = [re.search(r"\[(id-\d+)\]", line)[1] for line in stream.getvalue().splitlines()]  # type: ignore[index]
    assert ids == [f"id-{i}" for i in range(n + 3)]
    assert formatted_on == {threading.get_ident()}, "formatted off the loop's thread"
    assert max(steps) <= AccessLog.FORMAT_STEP and len(steps) >= 4
    assert len(set(others)) > 2, "the loop ran nothing else between the steps"
    log.close()
    assert stream.getvalue().count("\n") == n + 3


def test_lines_a_stopped_loop_left_are_written_by_the_thread(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(AccessLog, "STALE_SECONDS", 0.2)
    stream = io.StringIO()
    log = AccessLog("text", stream)

    async def one_request() -> None:
        log.write("id-0", "POST", "/invocations", 200, duration=0.001, state={})

    asyncio.run(one_request())  # the loop closes before its timer fires
    waited = 0.0
    while "id-0" not in stream.getvalue() and waited < 5:
        time.sleep(0.01)
        waited += 0.01
    assert stream.getvalue().count("\n") == 1
    log.write("id-1", "POST", "/invocations", 200, duration=0.001, state={})
    log.close()
    assert stream.getvalue().count("\n") == 2


def test_uvicorn_builds_no_access_lines_of_its_own() -> None:
    """uvicorn's protocol decides per connection whether to build its access line (from
    whether its logger has handlers, the root's included): after ``silence_uvicorn_access``
    it does not, even with a handler on the root logger (as the service's logging has)."""
    root = logging.getLogger()
    uvicorn_access = logging.getLogger("uvicorn.access")
    saved = (uvicorn_access.handlers[:], uvicorn_access.propagate, uvicorn_access.level)
    handler = logging.NullHandler()
    root.addHandler(handler)
    loop = asyncio.new_event_loop()
    try:
        config = Config(app=bare_app, access_log=False, log_config=None)
        uvicorn_access.propagate = True  # as the root's handlers would reach it otherwise
        assert HttpToolsProtocol(config, ServerState(), {}, _loop=loop).access_log
        silence_uvicorn_access()
        assert not HttpToolsProtocol(config, ServerState(), {}, _loop=loop).access_log
    finally:
        loop.close()
        root.removeHandler(handler)
        uvicorn_access.handlers[:], uvicorn_access.propagate = saved[0], saved[1]
        uvicorn_access.setLevel(saved[2])
