"""Each model family trains on a small stand-in, registers, and is served as trained."""

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
from training.config import MODEL_FAMILIES, QUICK, parse_args
from training.modelling import FAMILIES, family_params
from training.promote import CV_METRIC
from training.train import run


def test_family_names_agree_and_reach_the_settings() -> None:
    assert tuple(FAMILIES) == MODEL_FAMILIES
    assert parse_args([]).model == "gbdt"
    assert parse_args(["--quick", "--model", "additive"]).model == "additive"
    with pytest.raises(SystemExit):
        parse_args(["--model", "nb-trees", "--dask-scheduler", "local"])
    assert family_params("gbdt") == family_params("gbdt", 0, 0.05, 0)
    assert "interaction_constraints" not in family_params("gbdt")
    assert family_params("nb-trees")["objective"] == "cross_entropy"


@pytest.mark.parametrize("family", MODEL_FAMILIES)
def test_family_trains_registers_and_is_served(fresh_store: Store, family: str) -> None:
    name = f"family-{family}"
    settings = replace(
        QUICK,
        rows=3_000,
        folds=2,
        num_boost_round=80,
        early_stopping_rounds=30,
        log_every=0,
        register_as=name,
        promote="always",
        model=family,
    )
    logged = run(settings)

    client = mlflow.MlflowClient()
    data = client.get_run(logged.run_id).data
    assert data.params["model_family"] == family and data.tags["model_family"] == family
    assert data.metrics[CV_METRIC] > 0.6  # learned something on 3,000 rows
    booster = mlflow.lightgbm.load_model(logged.model_uri)
    if family != "gbdt":
        # One feature per tree: the model is a sum of one curve per feature.
        for tree in booster.dump_model()["tree_info"]:
            assert len(_split_features(tree["tree_structure"])) <= 1

    rows, _ = make_frame(25, seed=7)
    service = ServiceSettings(model_uri=f"models:/{name}@champion")  # type: ignore[call-arg]
    with TestClient(create_app(service)) as api:
        card = api.get("/model").json()
        r = api.post("/invocations", json={"dataframe_split": rows.to_dict(orient="split")})
    assert r.status_code == 200, r.text
    assert card["run_id"] == logged.run_id and card["flavor"] == "lightgbm"
    expected = booster.predict(rows)
    assert np.all((expected > 0) & (expected < 1))  # probabilities, also for cross_entropy
    np.testing.assert_allclose(r.json()["predictions"], expected, atol=1e-9)


def _split_features(node: dict[str, object]) -> set[object]:
    if "split_feature" not in node:
        return set()
    found = {node["split_feature"]}
    for side in ("left_child", "right_child"):
        found |= _split_features(node[side])  # type: ignore[arg-type]
    return found
