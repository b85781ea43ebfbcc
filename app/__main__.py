"""``python -m app``: check the model URI, then serve it with uvicorn.

    python -m app --model-uri models:/santander@champion --port 8000 --workers 2

A model that cannot be resolved, or that is refused as untrusted (a python-function model without
``ALLOW_UNTRUSTED_MODELS=true``), ends it with status 2 and one line naming the URI and the cause
(with ``MODEL_LOAD_RETRY=true`` it starts anyway and keeps retrying, live but not ready).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

from app.observability import configure_logging


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m app", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--model-uri",
        default=os.environ.get("MODEL_URI"),
        help="MLflow model URI, run id or logged-model id (env MODEL_URI)",
    )
    parser.add_argument("--host", default=os.environ.get("HOST", "0.0.0.0"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8000")))
    parser.add_argument("--workers", type=int, default=None, help="server processes (env WORKERS)")
    parser.add_argument("--check", action="store_true", help="only check the model URI, then exit")
    args = parser.parse_args(argv)

    # MLflow retries an unreachable tracking server for minutes by default; fail fast instead.
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "15")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    configure_logging(
        os.environ.get("LOG_FORMAT", "text").lower(), os.environ.get("LOG_LEVEL", "INFO").upper()
    )

    from pydantic import ValidationError

    from app.auth import ApiKeyError
    from app.config import Settings
    from scoring.errors import ModelLoadError
    from scoring.loading import check_model
    from scoring.model_ref import normalize_model_uri
    from scoring.tracking import tracking_uri
    from scoring.trusted import import_lightgbm_for_serving

    if args.model_uri:
        os.environ["MODEL_URI"] = normalize_model_uri(args.model_uri)
    if args.workers:
        os.environ["WORKERS"] = str(args.workers)
    try:
        settings = Settings()
    except ApiKeyError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except ValidationError as exc:
        first = exc.errors()[0]
        print(
            f"error: {first['loc'][0] if first['loc'] else 'settings'}: {first['msg']}",
            file=sys.stderr,
        )
        return 2
    if not settings.model_uri:
        print("error: no model given: pass --model-uri or set MODEL_URI", file=sys.stderr)
        return 2
    import_lightgbm_for_serving(settings.allow_untrusted_models)
    if not settings.model_load_retry:
        try:
            flavors = check_model(settings.model_uri, settings.load_options())
        except ModelLoadError as exc:
            print(f"error: {exc} (tracking URI: {tracking_uri()})", file=sys.stderr)
            return 2
        print(f"model {settings.model_uri} ({flavors}) from {tracking_uri()}", file=sys.stderr)
    if args.check:
        return 0

    import uvicorn

    from app.connections import protocol_name

    _share_between_workers(settings.workers)

    shown = "0.0.0.0" if args.host in ("0.0.0.0", "::") else args.host
    print(f"docs: http://{shown}:{args.port}/docs", file=sys.stderr)
    uvicorn.run(
        "app.main:serve_app",
        factory=True,
        host=args.host,
        port=args.port,
        workers=settings.workers,
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=10,
        # Connection limits (app.connections): the guarded protocol adds the header timeout,
        # the send timeout and the connection cap. No limit_concurrency: it would answer 503 to
        # health probes whenever that many connections are open, idle ones included.
        http=protocol_name(),
        timeout_keep_alive=settings.keep_alive_timeout_seconds,
        h11_max_incomplete_event_size=settings.max_header_bytes,
    )
    return 0


def _share_between_workers(workers: int) -> None:
    """A folder the workers share: Prometheus' multiprocess files and the reload signal."""
    if workers < 2:
        return
    run_dir = Path(tempfile.mkdtemp(prefix="santander-serving-"))
    metrics_dir = Path(os.environ.get("PROMETHEUS_MULTIPROC_DIR") or run_dir / "metrics")
    metrics_dir.mkdir(parents=True, exist_ok=True)
    for stale in metrics_dir.glob("*.db"):
        stale.unlink()
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)
    os.environ.setdefault("RELOAD_SIGNAL_FILE", str(run_dir / "reload-generation"))


if __name__ == "__main__":
    sys.exit(main())
