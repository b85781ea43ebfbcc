#!/usr/bin/env bash
# Serve an MLflow model over the project's FastAPI service.
set -euo pipefail
usage() {
  cat <<'TXT'
Usage: ./local-serve.sh <run-id | m-<logged-model-id> | model-uri> [--port N] [--host H] [--workers N]

Serves the model on http://0.0.0.0:8000 (POST /invocations, docs at /docs).
  <run-id>          a 32-hex MLflow run id: serves runs:/<run-id>/model
  m-<id>            an MLflow 3 logged-model id: serves models:/m-<id>
  <model-uri>       any MLflow model URI: runs:/<id>/model, models:/<name>/<version>,
                    models:/<name>@<alias>, or a local model folder
  --port N          port (default 8000)
  --host H          interface (default 0.0.0.0)
  --workers N       server processes (default: WORKERS, else 1)

The tracking store is MLFLOW_TRACKING_URI when set (e.g. http://localhost:5000 for the
docker-compose server), else the project's own SQLite store (mlflow.db).
TXT
}
cd "$(dirname "$0")"
[ $# -ge 1 ] || { usage >&2; exit 2; }
case "$1" in -h|--help) usage; exit 0 ;; esac
model=$1; shift
args=(--model-uri "$model")
while [ $# -gt 0 ]; do
  case "$1" in
    --port|--host|--workers)
      [ $# -ge 2 ] || { echo "error: $1 needs a value" >&2; exit 2; }
      args+=("$1" "$2"); shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "error: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done
if [ ! -x .venv/bin/python ]; then
  echo "setting up .venv (make install)..." >&2
  make install >&2
fi
exec .venv/bin/python -m app "${args[@]}"
