"""Helpers shared by the test packages: free ports, real server processes, small models."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np
import pandas as pd

PROJECT_DIR = Path(__file__).resolve().parents[1]
FEATURES = [f"var_{i}" for i in range(200)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def make_frame(rows: int, seed: int = 0) -> tuple[pd.DataFrame, np.ndarray]:
    """A small learnable Santander-shaped frame: 200 float features, a 0/1 target."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, len(FEATURES))).round(4)
    logit = x[:, 0] * 1.5 - x[:, 1] + 0.5 * x[:, 2] - 1.5
    y = (rng.random(rows) < 1 / (1 + np.exp(-logit))).astype(int)
    return pd.DataFrame(x, columns=FEATURES), y


def wait_http(url: str, timeout: float = 60.0, proc: subprocess.Popen[bytes] | None = None) -> None:
    """Wait until ``url`` answers 200, or fail (early if ``proc`` exits)."""
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before {url} answered")
        try:
            r = httpx.get(url, timeout=2)
            if r.status_code == 200:
                return
            last = r.status_code
        except httpx.HTTPError as exc:
            last = exc
        time.sleep(0.2)
    raise TimeoutError(f"{url} did not answer 200 within {timeout}s (last: {last!r})")


@contextmanager
def server_process(
    args: list[str],
    env: Mapping[str, str] | None = None,
    ready_path: str = "/health/ready",
    port: int | None = None,
    timeout: float = 240.0,
    log_file: Path | None = None,
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """Start a real server process (``args``; ``{port}`` is filled in) and yield its base URL.

    Its output goes to ``log_file`` (a temporary file if not given: a pipe nobody reads would
    fill up and stall a chatty server), shown if it fails to start. Stops it (SIGTERM, then
    SIGKILL) on exit, with its whole process group.
    """
    port = port or free_port()
    full_env = {**os.environ, **(env or {})}
    cmd = [a.format(port=port) for a in args]
    if log_file is None:
        handle, name = tempfile.mkstemp(prefix="server-", suffix=".log")
        os.close(handle)
        log_file = Path(name)
    out = open(log_file, "wb")  # noqa: SIM115
    proc = subprocess.Popen(
        cmd,
        cwd=PROJECT_DIR,
        env=full_env,
        start_new_session=True,
        stdout=out,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        try:
            wait_http(base + ready_path, timeout=timeout, proc=proc)
        except Exception:
            stop_process(proc)
            text = log_file.read_text(errors="replace")
            raise RuntimeError(f"server {cmd} did not get ready:\n{text[-4000:]}") from None
        yield base, proc
    finally:
        stop_process(proc)
        out.close()


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 15.0) -> None:
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=timeout)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=5)


PYTHON = sys.executable
