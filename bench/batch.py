"""Rows per second of batch scoring (``batch`` on a 2-worker LocalCluster, and on a cluster of a
``dask scheduler`` and 2 ``dask worker`` processes started on their own, without the client's
MLflow settings) beside one process calling ``Booster.predict`` on the same rows in memory.

    .venv/bin/python bench/batch.py [--rows 1000000] [--files 10] [--trees 200]

Synthetic Santander-shaped rows are written as Parquet files to a temporary folder; a LightGBM
model with the project's parameters is logged to a temporary MLflow store. The batch figure
includes reading the files, the service's checks and writing the output parts; the
``Booster.predict`` figure is scoring only (the floor a batch job cannot beat on one machine).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


class WorkerMemory:
    """The highest resident memory of any worker of ``client``'s cluster while the block runs
    (sampled with psutil from this process), beside the smallest ``memory_limit`` Dask gave a
    worker."""

    EVERY = 0.1

    def __init__(self, client: Any) -> None:
        import psutil

        pids = client.run(os.getpid).values()
        self.processes = [psutil.Process(pid) for pid in pids]
        limits = [w["memory_limit"] for w in client.scheduler_info()["workers"].values()]
        self.limit_mb = min(limits) / 2**20
        self.peak_mb = 0.0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        import psutil

        while not self._stop.wait(self.EVERY):
            for p in self.processes:
                try:
                    self.peak_mb = max(self.peak_mb, p.memory_info().rss / 2**20)
                except psutil.Error:  # a worker gone is a worker not using memory
                    continue
            self.samples += 1

    def __enter__(self) -> WorkerMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--files", type=int, default=10)
    parser.add_argument("--trees", type=int, default=200)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="bench-batch-"))
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp / 'mlflow.db'}"
    os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "warning")

    import lightgbm as lgb
    import mlflow
    import numpy as np
    import pandas as pd
    import pyarrow as pa
    import pyarrow.parquet as pq
    from distributed import Client

    from batch.cluster import dask_client, spawn_cluster
    from batch.job import score_files
    from training.train import default_params, model_signature

    rng = np.random.default_rng(0)
    x_train = rng.normal(size=(20_000, 200))
    y_train = (x_train[:, 0] + rng.normal(size=20_000) > 1.3).astype(int)
    features = [f"var_{i}" for i in range(200)]
    booster = lgb.train(
        default_params(0, 0.1),
        lgb.Dataset(x_train, y_train, feature_name=features),
        num_boost_round=args.trees,
    )
    mlflow.set_experiment("bench")
    with mlflow.start_run():
        info = mlflow.lightgbm.log_model(
            booster, name="model", signature=model_signature(), pip_requirements=["lightgbm"]
        )
    uri = info.model_uri

    print(f"writing {args.rows:,} rows to {args.files} Parquet files in {tmp}", file=sys.stderr)
    x = rng.normal(size=(args.rows, 200))
    bounds = np.linspace(0, args.rows, args.files + 1).astype(int)
    for k in range(args.files):
        a, b = bounds[k], bounds[k + 1]
        table = pa.table(
            {"ID_code": pa.array([f"test_{i}" for i in range(a, b)]),
             **{name: x[a:b, j] for j, name in enumerate(features)}}
        )  # fmt: skip
        pq.write_table(table, tmp / f"in-{k:02d}.parquet", row_group_size=50_000)

    started = time.perf_counter()
    reference = booster.predict(x, num_threads=0)
    single = time.perf_counter() - started

    def timed(client: Any, out: Path) -> tuple[Any, float]:
        # Build the model on every worker first: the figure is for scoring, not start-up.
        warm = tmp / f"warm-{out.name}"
        score_files(client, uri, [str(tmp / "in-00.parquet")], warm, rows_per_piece=25_000)
        started = time.perf_counter()
        summary = score_files(client, uri, [str(tmp / "in-*.parquet")], out, rows_per_piece=50_000)
        return summary, time.perf_counter() - started

    with dask_client("local", args.workers) as client, WorkerMemory(client) as memory:
        summary, batch = timed(client, tmp / "out")

    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    (tmp / "home").mkdir()
    env["HOME"] = str(tmp / "home")
    with (
        spawn_cluster(tmp / "cluster", workers=args.workers, env=env, dashboard=False) as cluster,
        Client(cluster.address) as client,  # type: ignore[no-untyped-call]
    ):
        spawned, spawned_seconds = timed(client, tmp / "out-cluster")

    worst = 0.0
    for folder in ("out", "out-cluster"):
        out = pd.concat(pd.read_parquet(p) for p in sorted((tmp / folder).glob("part-*.parquet")))
        assert len(out) == args.rows
        order = out["ID_code"].str.slice(5).astype(int).to_numpy()
        worst = max(worst, float(np.max(np.abs(out["probability"].to_numpy() - reference[order]))))
    cores = os.cpu_count()
    print(
        f"batch scoring (python -m batch, {args.workers} workers x 1 thread, {args.files} Parquet "
        f"files in, Parquet out): {summary.rows:,} rows in {batch:.1f}s = "
        f"{summary.rows / batch:,.0f} rows/s ({summary.describe_backends()})"
    )
    print(
        f"batch scoring on a cluster of its own (dask scheduler + {args.workers} dask worker "
        f"processes x 1 thread, no MLflow settings, the model shipped by the client): "
        f"{spawned.rows:,} rows in {spawned_seconds:.1f}s = {spawned.rows / spawned_seconds:,.0f} "
        f"rows/s ({spawned.describe_backends()})"
    )
    print(
        f"one process, Booster.predict (num_threads=0, {cores} cores, rows in memory): "
        f"{args.rows:,} rows in {single:.1f}s = {args.rows / single:,.0f} rows/s"
    )
    print(f"max |batch - Booster.predict| = {worst:.2e}; model: {args.trees} trees, 13 leaves")
    print(
        f"dask worker memory (LocalCluster, issue 19): peak RSS {memory.peak_mb:,.0f} MB of the "
        f"worker's memory_limit {memory.limit_mb:,.0f} MB "
        f"({'within' if memory.peak_mb <= memory.limit_mb else 'OVER'} its limit); "
        f"{memory.samples} samples every {WorkerMemory.EVERY}s while the 1M rows were scored"
    )
    shutil.rmtree(tmp, ignore_errors=True)  # about 2 GB of Parquet for a million rows
    return 0


if __name__ == "__main__":
    sys.exit(main())
