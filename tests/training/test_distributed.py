"""Distributed training on a LocalCluster: same logging as the single-machine path, AUC within
the stated tolerance of it on the same data, and a registered model the service then serves."""

from __future__ import annotations

from dataclasses import replace

import mlflow
import numpy as np
import pytest
from fastapi.testclient import TestClient

from app.config import Settings as ServiceSettings
from app.main import create_app
from tests.helpers import make_frame
from tests.training.conftest import Store
from training.distributed import AUC_TOLERANCE
from training.promote import CV_METRIC
from training.train import QUICK, main, parse_args, run


@pytest.mark.timeout(400)  # two worker processes, each importing LightGBM, on a busy machine
def test_dask_training_agrees_registers_and_is_served(fresh_store: Store) -> None:
    settings = replace(
        QUICK, rows=20_000, num_boost_round=150, log_every=0, promote="always", folds=3
    )
    single = run(replace(settings, register_as="single"))
    assert parse_args(["--dask-scheduler", "local"]).dask_scheduler == "local"
    distributed = run(replace(settings, register_as="distributed", dask_scheduler="local"))

    client = mlflow.MlflowClient()
    one = client.get_run(single.run_id).data
    two = client.get_run(distributed.run_id).data
    # The same logging: every metric and parameter of the single-machine run is there too.
    assert set(one.metrics) <= set(two.metrics)
    # All parameters but num_threads, which lightgbm.dask takes from each Dask worker.
    assert set(one.params) - {"num_threads"} <= set(two.params)
    assert two.params["dask_scheduler"] == "local" and two.params["dask_workers"] == "2"
    artifacts = {a.path for a in client.list_artifacts(distributed.run_id, "plots")}
    assert "plots/roc.png" in artifacts
    gap = abs(one.metrics[CV_METRIC] - two.metrics[CV_METRIC])
    assert gap <= AUC_TOLERANCE, (one.metrics[CV_METRIC], two.metrics[CV_METRIC])
    assert two.metrics[CV_METRIC] > 0.6  # learned something, not merely agreed with chance

    champion = client.get_model_version_by_alias("distributed", "champion")
    assert champion.run_id == distributed.run_id
    rows, _ = make_frame(20, seed=5)
    booster = mlflow.lightgbm.load_model(distributed.model_uri)
    service = ServiceSettings(model_uri="models:/distributed@champion")  # type: ignore[call-arg]
    with TestClient(create_app(service)) as api:
        r = api.post("/invocations", json={"dataframe_split": rows.to_dict(orient="split")})
        assert r.status_code == 200, r.text
        assert api.get("/model").json()["run_id"] == distributed.run_id
        # The reference profile of the Dask frame (all 20,000 rows: under the sample size).
        assert api.get("/monitoring").json()["drift"]["reference"]["rows"] == 20_000
    np.testing.assert_allclose(r.json()["predictions"], booster.predict(rows), atol=1e-9)


def test_dask_scheduler_option_reaches_the_distributed_path(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    seen: list[str] = []

    def fake(settings: object, scheduler: str) -> object:
        seen.append(scheduler)
        raise SystemExit(0)

    monkeypatch.setattr("training.distributed.run_distributed", fake)
    with pytest.raises(SystemExit):
        main(["--quick", "--dask-scheduler", "tcp://127.0.0.1:8786"])
    assert seen == ["tcp://127.0.0.1:8786"]
