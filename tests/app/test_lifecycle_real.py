"""The model lifecycle on a real MLflow store and real LightGBM models, in process.

Two registered versions with different trees under one alias: a load pins the alias once (its
trees and its facts are one version), and swapped-out models free their booster and compiled
forest.
"""

from __future__ import annotations

import asyncio
import gc
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pytest

from app.model_holder import ModelHolder
from scoring.loading import LoadOptions, load_model
from tests.conftest import LoggedModel


@pytest.fixture(scope="module")
def moving(booster_model: LoggedModel, classifier_model: LoggedModel) -> Iterator[dict[str, Any]]:
    """Registered model ``moving``: v1 the Booster, v2 the classifier, alias ``champion``."""
    client = mlflow.MlflowClient()
    name = "moving"
    client.create_registered_model(name)
    v1 = client.create_model_version(
        name, f"models:/{booster_model.model_id}", run_id=booster_model.run_id
    )
    v2 = client.create_model_version(
        name, f"models:/{classifier_model.model_id}", run_id=classifier_model.run_id
    )
    clf = mlflow.lightgbm.load_model(classifier_model.model_uri)
    rows = booster_model.frame
    yield {
        "name": name,
        "client": client,
        "v1": str(v1.version),
        "v2": str(v2.version),
        "rows": rows.to_numpy(),
        "expected": {
            str(v1.version): booster_model.expected,
            str(v2.version): clf.predict_proba(rows)[:, 1],
        },
    }


def test_an_alias_moved_during_the_download_names_the_version_whose_trees_serve(
    moving: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    name, client = moving["name"], moving["client"]
    client.set_registered_model_alias(name, "champion", moving["v1"])
    real = mlflow.artifacts.download_artifacts

    def download_then_move(*args: Any, **kwargs: Any) -> str:
        local = real(*args, **kwargs)
        client.set_registered_model_alias(name, "champion", moving["v2"])  # mid-load
        return str(local)

    monkeypatch.setattr(mlflow.artifacts, "download_artifacts", download_then_move)
    try:
        loaded = load_model(f"models:/{name}@champion", LoadOptions(compiled=False))
    finally:
        client.set_registered_model_alias(name, "champion", moving["v1"])
    got = loaded.predictor.predict(moving["rows"], 1)
    np.testing.assert_allclose(got, moving["expected"][moving["v1"]], rtol=0, atol=1e-9)
    # What polling compares must name v1 too, or this worker would never reload to v2.
    assert loaded.version == moving["v1"]
    assert loaded.fingerprint is not None and loaded.fingerprint.startswith(
        f"{name}/{moving['v1']}:"
    )


def test_swapped_out_models_free_their_booster_and_compiled_forest(
    moving: dict[str, Any], tmp_path: Path
) -> None:
    name, client = moving["name"], moving["client"]
    options = LoadOptions(compiled=True, cache_dir=str(tmp_path), background=False)
    holder = ModelHolder(f"models:/{name}@champion", loader=lambda uri: load_model(uri, options))
    client.set_registered_model_alias(name, "champion", moving["v1"])
    holder.load()
    predictor: Any = holder.require().predictor
    assert predictor.backend == "lleaves", predictor.backend_note
    booster, forest = weakref.ref(predictor.booster), weakref.ref(predictor._compiled)
    del predictor
    try:
        for version in (moving["v2"], moving["v1"]):
            client.set_registered_model_alias(name, "champion", version)
            assert asyncio.run(holder.reload()) is True
            served: Any = holder.require()
            assert served.version == version and served.predictor.backend == "lleaves"
            got = served.predictor.predict(moving["rows"], 2)
            np.testing.assert_allclose(got, moving["expected"][version], rtol=0, atol=1e-9)
            del served
    finally:
        client.set_registered_model_alias(name, "champion", moving["v1"])
    gc.collect()
    assert booster() is None, "the first model's booster is still referenced"
    assert forest() is None, "the first model's compiled forest is still referenced"
