"""Native scoring code run on several threads: the caller's own and a pool's.

The compiled trees (``scoring.compiled``) and the TreeSHAP kernels (``scoring.treeshap``) release
the GIL while they run, so a batch cut into shares runs on as many cores as there are shares.
The caller's thread takes the first share itself (one thread fewer to wake) and the others go
to a pool that is made on first use and grows to the largest number of shares asked for.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any


class Helpers:
    """Threads that run the shares of a batch beside the caller's."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._pool: ThreadPoolExecutor | None = None
        self._size = 0
        self._lock = threading.Lock()

    @property
    def size(self) -> int:
        """Threads in the pool (0 before the first batch of several shares)."""
        return self._size

    def run(self, work: Callable[..., None], jobs: list[tuple[Any, ...]]) -> None:
        """``work(*job)`` for every job: the first on this thread, the others on the pool;
        returns when all are done (and raises the first one's error, if any)."""
        if len(jobs) == 1:
            work(*jobs[0])
            return
        pool = self._threads(len(jobs) - 1)
        done = [pool.submit(work, *job) for job in jobs[1:]]
        try:
            work(*jobs[0])
        finally:
            for future in done:
                future.result()

    def _threads(self, n: int) -> ThreadPoolExecutor:
        with self._lock:
            if self._pool is None or self._size < n:
                if self._pool is not None:
                    self._pool.shutdown(wait=False)
                self._pool = ThreadPoolExecutor(max_workers=n, thread_name_prefix=self._name)
                self._size = n
            return self._pool


def shares(n: int, parts: int) -> list[tuple[int, int]]:
    """``range(n)`` cut into ``parts`` consecutive ranges of nearly equal length."""
    bounds = [n * i // parts for i in range(parts + 1)]
    return list(itertools.pairwise(bounds))
