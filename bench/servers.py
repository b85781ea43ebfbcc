"""Start and stop the two servers under test, and read their resident memory."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

import httpx

PROJECT_DIR = Path(__file__).resolve().parents[1]


@dataclass
class Server:
    """A running server: where it answers and its process (the root of its tree)."""

    name: str
    base: str
    proc: subprocess.Popen[bytes]
    log: Path
    ready_s: float = 0.0
    """Seconds from process start to the first 200 on the ready path."""

    def rss_bytes(self) -> tuple[int, int]:
        """Resident memory of the whole process tree: (sum of RSS, sum of PSS)."""
        import psutil

        root = psutil.Process(self.proc.pid)
        rss = pss = 0
        for p in [root, *root.children(recursive=True)]:
            try:
                info = p.memory_full_info()
            except psutil.Error:
                continue
            rss += info.rss
            pss += getattr(info, "pss", info.rss)
        return rss, pss

    def cpu_seconds(self) -> float:
        """CPU time (user and system, every thread) of the whole process tree so far."""
        import psutil

        root = psutil.Process(self.proc.pid)
        total = 0.0
        for p in [root, *root.children(recursive=True)]:
            try:
                times = p.cpu_times()
            except psutil.Error:
                continue
            total += times.user + times.system
        return total

    def cpu_when_idle(self, step: float = 0.05, quiet: float = 0.002, limit: float = 2.0) -> float:
        """``cpu_seconds`` once the tree has used less than ``quiet`` s of CPU in ``step`` s
        (at most ``limit`` s of waiting): what a load left behind (access lines to write,
        rows to copy) is then counted as the load's, and not run during the next server's."""
        deadline = time.monotonic() + limit
        last = self.cpu_seconds()
        while time.monotonic() < deadline:
            time.sleep(step)
            now = self.cpu_seconds()
            if now - last < quiet:
                return now
            last = now
        return last


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def ours_command(uri: str, port: int, workers: int | None) -> list[str]:
    """``python -m app`` on ``uri``; without ``workers`` the service's own default holds."""
    return [
        sys.executable,
        "-m",
        "app",
        "--model-uri",
        uri,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        *(["--workers", str(workers)] if workers else []),
    ]


def bare_command(port: int) -> list[str]:
    """The HTTP floor (``bench.bare``) under the same uvicorn the service runs in."""
    return [
        sys.executable, "-m", "uvicorn", "bench.bare:app", "--host", "127.0.0.1",
        "--port", str(port), "--no-access-log", "--log-level", "warning",
    ]  # fmt: skip


def mlflow_command(uri: str, port: int) -> list[str]:
    mlflow = Path(sys.executable).with_name("mlflow")
    return [
        str(mlflow),
        "models",
        "serve",
        "-m",
        uri,
        "--env-manager",
        "local",
        "--host",
        "127.0.0.1",
        "-p",
        str(port),
    ]


@contextmanager
def running(
    name: str,
    command: list[str],
    port: int,
    *,
    ready_path: str,
    log_dir: Path,
    env: Mapping[str, str] | None = None,
    timeout: float = 600.0,
) -> Iterator[Server]:
    """Run ``command`` in its own session until the block ends; its output goes to a log file."""
    log = log_dir / f"{name}.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            command,
            cwd=PROJECT_DIR,
            # mlflow models serve runs `uvicorn` from PATH: the venv's own.
            env={
                **os.environ,
                "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
                **(env or {}),
            },
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    started = time.monotonic()
    server = Server(name, f"http://127.0.0.1:{port}", proc, log)
    try:
        _wait_ready(server, ready_path, timeout)
        server.ready_s = time.monotonic() - started
        yield server
    finally:
        _stop(proc)


def _wait_ready(server: Server, path: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            tail = server.log.read_text(errors="replace")[-2000:]
            raise RuntimeError(f"{server.name} exited with {server.proc.returncode}:\n{tail}")
        try:
            if httpx.get(server.base + path, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.25)
    raise TimeoutError(f"{server.name} was not ready within {timeout:.0f}s (log: {server.log})")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the server's process group, then SIGKILL what is left."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        with suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=15)
    with suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=15)
