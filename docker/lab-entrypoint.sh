#!/bin/sh
# JupyterLab on 8888 (published as 10000). Its token is JUPYTER_TOKEN when set; otherwise a random
# one generated at first start and kept in the lab's volume (LAB_TOKEN_FILE), so it survives
# restarts and there is no published default. Jupyter masks the token in its own log line, so once
# the server answers this prints the full login URL under the published address (LAB_URL):
# `docker-compose logs lab` shows a link that opens as is.
set -eu
if [ -z "${JUPYTER_TOKEN:-}" ]; then
  token_file=${LAB_TOKEN_FILE:-/home/lab/project/data/.jupyter-token}
  if [ ! -s "$token_file" ]; then
    (umask 077 && python -c 'import secrets; print(secrets.token_hex(24))' > "$token_file.tmp")
    mv "$token_file.tmp" "$token_file"
    echo "generated a Jupyter token, kept in the lab volume ($token_file); JUPYTER_TOKEN overrides it"
  fi
  JUPYTER_TOKEN=$(cat "$token_file")
  export JUPYTER_TOKEN
fi
(
  python - <<'PY'
import os, time, urllib.request

for _ in range(240):
    try:
        urllib.request.urlopen("http://127.0.0.1:8888/api", timeout=2)
        break
    except OSError:
        time.sleep(0.5)
url = os.environ.get("LAB_URL", "http://localhost:10000").rstrip("/")
token = os.environ["JUPYTER_TOKEN"]
print(f"\n    JupyterLab: {url}/lab?token={token}\n", flush=True)
PY
) &
exec jupyter lab \
  --ip=0.0.0.0 --port=8888 --no-browser \
  --ServerApp.root_dir=/home/lab/project \
  --ServerApp.custom_display_url="${LAB_URL:-http://localhost:10000}" \
  "$@"
