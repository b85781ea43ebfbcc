"""Fixture chain: a temporary MLflow store -> small real LightGBM models logged to it.

The session store is a real SQLite MLflow store in a temporary folder; ``MLFLOW_TRACKING_URI``
points at it for the whole session (subprocesses inherit it), so nothing touches the project's
own ``mlflow.db``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import lightgbm as lgb
import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow.models import infer_signature

from tests.helpers import make_frame


@dataclass(frozen=True)
class LoggedModel:
    """A model logged to the session store, with rows to score and the native predictions."""

    run_id: str
    model_uri: str
    model_id: str
    registered_name: str
    version: str
    frame: pd.DataFrame
    expected: np.ndarray


@pytest.fixture(scope="session")
def tracking_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    root = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    old = os.environ.get("MLFLOW_TRACKING_URI")
    os.environ["MLFLOW_TRACKING_URI"] = uri
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    experiment = mlflow.MlflowClient().create_experiment(
        "tests", artifact_location=(root / "artifacts").as_uri()
    )
    mlflow.set_experiment(experiment_id=experiment)
    yield root
    if old is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = old


def _log(model: object, name: str, frame: pd.DataFrame, expected: np.ndarray) -> LoggedModel:
    # Explicit requirements skip MLflow's slow requirement inference (a model-loading subprocess).
    reqs = [f"lightgbm=={lgb.__version__}", f"numpy=={np.__version__}", f"pandas=={pd.__version__}"]
    with mlflow.start_run() as run:
        mlflow.log_params({"kind": name, "num_boost_round": 30})
        mlflow.log_metric("cv_auc", 0.75)
        info = mlflow.lightgbm.log_model(
            model,
            name="model",
            signature=infer_signature(frame.head(5), expected[:5]),
            input_example=frame.head(2),
            registered_model_name=name,
            pip_requirements=reqs,
        )
    version = str(info.registered_model_version)
    mlflow.MlflowClient().set_registered_model_alias(name, "champion", version)
    return LoggedModel(
        run_id=run.info.run_id,
        model_uri=f"runs:/{run.info.run_id}/model",
        model_id=str(info.model_id),
        registered_name=name,
        version=version,
        frame=frame,
        expected=expected,
    )


@pytest.fixture(scope="session")
def booster_model(tracking_dir: Path) -> LoggedModel:
    """A native ``lightgbm.Booster`` (binary objective) logged and registered as ``santander``."""
    x, y = make_frame(600, seed=1)
    booster = lgb.train(
        {"objective": "binary", "num_leaves": 7, "verbose": -1, "seed": 1},
        lgb.Dataset(x, y),
        num_boost_round=30,
    )
    rows, _ = make_frame(50, seed=2)
    rows.iloc[3, 5] = np.nan  # a missing value must be served like LightGBM handles it
    return _log(booster, "santander", rows, booster.predict(rows.to_numpy()))


@pytest.fixture(scope="session")
def classifier_model(tracking_dir: Path) -> LoggedModel:
    """An ``LGBMClassifier`` logged and registered as ``santander-sklearn``."""
    x, y = make_frame(600, seed=3)
    clf = lgb.LGBMClassifier(n_estimators=25, num_leaves=7, verbose=-1, random_state=3)
    clf.fit(x, y)
    rows, _ = make_frame(40, seed=4)
    return _log(clf, "santander-sklearn", rows, clf.predict_proba(rows)[:, 1])


# A model with a reference profile, and rows to drift it (tests/app/test_monitoring.py, 06).
DRIFT_TRAIN_ROWS = 6_000
DRIFT_WINDOW = 3_000
SHIFTED = ("var_3", "var_17", "var_50", "var_111", "var_199")
DRIFT_MODEL = "drift-model"


@pytest.fixture(scope="session")
def profiled_model(tracking_dir: Path) -> str:
    """A model trained and logged by the training pipeline: ``models:/drift-model/<version>``."""
    from training.train import (
        QUICK,
        cross_validate,
        default_params,
        fit_final,
        load_or_synthesize,
        log_and_register,
    )

    data = load_or_synthesize(None, DRIFT_TRAIN_ROWS, seed=0)
    params = default_params(seed=0, learning_rate=0.1, num_threads=1)
    cv = cross_validate(
        data.X, data.y, params, 2, num_boost_round=60, early_stopping_rounds=15, log_every=0
    )
    booster = fit_final(data.X, data.y, params, cv.final_rounds, log_every=0)
    experiment = mlflow.get_experiment_by_name("tests")
    assert experiment is not None
    settings = replace(QUICK, register_as=DRIFT_MODEL, promote="never")
    logged = log_and_register(
        data, params, cv, booster, settings, experiment_id=experiment.experiment_id
    )
    return f"models:/{DRIFT_MODEL}/{logged.version}"


def fresh_rows() -> tuple[pd.DataFrame, pd.DataFrame]:
    """Rows of the training distribution not trained on, and the same kind of rows shifted."""
    from training.data import FEATURES, synthesize

    frame = synthesize(DRIFT_TRAIN_ROWS + 2 * DRIFT_WINDOW, seed=0)[FEATURES]
    train_std = synthesize(DRIFT_TRAIN_ROWS, seed=0)[FEATURES].std()
    same = frame.iloc[DRIFT_TRAIN_ROWS : DRIFT_TRAIN_ROWS + DRIFT_WINDOW].reset_index(drop=True)
    shifted = frame.iloc[DRIFT_TRAIN_ROWS + DRIFT_WINDOW :].reset_index(drop=True)
    for feature in SHIFTED:
        shifted[feature] = shifted[feature] + train_std[feature]
    return same, shifted
