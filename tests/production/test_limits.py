"""The service's admission, memory and connection limits against a real server process (issues 19
and 21): each limit trips, answers with its status and is counted in /metrics; a burst of big
bodies under a small memory limit gets only 200s and 503s and stays under the limit; one hostile
client cannot starve honest one-row requests on one worker."""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import json
import os
import re
import resource
import socket
import threading
import time
from collections.abc import Iterator

import httpx
import numpy as np
import pytest

from tests.conftest import LoggedModel
from tests.helpers import FEATURES, PYTHON, server_process

J = {"content-type": "application/json"}
ONE_ROW = json.dumps({"columns": FEATURES, "data": [[0.5] * 200]}).encode()


def rows_body(rows: int, seed: int = 0) -> bytes:
    x = np.random.default_rng(seed).normal(size=(rows, 200)).round(4)
    return json.dumps({"columns": FEATURES, "data": x.tolist()}).encode()


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def sockets(pid: int) -> int:
    """The server's open sockets (its listening socket and its connections)."""
    count = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):
            count += os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:")
    return count


def metric(text: str, name: str, **labels: str) -> float:
    """A sample's value in Prometheus text (0 when absent)."""
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    pattern = rf"^{re.escape(name)}(?:\{{{re.escape(want)}\}})? ([0-9.e+-]+)$"
    found = re.search(pattern, text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


def serve(model: LoggedModel, **env: str):  # type: ignore[no-untyped-def]
    args = [PYTHON, "-m", "app", "--model-uri", model.model_uri, "--port", "{port}"]
    return server_process(args, env={"LOG_LEVEL": "WARNING", **env})


def address(base: str) -> tuple[str, int]:
    host, port = base.removeprefix("http://").split(":")
    return host, int(port)


def request_head(length: int, content_type: str = "application/json") -> bytes:
    return (
        f"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {length}\r\n\r\n"
    ).encode()


def read_answer(s: socket.socket, limit: float = 20) -> str:
    """What the server sends until it closes the connection (or ``limit`` seconds pass)."""
    s.settimeout(limit)
    answer = b""
    with contextlib.suppress(OSError):
        while chunk := s.recv(65536):
            answer += chunk
    return answer.decode(errors="replace")


# --- (a) memory: a burst of big bodies under a small limit ---------------------------------

MEMORY_LIMIT_MB = 700


def test_a_burst_of_big_bodies_stays_within_the_memory_limit(booster_model: LoggedModel) -> None:
    env = {
        "MEMORY_LIMIT_MB": str(MEMORY_LIMIT_MB),
        "MEMORY_WAIT_SECONDS": "0.5",
        "MEMORY_QUEUE": "2",
    }
    with serve(booster_model, **env) as (base, proc):
        idle = rss_mb(proc.pid)
        assert idle < MEMORY_LIMIT_MB * 0.75, f"the idle worker alone takes {idle:.0f} MB"
        big = rows_body(5_000)  # 7 MB; about 90 MB reserved each: two or three fit at once
        peak = [idle]
        done = threading.Event()

        def sample() -> None:
            while not done.is_set():
                peak[0] = max(peak[0], rss_mb(proc.pid))
                time.sleep(0.01)

        def post_big(_: int) -> httpx.Response:
            return httpx.post(f"{base}/invocations", content=big, headers=J, timeout=60)

        small: list[int] = []

        def one_rows() -> None:
            with httpx.Client(timeout=30) as client:
                while not done.is_set():
                    small.append(
                        client.post(f"{base}/invocations", content=ONE_ROW, headers=J).status_code
                    )

        sampler = threading.Thread(target=sample)
        sampler.start()
        smalls = threading.Thread(target=one_rows)
        smalls.start()
        try:
            with cf.ThreadPoolExecutor(16) as pool:
                answers = list(pool.map(post_big, range(32)))
        finally:
            done.set()
            sampler.join()
            smalls.join()
        metrics = httpx.get(f"{base}/metrics").text

    statuses = [r.status_code for r in answers]
    print(  # the figures, for `pytest -s`
        f"burst: {statuses.count(200)} x 200, {statuses.count(503)} x 503, {len(small)} one-row "
        f"requests meanwhile; RSS idle {idle:.0f} MB, peak {peak[0]:.0f} MB"
    )
    assert set(statuses) <= {200, 503}, statuses
    assert statuses.count(200) >= 4, statuses
    for r in answers:
        if r.status_code == 503:
            assert r.headers["retry-after"] and r.json()["error_code"] == "OVERLOADED"
        else:
            assert len(r.json()["predictions"]) == 5_000
    assert statuses.count(503) >= 1, f"the burst never met the limit: peak {peak[0]:.0f} MB"
    assert small and set(small) == {200}, "one-row requests must keep answering"
    assert peak[0] < MEMORY_LIMIT_MB, f"RSS {idle:.0f} MB idle, {peak[0]:.0f} MB at the peak"
    assert metric(metrics, "memory_shed_total") == statuses.count(503)
    assert metric(metrics, "memory_waits_total") >= 1
    assert metric(metrics, "memory_limit_bytes") == MEMORY_LIMIT_MB * 2**20


# --- (b) one hostile client, one worker -------------------------------------------------------


def _raise_file_limit(wanted: int) -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = min(hard, max(soft, wanted))
    if target > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return target


def test_one_hostile_client_cannot_starve_honest_requests(booster_model: LoggedModel) -> None:
    files = _raise_file_limit(2_400)
    idle_count = min(2_000, files - 300)
    env = {
        "HEADER_TIMEOUT_SECONDS": "25",
        "SEND_TIMEOUT_SECONDS": "5",
        "BODY_MIN_RATE_GRACE_SECONDS": "3",
        "KEEP_ALIVE_TIMEOUT_SECONDS": "2",
    }
    with serve(booster_model, **env) as (base, proc):
        host, port = address(base)
        for _ in range(3):  # warm up, so memory and connections are measured as in service
            httpx.post(f"{base}/invocations", content=rows_body(10_000), headers=J, timeout=60)
        time.sleep(3)
        before_sockets, before_rss = sockets(proc.pid), rss_mb(proc.pid)
        opened: list[socket.socket] = []
        stop = threading.Event()

        def slow_sender() -> None:
            s = socket.create_connection((host, port), timeout=30)
            opened.append(s)
            with contextlib.suppress(OSError):
                s.sendall(request_head(1_000) + b"{")
                while not stop.wait(2):
                    s.sendall(b" ")

        big = rows_body(10_000)

        def slow_reader() -> None:
            s = socket.socket()
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            s.settimeout(60)
            s.connect((host, port))
            opened.append(s)
            with contextlib.suppress(OSError):
                s.sendall(request_head(len(big)) + big)  # and never reads the answer

        threads = [threading.Thread(target=slow_sender) for _ in range(100)]
        threads += [threading.Thread(target=slow_reader) for _ in range(20)]
        for t in threads:
            t.start()
        for _ in range(idle_count):
            with contextlib.suppress(OSError):
                opened.append(socket.create_connection((host, port), timeout=10))
        wait_until = time.monotonic() + 20  # the kernel queues them; the server accepts
        while time.monotonic() < wait_until and sockets(proc.pid) < idle_count * 0.9:
            time.sleep(0.2)
        during_sockets = sockets(proc.pid)

        honest: list[tuple[int, float]] = []
        for _ in range(40):
            started = time.monotonic()
            r = httpx.post(f"{base}/invocations", content=ONE_ROW, headers=J, timeout=30)
            honest.append((r.status_code, time.monotonic() - started))
            time.sleep(0.05)

        stop.set()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and sockets(proc.pid) > before_sockets + 5:
            time.sleep(0.5)  # the server closes them itself: header, body and send timeouts
        after_sockets = sockets(proc.pid)
        time.sleep(2)
        after_rss = rss_mb(proc.pid)
        metrics = httpx.get(f"{base}/metrics").text
        for s in opened:
            s.close()
        for t in threads:
            t.join(timeout=30)

    print(  # the figures, for `pytest -s`
        f"hostile: sockets {before_sockets} -> {during_sockets} -> {after_sockets}; RSS "
        f"{before_rss:.0f} -> {after_rss:.0f} MB; slowest honest request "
        f"{max(took for _, took in honest):.3f}s"
    )
    assert during_sockets > before_sockets + idle_count // 2, "the attack did not connect"
    assert [status for status, _ in honest] == [200] * 40, honest
    slowest = max(took for _, took in honest)
    assert slowest < 1.0, f"an honest request took {slowest:.2f}s"
    assert after_sockets <= before_sockets + 5, (before_sockets, after_sockets)
    assert after_rss < before_rss * 1.3 + 50, f"RSS {before_rss:.0f} MB -> {after_rss:.0f} MB"
    assert metric(metrics, "request_bodies_cut_total", reason="too_slow") >= 100
    assert metric(metrics, "connections_closed_total", reason="header_timeout") >= idle_count / 2


# --- (c) each limit trips, answers with its status, and is counted ---------------------------


@pytest.fixture(scope="module")
def tight(booster_model: LoggedModel) -> Iterator[tuple[str, int]]:
    env = {
        "MAX_CONNECTIONS": "30",
        "HEADER_TIMEOUT_SECONDS": "2",
        "KEEP_ALIVE_TIMEOUT_SECONDS": "1",
        "SEND_TIMEOUT_SECONDS": "2",
        "BODY_TIMEOUT_SECONDS": "4",
        "BODY_MIN_RATE_GRACE_SECONDS": "1",
        "BODY_MIN_RATE_BYTES_PER_SECOND": "1000",
        "MAX_HEADER_BYTES": "4096",
        "MAX_BODY_READS": "3",
        "MEMORY_LIMIT_MB": "3000",
    }
    with serve(booster_model, **env) as (base, proc):
        yield base, proc.pid


def counted(base: str, name: str, **labels: str) -> float:
    return metric(httpx.get(f"{base}/metrics").text, name, **labels)


def test_a_trickling_body_gets_408_after_the_grace_period(tight: tuple[str, int]) -> None:
    base, _ = tight
    before = counted(base, "request_bodies_cut_total", reason="too_slow")
    with socket.create_connection(address(base), timeout=20) as s:
        s.sendall(request_head(len(ONE_ROW)) + ONE_ROW[:10])
        started = time.monotonic()
        answer = read_answer(s)
    assert answer.startswith("HTTP/1.1 408") and "BODY_TIMEOUT" in answer, answer[:200]
    assert "minimum" in answer
    assert time.monotonic() - started < 4, "cut by the rate, before the total timeout"
    assert counted(base, "request_bodies_cut_total", reason="too_slow") == before + 1


def test_a_body_over_the_total_time_gets_408(tight: tuple[str, int]) -> None:
    base, _ = tight
    before = counted(base, "request_bodies_cut_total", reason="timeout")
    body = b" " * 6_000
    with socket.create_connection(address(base), timeout=20) as s:
        s.sendall(request_head(len(body) + len(ONE_ROW)))
        for i in range(0, len(body), 1_500):  # 1,500 B/s: above the minimum rate, yet too long
            s.sendall(body[i : i + 1_500])
            time.sleep(1)
        answer = read_answer(s)
    assert answer.startswith("HTTP/1.1 408") and "did not arrive within" in answer, answer[:200]
    assert counted(base, "request_bodies_cut_total", reason="timeout") == before + 1


def test_too_many_bodies_arriving_get_503(tight: tuple[str, int]) -> None:
    base, _ = tight
    before = counted(base, "body_reads_shed_total")
    held = [socket.create_connection(address(base), timeout=20) for _ in range(3)]
    try:
        for s in held:
            s.sendall(request_head(len(ONE_ROW)) + ONE_ROW[:10])
        time.sleep(0.3)
        r = httpx.post(f"{base}/invocations", content=ONE_ROW, headers=J, timeout=10)
        assert r.status_code == 503 and r.json()["error_code"] == "OVERLOADED"
        assert r.headers["retry-after"]
    finally:
        for s in held:
            s.close()
    assert counted(base, "body_reads_shed_total") == before + 1


def test_a_silent_connection_is_closed_after_the_header_timeout(tight: tuple[str, int]) -> None:
    base, _ = tight
    before = counted(base, "connections_closed_total", reason="header_timeout")
    with socket.create_connection(address(base), timeout=20) as s:
        s.sendall(b"POST /invocations HTTP/1.1\r\nHost: x\r\n")  # and never ends its headers
        started = time.monotonic()
        assert read_answer(s) == ""
    assert 1.5 < time.monotonic() - started < 10
    assert counted(base, "connections_closed_total", reason="header_timeout") == before + 1


class Answers:
    """Whole answers read one by one from a keep-alive connection: each head, and its body by
    its length. Pipelined answers may arrive in one read; what follows an answer is kept for
    the next."""

    def __init__(self, s: socket.socket) -> None:
        self.s = s
        self.data = b""

    def _more(self, what: str) -> None:
        chunk = self.s.recv(65536)
        assert chunk, f"the connection closed mid-{what}: {self.data[:200]!r}"
        self.data += chunk

    def next(self, head_only: bool = False) -> tuple[str, bytes]:
        while b"\r\n\r\n" not in self.data:
            self._more("answer")
        head, _, rest = self.data.partition(b"\r\n\r\n")
        length = 0 if head_only else int(re.search(rb"content-length: (\d+)", head.lower())[1])  # type: ignore[index]
        while len(rest) < length:
            self.data = head + b"\r\n\r\n" + rest
            self._more("body")
            head, _, rest = self.data.partition(b"\r\n\r\n")
        self.data = rest[length:]
        return head.decode(), rest[:length]


def test_answers_come_whole_on_a_keep_alive_connection(tight: tuple[str, int]) -> None:
    """The head of each answer is written with its body (``HeadWithBody``): an interim ``100
    Continue`` still comes at once, a HEAD answer (no body) as soon as it is done, and
    pipelined answers in order, all on one connection."""
    base, _ = tight
    with socket.create_connection(address(base), timeout=10) as s:
        head = request_head(len(ONE_ROW)).replace(b"\r\n\r\n", b"\r\nExpect: 100-continue\r\n\r\n")
        s.sendall(head)
        assert s.recv(65536).startswith(b"HTTP/1.1 100 Continue\r\n"), "asked to go on"
        s.sendall(ONE_ROW)
        answers = Answers(s)
        status, body = answers.next()
        assert status.startswith("HTTP/1.1 200") and b"predictions" in body, status
        assert answers.data == b"", "nothing beyond the answer"
        s.sendall(b"HEAD /health/live HTTP/1.1\r\nHost: x\r\n\r\n")
        status, _ = answers.next(head_only=True)  # no body follows a HEAD answer's head
        assert re.match(r"HTTP/1.1 [24]\d\d ", status), status  # (FastAPI: 405 for HEAD)
        assert answers.data == b"", "no body after a HEAD answer's head"
        s.sendall((request_head(len(ONE_ROW)) + ONE_ROW) * 2 + request_head(2) + b"{}")
        pipelined = [answers.next() for _ in range(3)]
        assert [a[0][:12] for a in pipelined] == ["HTTP/1.1 200"] * 2 + ["HTTP/1.1 422"]
        assert pipelined[0][1] == pipelined[1][1] and b"predictions" in pipelined[0][1]
        assert answers.data == b"", "nothing beyond the three answers"


def test_oversized_headers_get_431(tight: tuple[str, int]) -> None:
    base, _ = tight
    before = counted(base, "connections_closed_total", reason="header_too_large")
    with socket.create_connection(address(base), timeout=20) as s:
        s.sendall(b"GET /health/live HTTP/1.1\r\nHost: x\r\n")
        with contextlib.suppress(OSError):
            for i in range(20):
                s.sendall(f"X-Filler-{i}: {'a' * 1000}\r\n".encode())
        answer = read_answer(s)
    assert answer.startswith("HTTP/1.1 431") and "HEADERS_TOO_LARGE" in answer, answer[:200]
    assert counted(base, "connections_closed_total", reason="header_too_large") == before + 1


def test_an_idle_keep_alive_connection_is_closed(tight: tuple[str, int]) -> None:
    base, _ = tight
    with socket.create_connection(address(base), timeout=20) as s:
        s.sendall(b"GET /health/live HTTP/1.1\r\nHost: x\r\n\r\n")
        started = time.monotonic()
        answer = read_answer(s)  # the answer, then the close after the keep-alive timeout
    assert answer.startswith("HTTP/1.1 200")
    assert time.monotonic() - started < 5


def test_beyond_max_connections_idle_ones_make_room_and_busy_ones_refuse(
    booster_model: LoggedModel,
) -> None:
    with serve(booster_model, MAX_CONNECTIONS="5") as (base, _):
        idle = [socket.create_connection(address(base), timeout=20) for _ in range(8)]
        try:
            time.sleep(0.3)
            # Over the cap with idle connections: a new one is served, the longest idle closed.
            assert httpx.get(f"{base}/health/live", timeout=10).status_code == 200
            assert counted(base, "connections_closed_total", reason="idle_evicted") >= 3
            assert read_answer(idle[0], limit=5) == "", "the oldest idle connection is closed"
        finally:
            for s in idle:
                s.close()
        time.sleep(0.5)
        # Five connections each in the middle of a body: none to close, so the next is refused.
        busy = [socket.create_connection(address(base), timeout=20) for _ in range(5)]
        try:
            for s in busy:
                s.sendall(request_head(len(ONE_ROW)) + ONE_ROW[:10])
            time.sleep(0.3)
            with socket.create_connection(address(base), timeout=20) as s:
                answer = read_answer(s, limit=5)
            assert answer.startswith("HTTP/1.1 503") and "OVERLOADED" in answer, answer[:200]
        finally:
            for s in busy:
                s.close()
        time.sleep(0.5)
        assert counted(base, "connections_refused_total") == 1
        assert httpx.get(f"{base}/health/live", timeout=10).status_code == 200


def test_a_client_that_never_reads_its_answer_is_dropped(tight: tuple[str, int]) -> None:
    base, _ = tight
    before = counted(base, "connections_closed_total", reason="slow_reader")
    # A thousand pipelined /metrics (6 kB each): more answer than the kernel buffers hold.
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.settimeout(30)
    try:
        s.connect(address(base))
        s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n" * 1_000)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if counted(base, "connections_closed_total", reason="slow_reader") > before:
                break
            time.sleep(0.5)
    finally:
        s.close()
    assert counted(base, "connections_closed_total", reason="slow_reader") == before + 1
    assert httpx.get(f"{base}/health/live", timeout=10).status_code == 200
