"""Load generation: wrk (Debian's package) for request rates and latency, httpx for big bodies."""

from __future__ import annotations

import json
import shutil
import statistics
import subprocess
import time
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
