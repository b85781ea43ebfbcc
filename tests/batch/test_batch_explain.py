"""``python -m batch --explain K``: each probability with its K reason codes, the same as
``POST /explain?top=K`` gives for the same rows."""

from __future__ import annotations

from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from distributed import Client
from fastapi.testclient import TestClient
from mlflow.models import infer_signature

from app.config import Settings
from app.main import create_app
from batch.__main__ import main
from batch.job import BatchError, score_files
from tests.app.test_pyfunc_fallback import MeanOfTwo
from tests.batch.conftest import Scored
from tests.conftest import LoggedModel
from tests.helpers import make_frame

pytestmark = pytest.mark.timeout(120)
K = 3


def _explained_by_the_service(model_uri: str, frame: pd.DataFrame) -> dict[str, object]:
    settings = Settings(model_uri=model_uri, max_rows=5000)  # type: ignore[call-arg]
    with TestClient(create_app(settings)) as client:
        r = client.post(
            "/explain",
            content=frame.drop(columns="ID_code").to_csv(index=False),
            headers={"Content-Type": "text/csv"},
            params={"top": K},
        )
    assert r.status_code == 200, r.text[:300]
    return dict(r.json())


def _check(out: pd.DataFrame, frame: pd.DataFrame, service: dict[str, object]) -> None:
    expected_columns = ["ID_code", "probability"] + [
        f"reason_{i}_{what}"
        for i in range(1, K + 1)
        for what in ("feature", "value", "contribution")
    ]
    assert list(out.columns) == expected_columns
    assert sorted(out["ID_code"]) == sorted(frame["ID_code"])
    position = {ident: i for i, ident in enumerate(frame["ID_code"])}
    predictions = service["predictions"]
    reasons = service["reasons"]
    assert isinstance(predictions, list) and isinstance(reasons, list)
    for row in out.itertuples(index=False):
        i = position[row.ID_code]
        assert row.probability == pytest.approx(predictions[i], abs=1e-12)
        listed = reasons[i]
        for k in range(K):
            feature = getattr(row, f"reason_{k + 1}_feature")
            value = getattr(row, f"reason_{k + 1}_value")
            contribution = getattr(row, f"reason_{k + 1}_contribution")
            if k >= len(listed):
                assert feature is None and np.isnan(contribution)
                continue
            assert feature == listed[k]["feature"]
            assert contribution == pytest.approx(listed[k]["contribution"], abs=1e-9)
            if listed[k]["value"] is None:
                assert np.isnan(value)
            else:
                assert value == listed[k]["value"]


def test_explain_writes_the_services_reasons_beside_each_probability(
    dask_client: Client, booster_model: LoggedModel, scored_rows: Scored, tmp_path: Path
) -> None:
    frame = scored_rows.frame.iloc[:400].copy()
    frame.iloc[::7, 1 + 0] = np.nan  # var_0 drives the test model: its missing values matter
    folder = tmp_path / "in"
    folder.mkdir()
    pq.write_table(
        pa.Table.from_pandas(frame.iloc[:300], preserve_index=False),
        folder / "a.parquet",
        row_group_size=70,
    )
    frame.iloc[300:].to_csv(folder / "b.csv", index=False)
    summary = score_files(
        dask_client,
        booster_model.model_uri,
        [str(folder)],
        tmp_path / "out",
        rows_per_piece=100,
        explain=K,
    )
    assert summary.scored == len(frame)
    out = pd.concat(pd.read_parquet(p) for p in sorted((tmp_path / "out").glob("part-*.parquet")))
    _check(out, frame, _explained_by_the_service(booster_model.model_uri, frame))
    assert out["reason_1_feature"].notna().all()

    # Asking for reasons changes the output: the folder of a job without them is not reused.
    with pytest.raises(BatchError, match=r"differs in: explain\)"):
        score_files(
            dask_client,
            booster_model.model_uri,
            [str(folder)],
            tmp_path / "out",
            rows_per_piece=100,
        )


def test_command_line_flag(
    dask_client: Client, booster_model: LoggedModel, scored_rows: Scored, tmp_path: Path
) -> None:
    frame = scored_rows.frame.iloc[:120]
    source = tmp_path / "in.parquet"
    frame.to_parquet(source, index=False)
    code = main(
        [
            "--model-uri", booster_model.model_uri, "--input", str(source),
            "--output", str(tmp_path / "out"), "--scheduler", dask_client.scheduler.address,
            "--explain", str(K), "--no-progress",
        ]
    )  # fmt: skip
    assert code == 0
    out = pd.read_parquet(tmp_path / "out")
    _check(out, frame, _explained_by_the_service(booster_model.model_uri, frame))


def test_a_model_without_contributions_is_refused_before_scoring(
    dask_client: Client, tracking_dir: Path, tmp_path: Path
) -> None:
    frame, _ = make_frame(5, seed=42)
    with mlflow.start_run() as run:
        mlflow.pyfunc.log_model(
            name="model",
            python_model=MeanOfTwo(),
            signature=infer_signature(frame, MeanOfTwo().predict(None, frame)),
            pip_requirements=["mlflow"],
        )
    frame.insert(0, "ID_code", [f"r{i}" for i in range(len(frame))])
    frame.to_parquet(tmp_path / "in.parquet", index=False)
    with pytest.raises(BatchError, match="no per-feature contributions; --explain needs"):
        score_files(
            dask_client,
            f"runs:/{run.info.run_id}/model",
            [str(tmp_path / "in.parquet")],
            tmp_path / "out",
            explain=2,
            allow_untrusted_models=True,
        )
    assert not (tmp_path / "out").exists()
