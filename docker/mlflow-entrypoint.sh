#!/bin/sh
# Starts `mlflow server` from the environment (see Dockerfile.mlflow), with MLflow's basic-auth
# app: every request but /health needs an account. With a PostgreSQL backend store it first waits
# for the database: the `postgres` profile starts both containers at once, and MLflow would
# otherwise exit on its first failed connection. Then mlflow_auth_setup.py (beside this script)
# writes the auth configuration and the admin, api and lab accounts before the server starts.
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

MLFLOW_AUTH_DIR=${MLFLOW_AUTH_DIR:-/mlflow/auth}
export MLFLOW_AUTH_DIR
umask 077
python "$(dirname "$0")/mlflow_auth_setup.py"
MLFLOW_AUTH_CONFIG_PATH="$MLFLOW_AUTH_DIR/basic_auth.ini"
# The key that signs the auth app's forms; the same in every worker, kept across restarts.
MLFLOW_FLASK_SERVER_SECRET_KEY=${MLFLOW_FLASK_SERVER_SECRET_KEY:-$(cat "$MLFLOW_AUTH_DIR/flask-secret-key")}
export MLFLOW_AUTH_CONFIG_PATH MLFLOW_FLASK_SERVER_SECRET_KEY
# The server needs no password of its own: the accounts exist already. Keep none in its
# environment (the setup script read them).
unset MLFLOW_ADMIN_PASSWORD MLFLOW_API_PASSWORD MLFLOW_LAB_PASSWORD MLFLOW_AUTH_ADMIN_PASSWORD

exec mlflow server \
  --app-name basic-auth \
  --backend-store-uri "$MLFLOW_BACKEND_STORE_URI" \
  --artifacts-destination "$MLFLOW_ARTIFACTS_DESTINATION" \
  --serve-artifacts \
  --host 0.0.0.0 --port 5000 \
  --workers "$MLFLOW_WORKERS" \
  "$@"
