"""Batch scoring and distributed training on a real cluster: ``dask scheduler`` and two
``dask worker`` processes started on their own, as on other machines: from other folders, with
HOME elsewhere and no MLflow settings at all. The client alone talks to the MLflow store; the
workers get the model (and the training rows) through Dask and never create a store."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import httpx
import mlflow
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from distributed import Client
from fastapi.testclient import TestClient
from mlflow.models import infer_signature
from sklearn.linear_model import LogisticRegression

from app.config import Settings as ServiceSettings
from app.main import create_app
from batch.cluster import SpawnedCluster, spawn_cluster
from batch.job import WorkerFailed, execute, prepare, score_files
from tests.conftest import LoggedModel
from tests.helpers import PROJECT_DIR, make_frame
from training.data import synthesize, write_csv
from training.promote import CV_METRIC
from training.train import QUICK, run

pytestmark = pytest.mark.timeout(300)

STORE_FILES = ("mlflow.db", "mlruns", "mlartifacts")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SpawnedCluster]:
    """Scheduler (with its dashboard) and two one-thread workers, each in a folder of its own."""
    root = tmp_path_factory.mktemp("cluster")
    home = root / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env.update(HOME=str(home), DASK_LOGGING__DISTRIBUTED="warning", OMP_NUM_THREADS="1")
    project_store = PROJECT_DIR / "mlflow.db"
    before = project_store.stat().st_mtime_ns if project_store.exists() else None
    with spawn_cluster(root, workers=2, env=env, dashboard=True, timeout=180) as spawned:
        yield spawned
    # No store anywhere the workers live, and the project's own store left as it was.
    found = [str(p) for name in STORE_FILES for p in root.rglob(name)]
    assert not found, f"a worker created an MLflow store: {found}"
    after = project_store.stat().st_mtime_ns if project_store.exists() else None
    assert after == before, "the project's mlflow.db was created or changed"


@pytest.fixture(scope="module")
def client(cluster: SpawnedCluster) -> Iterator[Client]:
    with Client(cluster.address, timeout=60) as c:  # type: ignore[no-untyped-call]
        yield c


def _rows(n: int, seed: int, missing: bool = True) -> pd.DataFrame:
    x, _ = make_frame(n, seed=seed)
    if missing:
        x.iloc[::53, 7] = np.nan
    ids = pd.DataFrame({"ID_code": [f"row_{seed}_{i}" for i in range(n)]})
    return pd.concat([ids, x], axis=1)


def _write_inputs(frame: pd.DataFrame, folder: Path) -> None:
    """Two Parquet files of several row groups and one CSV file."""
    folder.mkdir(parents=True)
    a, b, c = np.array_split(np.arange(len(frame)), 3)
    for k, rows in enumerate((a, b)):
        table = pa.Table.from_pandas(frame.iloc[rows], preserve_index=False)
        pq.write_table(table, folder / f"day{k}.parquet", row_group_size=60)
    frame.iloc[c].to_csv(folder / "late.csv", index=False)


def _own_predictions(model_uri: str, frame: pd.DataFrame) -> dict[str, float]:
    booster = mlflow.lightgbm.load_model(model_uri)
    native = getattr(booster, "booster_", booster)
    x = frame.drop(columns=["ID_code"]).to_numpy()
    return dict(zip(frame["ID_code"], native.predict(x), strict=True))


def _read(folder: Path) -> pd.DataFrame:
    return pd.concat(pd.read_parquet(p) for p in sorted(folder.glob("part-*.parquet")))


def test_command_line_scores_every_row_like_the_model(
    cluster: SpawnedCluster, booster_model: LoggedModel, tmp_path: Path
) -> None:
    frame = _rows(900, seed=21)
    _write_inputs(frame, tmp_path / "in")
    expected = _own_predictions(booster_model.model_uri, frame)
    out = tmp_path / "out"
    command = [
        sys.executable, "-m", "batch", "--model-uri", "models:/santander@champion",
        "--input", (tmp_path / "in").as_uri() + "/*.parquet",
        "--input", str(tmp_path / "in" / "late.csv"),
        "--output", out.as_uri(), "--scheduler", cluster.address,
        "--rows-per-piece", "120", "--csv-block-mb", "1",
    ]  # fmt: skip
    # The client: this session's environment, MLFLOW_TRACKING_URI on the temporary store.
    assert os.environ["MLFLOW_TRACKING_URI"].startswith("sqlite:///")
    done = subprocess.run(
        command, cwd=tmp_path, capture_output=True, text=True, timeout=240, check=False
    )
    assert done.returncode == 0, done.stderr[-3000:] + cluster.log_tail()
    assert f"scored {len(frame)} of {len(frame)} rows from 3 file(s)" in done.stdout
    assert f"with models:/santander/{booster_model.version}" in done.stdout  # pinned
    assert "100% Completed" in done.stdout  # Dask's progress bar
    assert f"dashboard: {cluster.dashboard}" in done.stderr
    assert httpx.get(str(cluster.dashboard), timeout=30).status_code == 200
    # lleaves is installed here, so the workers compiled the trees (checked against LightGBM).
    assert "scoring backend: lleaves on" in done.stdout, done.stdout
    assert "lightgbm on" not in done.stdout

    got = _read(out)
    assert got["ID_code"].is_unique and set(got["ID_code"]) == set(frame["ID_code"])
    want = got["ID_code"].map(expected).to_numpy()
    np.testing.assert_allclose(got["probability"].to_numpy(), want, rtol=0, atol=1e-9)
    success = json.loads((out / "_SUCCESS").read_text())
    assert set(success["backends"]) == {"lleaves"}
    assert all(w.startswith("tcp://127.0.0.1:") for w in success["backends"]["lleaves"])


def test_resume_after_an_interruption_without_duplicates(
    client: Client, booster_model: LoggedModel, tmp_path: Path
) -> None:
    frame = _rows(700, seed=22)
    _write_inputs(frame, tmp_path / "in")
    expected = _own_predictions(booster_model.model_uri, frame)
    args = (client, booster_model.model_uri, [str(tmp_path / "in")], tmp_path / "out")
    first = score_files(*args, rows_per_piece=60, csv_block_bytes=32 << 10, compiled=False)
    assert first.backends and set(first.backends) == {"lightgbm"}  # --no-compiled
    parts = sorted((tmp_path / "out").glob("part-*.parquet"))
    assert len(parts) == first.pieces > 6
    # Interrupted: some parts never written, one left half-written under a temporary name.
    for p in parts[1::3]:
        p.unlink()
    (tmp_path / "out" / f".{parts[1].name}.99.99.tmp").write_bytes(b"PAR1 cut short")
    (tmp_path / "out" / "_SUCCESS").unlink()

    second = score_files(*args, rows_per_piece=60, csv_block_bytes=32 << 10)
    assert second.resumed == len(parts) - len(parts[1::3])
    assert second.scored == sum(r.scored for r in first.results if r.index % 3 == 1)
    got = _read(tmp_path / "out")
    assert len(got) == len(frame) and got["ID_code"].is_unique
    want = got["ID_code"].map(expected).to_numpy()
    np.testing.assert_allclose(got["probability"].to_numpy(), want, rtol=0, atol=1e-9)
    assert not list((tmp_path / "out").glob(".*.tmp"))
    assert (tmp_path / "out" / "_SUCCESS").exists()


def test_a_worker_that_cannot_do_its_part_is_named(
    client: Client, booster_model: LoggedModel, tmp_path: Path
) -> None:
    frame = _rows(300, seed=23)
    _write_inputs(frame, tmp_path / "in")
    prepared = prepare(booster_model.model_uri, [str(tmp_path / "in")], tmp_path / "out")
    (tmp_path / "in" / "day1.parquet").unlink()  # gone from the storage the workers read
    with pytest.raises(WorkerFailed) as caught:
        execute(client, prepared)
    message = str(caught.value)
    assert "\n" not in message and "migration" not in message.lower()
    assert message.startswith("worker tcp://127.0.0.1:"), message
    assert "could not score piece " in message
    assert "day1.parquet, row groups 0 to " in message
    assert "FileNotFoundError" in message


def test_a_pyfunc_model_travels_as_its_files(
    client: Client, tracking_dir: Path, tmp_path: Path
) -> None:
    """A model of another flavor: its folder goes to the workers as a tar archive."""
    x, y = make_frame(400, seed=24)
    model = LogisticRegression(max_iter=200).fit(x, y)
    with mlflow.start_run():
        info = mlflow.sklearn.log_model(
            model,
            name="model",
            signature=infer_signature(x.head(5), model.predict(x.head(5))),
            pip_requirements=["scikit-learn"],
        )
    frame = _rows(250, seed=25, missing=False)  # LogisticRegression refuses NaN
    _write_inputs(frame, tmp_path / "in")
    summary = score_files(
        client,
        info.model_uri,
        [str(tmp_path / "in")],
        tmp_path / "out",
        allow_untrusted_models=True,
    )
    assert set(summary.backends) == {"mlflow.pyfunc"}
    got = _read(tmp_path / "out").set_index("ID_code").loc[frame["ID_code"]]
    own = mlflow.pyfunc.load_model(info.model_uri).predict(frame.drop(columns=["ID_code"]))
    np.testing.assert_allclose(got["probability"].to_numpy(), np.asarray(own), atol=1e-9)


@pytest.mark.timeout(600)  # lightgbm.dask on two one-thread workers of a shared machine
def test_distributed_training_logs_registers_and_serves(
    cluster: SpawnedCluster, tracking_dir: Path, tmp_path: Path
) -> None:
    # A CSV on the client's disk only: the client reads it and sends the rows to the workers.
    csv = write_csv(synthesize(4_000, seed=3), tmp_path / "client-only" / "train.csv")
    settings = replace(
        QUICK,
        data=csv,
        rows=None,
        num_boost_round=40,
        folds=2,
        log_every=0,
        promote="always",
        register_as="dask-cluster",
        dask_scheduler=cluster.address,
    )
    logged = run(settings)

    store = mlflow.MlflowClient()
    data = store.get_run(logged.run_id).data
    assert data.params["dask_scheduler"] == cluster.address
    assert data.params["rows"] == "4000"
    assert data.params["dask_workers"] == "2"
    assert data.metrics[CV_METRIC] > 0.6
    champion = store.get_model_version_by_alias("dask-cluster", "champion")
    assert champion.run_id == logged.run_id

    rows, _ = make_frame(30, seed=26)
    booster = mlflow.lightgbm.load_model(logged.model_uri)
    service = ServiceSettings(model_uri="models:/dask-cluster@champion")  # type: ignore[call-arg]
    with TestClient(create_app(service)) as api:
        r = api.post("/invocations", json={"dataframe_split": rows.to_dict(orient="split")})
        assert r.status_code == 200, r.text
        assert api.get("/model").json()["run_id"] == logged.run_id
    np.testing.assert_allclose(r.json()["predictions"], booster.predict(rows), atol=1e-9)
