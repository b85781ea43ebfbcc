#!/usr/bin/env bash
# System programs some tests drive for real: Chromium (the /docs page in a browser), PostgreSQL
# (a shared MLflow backend store) and wrk (the benchmark's load tool). `make test` runs this
# first. As root with apt-get it installs what is missing; otherwise it says what is missing and
# those tests skip (CI sets REQUIRE_BROWSER/REQUIRE_POSTGRES so that there they fail instead).
set -euo pipefail
need=()
command -v chromium >/dev/null || command -v chromium-browser >/dev/null || need+=(chromium)
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null || need+=(postgresql)
command -v wrk >/dev/null || need+=(wrk)
[ ${#need[@]} -eq 0 ] && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "installing ${need[*]} (Debian packages) for the tests" >&2
  apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
else
  echo "note: ${need[*]} not installed; the tests that need them will skip" >&2
fi
