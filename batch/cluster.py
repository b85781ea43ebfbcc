"""A Dask client: of an existing scheduler, or of a new local cluster of processes."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


@contextmanager
def dask_client(scheduler: str, workers: int | None = None, threads: int = 1) -> Iterator[Any]:
    """A client of ``scheduler``, or of a new ``LocalCluster`` of processes for ``"local"``.

    Processes, not threads: LightGBM's network layer (distributed training) is per process.
    """
    from distributed import Client, LocalCluster

    if scheduler != "local":
        with Client(scheduler) as client:  # type: ignore[no-untyped-call]
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
