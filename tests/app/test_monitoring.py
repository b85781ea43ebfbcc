"""Drift against the training data and the inference log, on a real server process.

The model is trained by the training pipeline's own functions on the synthetic stand-in (so its
reference profile is logged by ``log_and_register``, as ``training.train`` logs it) and served by
``python -m app`` from the registry. Rows sent are fresh draws of the same stand-in: as drawn
(no drift), then with five features shifted by one training standard deviation.

Why the thresholds hold (seeded, and with a wide margin): with 10 bins, sampling alone gives a
feature a PSI of about chi2(9) * (1/window + 1/reference rows) = 9 * (1/3000 + 1/6000) ~ 0.005
on average, and the largest of 200 features stays under ~0.02, far below 0.1; a shift of one
standard deviation moves about a third of the rows across decile edges, a PSI near 1.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
from fastapi.testclient import TestClient

from tests.conftest import (
    DRIFT_MODEL as NAME,
)
from tests.conftest import (
    DRIFT_WINDOW as WINDOW,
)
from tests.conftest import (
    SHIFTED,
    LoggedModel,
    fresh_rows,
)
from tests.helpers import server_process
from training.data import FEATURES

BATCH = 250


def send(base: str, rows: pd.DataFrame, prefix: str) -> dict[str, pd.DataFrame]:
    """Score ``rows`` in batches; returns the rows sent under each X-Request-ID answered."""
    sent: dict[str, pd.DataFrame] = {}
    with httpx.Client(base_url=base, timeout=30) as client:
        for k, start in enumerate(range(0, len(rows), BATCH)):
            chunk = rows.iloc[start : start + BATCH]
            # Half the requests name their id, half let the service make one.
            headers = {"Content-Type": "application/json"}
            if k % 2 == 0:
                headers["X-Request-ID"] = f"{prefix}-{k}"
            r = client.post("/invocations", content=chunk.to_json(orient="split"), headers=headers)
            assert r.status_code == 200, r.text
            assert len(r.json()["predictions"]) == len(chunk)
            rid = r.headers["x-request-id"]
            if k % 2 == 0:
                assert rid == f"{prefix}-{k}"
            sent[rid] = chunk
    return sent


def wait_computed(base: str, rows_seen: int, timeout: float = 60.0) -> dict[str, Any]:
    """The drift report once it covers ``rows_seen`` rows."""
    deadline = time.monotonic() + timeout
    drift: dict[str, Any] = {}
    while time.monotonic() < deadline:
        drift = httpx.get(base + "/monitoring", timeout=10).json()["drift"]
        if drift.get("computed_rows_seen") == rows_seen and drift.get("computed_rows") == WINDOW:
            return drift
        time.sleep(0.2)
    raise AssertionError(f"drift never covered {rows_seen} rows: {drift}")


def psi_from_metrics(base: str) -> dict[str, float]:
    found = {}
    for line in httpx.get(base + "/metrics", timeout=10).text.splitlines():
        if line.startswith("model_feature_psi{"):
            labels, value = line.rsplit(" ", 1)
            feature = labels.split('feature="', 1)[1].split('"', 1)[0]
            assert f'model="{NAME}"' in labels and 'version="' in labels
            found[feature] = float(value)
    return found


def serve(model_uri: str, log_dir: Path, **env: str) -> Any:
    settings = {
        "DRIFT_WINDOW": str(WINDOW),
        "DRIFT_EVERY_SECONDS": "0.3",
        "DRIFT_MIN_ROWS": "1000",
        "COMPILED_PREDICTOR": "false",
        "INFERENCE_LOG_DIR": str(log_dir),
        "INFERENCE_LOG_ROLL_SECONDS": "1",
        "ADMIN_TOKEN": "admin-secret-token",
        **env,
    }
    args = [sys.executable, "-m", "app", "--model-uri", model_uri, "--host", "127.0.0.1"]
    return server_process([*args, "--port", "{port}"], env=settings)


def test_drift_flags_exactly_the_shifted_features_and_the_log_holds_every_row(
    profiled_model: str, tmp_path: Path
) -> None:
    same, shifted = fresh_rows()
    log_dir = tmp_path / "log"
    with serve(profiled_model, log_dir) as (base, proc):
        first = httpx.get(base + "/monitoring", timeout=10).json()["drift"]
        assert first["status"] == "warming_up" and first["window_size"] == WINDOW

        sent = send(base, same, "same")
        drift = wait_computed(base, WINDOW)
        assert drift["status"] == "ok", drift
        assert max(drift["feature_psi"].values()) < 0.1
        assert drift["prediction_psi"] < 0.1
        assert drift["thresholds"] == {"watch": 0.1, "act": 0.25}

        sent |= send(base, shifted, "shifted")
        drift = wait_computed(base, 2 * WINDOW)
        over = {f for f, v in drift["feature_psi"].items() if v > 0.2}
        assert over == set(SHIFTED), drift["most_drifted"]
        others = [v for f, v in drift["feature_psi"].items() if f not in SHIFTED]
        assert len(others) == len(FEATURES) - len(SHIFTED) and max(others) < 0.1
        assert drift["status"] == "act"
        assert {d["feature"] for d in drift["most_drifted"][:5]} == set(SHIFTED)
        metrics = psi_from_metrics(base)
        assert {f for f, v in metrics.items() if v > 0.2} == set(SHIFTED)
        assert len(metrics) == len(FEATURES)
        assert "model_prediction_psi{" in httpx.get(base + "/metrics").text

        proc.send_signal(signal.SIGTERM)  # a clean stop writes what is queued
        proc.wait(timeout=30)

    logged = pd.read_parquet(log_dir)
    assert len(logged) == 2 * WINDOW
    assert set(logged["request_id"]) == set(sent)
    assert set(logged["model"]) == {NAME} and logged["version"].nunique() == 1
    for rid, rows in sent.items():
        mine = logged[logged["request_id"] == rid]
        # pandas writes JSON numbers to 10 decimals: equal to that.
        np.testing.assert_allclose(mine[FEATURES].to_numpy(), rows.to_numpy(), rtol=0, atol=1e-8)
        assert mine["prediction"].between(0, 1).all()
    files = sorted(log_dir.rglob("*.parquet"))
    assert all(p.parent.name.startswith("date=") for p in files)  # hive-style day folders
    assert pq.read_schema(files[0]).names == [
        "request_id",
        "time",
        "model",
        "version",
        *FEATURES,
        "prediction",
    ]
    raw = b"".join(p.read_bytes() for p in log_dir.rglob("*.parquet"))
    assert b"admin-secret-token" not in raw


def test_sigkill_while_writing_leaves_only_readable_files(
    profiled_model: str, tmp_path: Path
) -> None:
    log_dir = tmp_path / "log"
    same, _ = fresh_rows()
    body = same.iloc[:200].to_json(orient="split")
    stop = threading.Event()
    # ~100 rows a file: the writer is writing nearly all the time when the kill lands.
    with serve(profiled_model, log_dir, INFERENCE_LOG_ROLL_BYTES="200000") as (base, proc):

        def load() -> None:
            with httpx.Client(base_url=base, timeout=10) as client:
                for _ in range(2_000):
                    if stop.is_set():
                        return
                    try:
                        client.post(
                            "/invocations",
                            content=body,
                            headers={"Content-Type": "application/json"},
                        )
                    except httpx.HTTPError:
                        return

        threads = [threading.Thread(target=load) for _ in range(3)]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 60
        while len(list(log_dir.rglob("*.parquet"))) < 20 and time.monotonic() < deadline:
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        stop.set()
        for t in threads:
            t.join(timeout=30)

    files = sorted(log_dir.rglob("*.parquet"))
    assert len(files) >= 20
    for path in files:
        table = pq.read_table(path)  # raises on a torn file
        assert table.num_rows > 0 and "request_id" in table.column_names
    leftovers = [p for p in log_dir.rglob("*") if p.is_file() and p not in files]
    assert all(p.name.startswith(".") for p in leftovers), leftovers  # readers skip these
    assert len(pd.read_parquet(log_dir)) == sum(pq.read_metadata(p).num_rows for p in files)


def test_a_model_without_a_profile_serves_and_monitoring_says_why(
    booster_model: LoggedModel,
) -> None:
    from app.config import Settings
    from app.main import create_app

    settings = Settings(model_uri=booster_model.model_uri, drift_every_seconds=0.05)
    with TestClient(create_app(settings)) as client:
        r = client.post(
            "/invocations",
            content=booster_model.frame.to_json(orient="split"),
            headers={"Content-Type": "application/json"},
        )
        assert r.status_code == 200
        np.testing.assert_allclose(r.json()["predictions"], booster_model.expected, atol=1e-9)
        # No profile, so nothing to compute: the answer does not wait for the drift task.
        body = client.get("/monitoring").json()
        assert body["drift"]["status"] == "no_profile"
        assert "reference_profile.json" in body["drift"]["reason"]
        assert body["inference_log"] == {"enabled": False, "reason": "INFERENCE_LOG_DIR is not set"}
        assert "model_feature_psi{" not in client.get("/metrics").text


def test_sampling_logs_about_the_fraction_asked(booster_model: LoggedModel, tmp_path: Path) -> None:
    from app.config import Settings
    from app.main import create_app

    rows = pd.concat([booster_model.frame] * 40, ignore_index=True)  # 2,000 rows
    settings = Settings(
        model_uri=booster_model.model_uri,
        inference_log_dir=str(tmp_path),
        inference_log_sample=0.25,
        compiled_predictor=False,
    )
    with TestClient(create_app(settings)) as client:
        for start in range(0, len(rows), 100):
            client.post(
                "/invocations",
                content=rows.iloc[start : start + 100].to_json(orient="split"),
                headers={"Content-Type": "application/json"},
            )
    logged = pd.read_parquet(tmp_path)
    # Binomial(2000, 0.25): 500 +- 19; 400..600 is over five standard deviations either way.
    assert 400 < len(logged) < 600


def test_a_full_queue_drops_and_counts_never_blocks(
    booster_model: LoggedModel, tmp_path: Path
) -> None:
    from app.config import Settings
    from app.main import create_app

    settings = Settings(
        model_uri=booster_model.model_uri,
        inference_log_dir=str(tmp_path),
        inference_log_queue_rows=60,
        compiled_predictor=False,
    )
    body = booster_model.frame.to_json(orient="split")  # 50 rows
    # The writer writes a file after 300 s or 32 MiB: within the test the queue only fills up.
    with TestClient(create_app(settings)) as client:
        for _ in range(3):
            r = client.post(
                "/invocations", content=body, headers={"Content-Type": "application/json"}
            )
            assert r.status_code == 200
        assert "inference_log_dropped_rows_total 100.0" in client.get("/metrics").text
        state = client.get("/monitoring").json()["inference_log"]
        assert state["rows_dropped"] == 100 and state["rows_queued"] == 50
    assert len(pd.read_parquet(tmp_path)) == 50  # the queued rows are written at shutdown
