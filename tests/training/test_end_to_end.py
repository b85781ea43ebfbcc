"""The README's path end to end: quick training on the command line, then serve its run id."""

from __future__ import annotations

import re
import subprocess
import sys

import numpy as np
import pandas as pd
import requests
from mlflow import MlflowClient

from tests.helpers import PROJECT_DIR, server_process
from tests.training.conftest import Store
from training.promote import CHAMPION, CV_METRIC


def test_quick_training_registers_promotes_and_serves(fresh_store: Store) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "training.train", "--quick", "--rows", "4000"],
        cwd=PROJECT_DIR,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    # RUN=$(python -m training.train --quick | tail -n1): stdout is the run id and nothing else.
    assert re.fullmatch(r"[0-9a-f]{32}\n", proc.stdout), proc.stdout[-2000:]
    run_id = proc.stdout.strip()
    assert re.search(r"fold 1/3  round +100  auc 0\.\d+", proc.stderr), proc.stderr[-3000:]
    assert "promoted to @champion" in proc.stderr

    client = MlflowClient()
    run = client.get_run(run_id)
    assert run.data.tags["preset"] == "quick"
    assert run.data.metrics[CV_METRIC] > 0.6  # clearly better than chance, even on 4,000 rows
    champion = client.get_model_version_by_alias("santander", CHAMPION)
    assert champion.run_id == run_id

    with server_process(
        ["./local-serve.sh", run_id, "--port", "{port}"],
        env={"MLFLOW_TRACKING_URI": fresh_store.uri},
    ) as (base, _):
        # The README snippet's body: one row of 200 random columns, split-oriented JSON.
        columns = [f"var_{i}" for i in range(0, 200)]
        random_data = pd.DataFrame(np.random.random((1, 200)), columns=columns)
        r = requests.post(
            f"{base}/invocations",
            headers={"Content-Type": "application/json"},
            data=random_data.to_json(orient="split"),
            timeout=30,
        )
    assert r.status_code == 200, r.text
    (p,) = r.json()["predictions"]
    assert 0.0 <= p <= 1.0
