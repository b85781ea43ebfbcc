#!/bin/sh
# JupyterLab on 8888 (published as 10000), token from JUPYTER_TOKEN. Jupyter masks a token it was
# given ("token=..."), so once the server answers this prints the full login URL under the
# published address (LAB_URL): `docker-compose logs lab` shows a link that opens as is.
set -eu
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
token = os.environ.get("JUPYTER_TOKEN", "")
print(f"\n    JupyterLab: {url}/lab?token={token}\n", flush=True)
PY
) &
exec jupyter lab \
  --ip=0.0.0.0 --port=8888 --no-browser \
  --ServerApp.root_dir=/home/lab/project \
  --ServerApp.custom_display_url="${LAB_URL:-http://localhost:10000}" \
  "$@"
