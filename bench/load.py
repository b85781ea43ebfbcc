"""Load generation: wrk (Debian's package) for request rates and latency, httpx for big bodies."""

from __future__ import annotations

import itertools
import json
import shutil
import socket
import statistics
import subprocess
import time
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

# wrk runs this in every one of its threads: POST the body from a file, and at the end print the
# figures as one JSON line (latency in microseconds; non-2xx answers count as errors).
LUA = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "{content_type}"
local f = assert(io.open("{body}", "rb"))
wrk.body = f:read("*a")
f:close()

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH {{"requests": %d, "seconds": %.6f, "errors": %d, "p50_us": %d, "p90_us": %d, '
    .. '"p99_us": %d, "max_us": %d, "mean_us": %.1f}}\\n',
    summary.requests, summary.duration / 1e6,
    e.connect + e.read + e.write + e.status + e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency.max, latency.mean))
end
"""


@dataclass
class WrkResult:
    """One wrk run's figures."""

    connections: int
    requests: int
    seconds: float
    errors: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0


def ensure_wrk() -> str:
    """The path of wrk, installing Debian's package when missing and we are root."""
    found = shutil.which("wrk")
    if found:
        return found
    import os

    if os.geteuid() == 0 and shutil.which("apt-get"):
        print("wrk is missing: installing it (apt-get install wrk)", flush=True)
        subprocess.run(["apt-get", "update", "-qq"], check=False, capture_output=True)
        subprocess.run(["apt-get", "install", "-y", "-qq", "wrk"], check=True, capture_output=True)
        found = shutil.which("wrk")
        if found:
            return found
    raise SystemExit(
        "error: the load tool wrk is not installed; install it with `apt-get install wrk` "
        "(Debian/Ubuntu) and run again"
    )


def run_wrk(
    wrk: str,
    url: str,
    body: Path,
    *,
    content_type: str,
    connections: int,
    seconds: float,
    threads: int,
    work_dir: Path,
) -> WrkResult:
    """``connections`` keep-alive connections posting ``body`` to ``url`` for ``seconds``."""
    script = work_dir / f"post-{body.stem}.lua"
    script.write_text(LUA.format(content_type=content_type, body=body))
    command = [
        wrk,
        f"-t{min(threads, connections)}",
        f"-c{connections}",
        f"-d{max(1, round(seconds))}s",
        "--timeout",
        "30s",
        "-s",
        str(script),
        url,
    ]
    proc = subprocess.run(
        command, check=False, capture_output=True, text=True, timeout=seconds + 120
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("BENCH ")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"wrk failed ({proc.returncode}): {proc.stderr or proc.stdout}")
    data = json.loads(lines[-1][len("BENCH ") :])
    return WrkResult(
        connections=connections,
        requests=int(data["requests"]),
        seconds=float(data["seconds"]),
        errors=int(data["errors"]),
        p50_ms=data["p50_us"] / 1000,
        p90_ms=data["p90_us"] / 1000,
        p99_ms=data["p99_us"] / 1000,
        max_ms=data["max_us"] / 1000,
    )


def post(url: str, body: bytes, content_type: str, timeout: float = 300.0) -> httpx.Response:
    return httpx.post(url, content=body, headers={"Content-Type": content_type}, timeout=timeout)


def time_posts(url: str, body: bytes, content_type: str, repeats: int) -> list[float]:
    """Wall-clock seconds of ``repeats`` sequential POSTs (after one warm-up), each checked 200."""
    with httpx.Client(timeout=300.0) as client:
        headers = {"Content-Type": content_type}
        client.post(url, content=body, headers=headers).raise_for_status()
        times = []
        for _ in range(repeats):
            started = time.perf_counter()
            response = client.post(url, content=body, headers=headers)
            response.json()
            times.append(time.perf_counter() - started)
            response.raise_for_status()
    return times


