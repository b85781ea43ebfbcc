"""Dask clients: of an existing scheduler, of a new local cluster, or of a cluster of separate
processes started the way other machines would start theirs (for tests and benchmarks)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@contextmanager
def dask_client(scheduler: str, workers: int | None = None, threads: int = 1) -> Iterator[Any]:
    """A client of ``scheduler``, or of a new ``LocalCluster`` of processes for ``"local"``.

    Processes, not threads: LightGBM's network layer (distributed training) is per process.
    """
    from distributed import Client, LocalCluster

    if scheduler != "local":
        with Client(scheduler, timeout=60) as client:  # type: ignore[no-untyped-call]
            yield client
        return
    try:
        import bokeh  # noqa: F401

        dashboard: str | None = "127.0.0.1:0"
    except ImportError:
        dashboard = None  # the dashboard needs bokeh; the progress bar does not
    n = workers or max((os.cpu_count() or 1), 1)
    with (
        LocalCluster(  # type: ignore[no-untyped-call]
            n_workers=n,
            threads_per_worker=threads,
            processes=True,
            host="127.0.0.1",
            dashboard_address=dashboard,
        ) as cluster,
        Client(cluster) as client,  # type: ignore[no-untyped-call]
    ):
        yield client


def dashboard_link(client: Any) -> str | None:
    """The scheduler's dashboard URL, or ``None`` when it runs without one."""
    services = client.scheduler_info().get("services", {})
    return str(client.dashboard_link) if "dashboard" in services else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class SpawnedCluster:
    """A scheduler and workers running as separate processes (see ``spawn_cluster``)."""

    address: str
    dashboard: str | None
    folders: list[Path]
    """Each worker's working directory (its cwd and Dask's local directory)."""
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)
    logs: list[Path] = field(default_factory=list)

    def log_tail(self, chars: int = 3000) -> str:
        return "\n".join(
            f"--- {log.name}\n{log.read_text(errors='replace')[-chars:]}" for log in self.logs
        )


def _stop(proc: subprocess.Popen[bytes], timeout: float = 15.0) -> None:
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=timeout)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=5)


@contextmanager
def spawn_cluster(
    folder: Path,
    *,
    workers: int = 2,
    threads: int = 1,
    env: Mapping[str, str] | None = None,
    dashboard: bool = True,
    timeout: float = 120.0,
) -> Iterator[SpawnedCluster]:
    """``dask scheduler`` and ``workers`` x ``dask worker`` as processes of their own, on
    127.0.0.1 and free ports, as a team would start them on other machines: each worker in its
    own folder under ``folder`` (its working directory), with exactly ``env`` as its environment
    (default: this one), nothing inherited from the client. Stopped, with their process groups,
    on exit, whatever happens.

    Raises:
        RuntimeError: the cluster did not come up within ``timeout`` seconds (with the logs).
    """
    from distributed import Client

    dask = str(Path(sys.executable).with_name("dask"))
    environment = dict(os.environ if env is None else env)
    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    dash_port = free_port() if dashboard else None
    scheduler = [dask, "scheduler", "--host", "127.0.0.1", "--port", str(port)]
    scheduler += (
        ["--dashboard-address", f"127.0.0.1:{dash_port}"] if dashboard else ["--no-dashboard"]
    )
    cluster = SpawnedCluster(
        address,
        f"http://127.0.0.1:{dash_port}/status" if dashboard else None,
        [folder / f"worker-{i}" for i in range(workers)],
    )
    commands: list[tuple[list[str], Path]] = [(scheduler, folder / "scheduler")]
    for i, cwd in enumerate(cluster.folders):
        worker = [
            dask, "worker", address, "--name", f"worker-{i}", "--host", "127.0.0.1",
            "--nthreads", str(threads), "--nworkers", "1", "--no-dashboard",
            "--local-directory", str(cwd / "dask"), "--death-timeout", "60",
        ]  # fmt: skip
        commands.append((worker, cwd))
    handles = []
    try:
        for command, cwd in commands:
            cwd.mkdir(parents=True, exist_ok=True)
            log = folder / f"{cwd.name}.log"
            handle = open(log, "wb")  # noqa: SIM115
            handles.append(handle)
            cluster.logs.append(log)
            cluster.processes.append(
                subprocess.Popen(
                    command,
                    cwd=cwd,
                    env=environment,
                    stdout=handle,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            )
        deadline = time.monotonic() + timeout
        try:
            with Client(address, timeout=timeout) as client:  # type: ignore[no-untyped-call]
                left = max(deadline - time.monotonic(), 1.0)
                client.wait_for_workers(workers, timeout=left)
        except (OSError, TimeoutError) as exc:
            dead = [f"pid {p.pid}" for p in cluster.processes if p.poll() is not None]
            raise RuntimeError(
                f"the Dask cluster did not come up ({type(exc).__name__}: {exc}; exited: {dead})"
                f"\n{cluster.log_tail()}"
            ) from None
        yield cluster
    finally:
        for proc in reversed(cluster.processes):  # workers first, then the scheduler
            _stop(proc)
        for handle in handles:
            handle.close()
