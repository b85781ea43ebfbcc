#!/usr/bin/env bash
# The main job (`make run`): data -> train -> register/promote -> serve the champion.
#
#   FULL=1   the full training (200,000 rows, 5 folds, ~0.91 CV AUC; minutes) instead of --quick
#   PORT     where to serve (default 8000)
#   SEED     seed for the synthetic data and the training (default 0)
#   DATA     the training CSV (default data/train.csv; put Kaggle's train.csv there to use it)
#
# Without a training file it synthesizes a stand-in with the real data's statistics. The new model
# becomes @champion only if its CV AUC beats the current champion's; the champion is served.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=.venv/bin/python
PORT=${PORT:-8000}
SEED=${SEED:-0}
DATA=${DATA:-data/train.csv}
if [ "${FULL:-0}" = 1 ]; then
  rows=200000
  train_args=()
else
  rows=20000
  # A bigger file (the real one, or a FULL=1 synthesis) is sampled down to the quick preset's size.
  train_args=(--quick --rows "$rows")
fi

if [ ! -f "$DATA" ]; then
  echo "== no $DATA: synthesizing $rows rows (seed $SEED)" >&2
  "$PY" -m training.data --rows "$rows" --seed "$SEED" --out "$DATA"
else
  have=$(($(wc -l <"$DATA") - 1))
  echo "== using $DATA ($have rows)" >&2
  if [ "${FULL:-0}" = 1 ] && [ "$have" -lt "$rows" ]; then
    echo "   note: fewer than $rows rows; remove $DATA to synthesize the full stand-in" >&2
  fi
fi

echo "== training ($([ "${FULL:-0}" = 1 ] && echo full || echo 'quick preset; FULL=1 for the full model'))" >&2
run_id=$("$PY" -m training.train --data "$DATA" --seed "$SEED" "${train_args[@]}" | tail -n1)
echo "== run $run_id logged" >&2

# A ready-to-paste request: the first row of the training data, as split-oriented JSON.
example=data/example-request.json
mkdir -p "$(dirname "$example")"
"$PY" - "$DATA" "$example" <<'PYTHON'
import sys

import pandas as pd

from training.data import FEATURES

row = pd.read_csv(sys.argv[1], nrows=1)[FEATURES]
with open(sys.argv[2], "w") as out:
    out.write(row.to_json(orient="split"))
PYTHON

cat <<TXT

== serving models:/santander@champion on port $PORT
   API docs:  http://localhost:$PORT/docs
   Try it (from this folder, once the server says it is ready):

curl -X POST -H 'Content-Type: application/json' --data @$example http://localhost:$PORT/invocations

TXT
exec ./local-serve.sh models:/santander@champion --port "$PORT"
