"""``python -m batch``: score CSV/Parquet tables with a registered model on a Dask cluster.

See ``batch.job`` for what it does and why re-running it is safe.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

from batch.cluster import dashboard_link, dask_client
from batch.job import BatchError, execute, prepare
from scoring.errors import ModelLoadError


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m batch",
        description="Score CSV/Parquet tables with a registered model on a Dask cluster.",
    )
    parser.add_argument("--model-uri", required=True, help="e.g. models:/santander@champion")
    parser.add_argument(
        "--input",
        required=True,
        action="append",
        help="file, glob or folder: a path or an fsspec URL, e.g. s3://bucket/in/*.parquet "
        "(repeatable)",
    )
    parser.add_argument(
        "--output", required=True, help="folder for the Parquet parts: a path or an fsspec URL"
    )
    parser.add_argument(
        "--scheduler", default="local", help="tcp://host:8786, or 'local' (default): a LocalCluster"
    )
    parser.add_argument("--workers", type=int, help="LocalCluster workers (default: cores)")
    parser.add_argument("--threads-per-worker", type=int, default=1)
    parser.add_argument("--bad-rows", choices=["fail", "skip"], default="fail")
    parser.add_argument("--id-column", default="ID_code")
    parser.add_argument(
        "--drop-column", action="append", default=[], help="a column to ignore, e.g. target"
    )
    parser.add_argument("--rows-per-piece", type=int, default=100_000, help="Parquet")
    parser.add_argument("--csv-block-mb", type=int, default=64)
    parser.add_argument(
        "--predict-threads", type=int, default=1, help="scoring threads per task (default 1)"
    )
    parser.add_argument(
        "--no-compiled",
        dest="compiled",
        action="store_false",
        help="score with LightGBM on the workers, not lleaves-compiled trees",
    )
    parser.add_argument(
        "--compiled-cache-dir",
        help="where each worker machine keeps compiled trees (default: under its temp dir)",
    )
    parser.add_argument(
        "--allow-untrusted-models",
        action="store_true",
        default=os.environ.get("ALLOW_UNTRUSTED_MODELS", "").lower() in ("1", "true", "yes"),
        help="also load models other than LightGBM (their loading can run code; env "
        "ALLOW_UNTRUSTED_MODELS)",
    )
    parser.add_argument(
        "--explain",
        type=int,
        default=0,
        metavar="K",
        help="also write each row's K reason codes (the features with the largest exact "
        "contributions): reason_1_feature, reason_1_value, reason_1_contribution, ...",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace another job's output")
    parser.add_argument("--no-progress", action="store_true")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    # Quiet the cluster's start-up chatter, in this process and in the workers it spawns.
    os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "warning")
    try:
        prepared = prepare(
            args.model_uri,
            args.input,
            args.output,
            id_column=args.id_column,
            drop_columns=args.drop_column,
            bad_rows=args.bad_rows,
            rows_per_piece=args.rows_per_piece,
            csv_block_bytes=args.csv_block_mb << 20,
            predict_threads=args.predict_threads,
            compiled=args.compiled,
            compiled_cache_dir=args.compiled_cache_dir,
            overwrite=args.overwrite,
            allow_untrusted_models=args.allow_untrusted_models,
            explain=args.explain,
        )
        print(
            f"{len(prepared.pieces)} piece(s) to score with {prepared.job.model_uri} "
            f"({prepared.model.flavor}, {prepared.model.nbytes:,} bytes sent once to each worker)",
            file=sys.stderr,
        )
        with dask_client(args.scheduler, args.workers, args.threads_per_worker) as client:
            link = dashboard_link(client)
            print(
                f"dask: {client.scheduler.address}, {len(client.scheduler_info()['workers'])} "
                f"worker(s); dashboard: {link or 'none (the scheduler runs without one)'}",
                file=sys.stderr,
            )
            summary = execute(client, prepared, progress=not args.no_progress)
    except (BatchError, ModelLoadError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(
        f"scored {summary.scored} of {summary.rows} rows from {summary.files} file(s) in "
        f"{summary.seconds:.1f}s ({summary.rows_per_second:,.0f} rows/s) with "
        f"{summary.model_uri}; {summary.rejected} rejected; "
        f"{summary.resumed} of {summary.pieces} part(s) kept from an earlier run -> {args.output}"
    )
    print(f"scoring backend: {summary.describe_backends()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