def median(values: list[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


def times_summary(times: list[float]) -> dict[str, Any]:
    """The median (what the table shows) and every time (what the JSON keeps)."""
    return {"median": median(times), "min": min(times), "all": [round(t, 4) for t in times]}


def httpx_get_json(url: str) -> dict[str, Any]:
    response = httpx.get(url, timeout=30)
    response.raise_for_status()
    data = response.json()
    return data if isinstance(data, dict) else {}


def httpx_post_json(url: str, headers: dict[str, str], timeout: float = 600.0) -> dict[str, Any]:
    response = httpx.post(url, headers=headers, timeout=timeout)
    response.raise_for_status()
    data = response.json()
    return data if isinstance(data, dict) else {}


def httpx_get_text(url: str) -> str:
    response = httpx.get(url, timeout=30)
    response.raise_for_status()
    return response.text


class _Connection:
    """One keep-alive HTTP/1.1 connection posting one body: a bare socket, so the client adds
    the same few microseconds to every server it measures."""

    def __init__(self, url: str, body: bytes, content_type: str) -> None:
        parts = urllib.parse.urlsplit(url)
        self.url = url
        self.sock = socket.create_connection((parts.hostname, parts.port), timeout=30)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        target = parts.path + (f"?{parts.query}" if parts.query else "")
        head = (
            f"POST {target} HTTP/1.1\r\nHost: {parts.netloc}\r\n"
            f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n\r\n"
        )
        self.request = head.encode() + body

    def roundtrip(self) -> float:
        """Seconds from sending the request to the answer's last byte; a non-200 answer or a
        closed connection raises."""
        started = time.perf_counter()
        self.sock.sendall(self.request)
        data = b""
        while b"\r\n\r\n" not in data:
            data += self._recv()
        head, _, rest = data.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        if not lines[0].startswith(b"HTTP/1.1 200"):
            raise RuntimeError(f"{self.url} answered {lines[0].decode(errors='replace')}")
        fields = dict(line.split(b":", 1) for line in lines[1:] if b":" in line)
        length = int({k.strip().lower(): v for k, v in fields.items()}[b"content-length"])
        while len(rest) < length:
            rest += self._recv()
        return time.perf_counter() - started

    def _recv(self) -> bytes:
        chunk = self.sock.recv(1 << 16)
        if not chunk:
            raise RuntimeError(f"{self.url} closed the connection")
        return chunk

    def close(self) -> None:
        self.sock.close()


def warm(url: str, body: bytes, content_type: str, requests: int = 200) -> None:
    """``requests`` posts on one connection, answers not kept: a server idle for seconds (its
    caches taken by the others measured meanwhile) answers its first requests slower, and a
    short run's p99 would be those."""
    connection = _Connection(url, body, content_type)
    try:
        for _ in range(requests):
            connection.roundtrip()
    finally:
        connection.close()


def interleaved(
    urls: dict[str, str], body: bytes, content_type: str, *, seconds: float, warmup: int = 200
) -> dict[str, list[float]]:
    """Latencies (seconds) of one connection per server, one request to each in turn, the
    order rotating every round, for ``seconds``: every server sees the same moments of the
    machine, whose speed here drifts by up to 2x within seconds, so their medians can be
    compared to a few percent where back-to-back wrk runs cannot. ``warmup`` rounds are not
    kept."""
    connections = {name: _Connection(url, body, content_type) for name, url in urls.items()}
    names = list(connections)
    out: dict[str, list[float]] = {name: [] for name in names}
    try:
        deadline = None
        for round_ in itertools.count():
            if round_ == warmup:
                deadline = time.monotonic() + seconds
            if deadline is not None and time.monotonic() > deadline:
                break
            shift = round_ % len(names)
            for name in names[shift:] + names[:shift]:
                took = connections[name].roundtrip()
                if deadline is not None:
                    out[name].append(took)
    finally:
        for connection in connections.values():
            connection.close()
    return out
