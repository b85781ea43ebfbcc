#!/bin/sh
# Starts `mlflow server` from the environment (see Dockerfile.mlflow). With a PostgreSQL backend
# store it first waits for the database: the `postgres` profile starts both containers at once, and
# MLflow would otherwise exit on its first failed connection.
set -eu
case "$MLFLOW_BACKEND_STORE_URI" in
  postgresql*)
    echo "waiting for the PostgreSQL backend store..."
    python - <<'PY'
import os, sys, time
import sqlalchemy

engine = sqlalchemy.create_engine(os.environ["MLFLOW_BACKEND_STORE_URI"])
deadline = time.monotonic() + float(os.environ.get("MLFLOW_DB_WAIT_SECONDS", "90"))
while True:
    try:
        with engine.connect():
            break
    except Exception as exc:  # noqa: BLE001 - any failure means "not yet"
        if time.monotonic() > deadline:
            sys.exit(f"PostgreSQL backend store not reachable: {exc}")
        time.sleep(1)
PY
    ;;
esac
exec mlflow server \
  --backend-store-uri "$MLFLOW_BACKEND_STORE_URI" \
  --artifacts-destination "$MLFLOW_ARTIFACTS_DESTINATION" \
  --serve-artifacts \
  --host 0.0.0.0 --port 5000 \
  --workers "$MLFLOW_WORKERS" \
  "$@"
