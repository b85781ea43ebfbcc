"""Training logs a global explanation: mean |contribution| per feature, as a figure and a table."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import lightgbm as lgb
import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient

from tests.training.conftest import Store
from training.explain import FIGURE_PATH, TABLE_PATH, global_explanation, log_global_explanation
from training.train import (
    QUICK,
    TrainingData,
    cross_validate,
    default_params,
    fit_final,
    log_and_register,
)


@pytest.fixture(scope="module")
def booster(small_data: TrainingData) -> lgb.Booster:
    params = default_params(seed=0, learning_rate=0.1, num_threads=1)
    return fit_final(small_data.X, small_data.y, params, 40, log_every=0)


def test_mean_abs_contribution_per_feature(booster: lgb.Booster, small_data: TrainingData) -> None:
    x = small_data.X.copy()
    x.iloc[::9, 3] = np.nan
    shuffled = x[list(reversed(x.columns))]  # columns are matched by name, not position
    table = global_explanation(booster, shuffled, sample_rows=500, seed=1)
    assert len(table) == len(booster.feature_name()) and table["feature"].is_unique
    picked = np.sort(np.random.default_rng(1).choice(len(x), 500, replace=False))
    native = booster.predict(x.iloc[picked][booster.feature_name()].to_numpy(), pred_contrib=True)
    expected = dict(zip(booster.feature_name(), np.abs(native[:, :-1]).mean(axis=0), strict=True))
    np.testing.assert_allclose(
        table["mean_abs_contribution"], table["feature"].map(expected), rtol=0, atol=1e-12
    )
    assert table["mean_abs_contribution"].is_monotonic_decreasing
    assert list(table["rank"]) == list(range(1, len(table) + 1))
    gain = dict(
        zip(booster.feature_name(), booster.feature_importance(importance_type="gain"), strict=True)
    )
    np.testing.assert_allclose(table["gain"], table["feature"].map(gain))
    # The synthetic stand-in's informative features lead both rankings' tops.
    assert table["feature"].iloc[0] in set(table.nsmallest(10, "gain_rank")["feature"])


def test_logged_beside_the_other_artifacts(
    booster: lgb.Booster, small_data: TrainingData, fresh_store: Store
) -> None:
    with mlflow.start_run(experiment_id=fresh_store.experiment_id) as run:
        logged = log_global_explanation(booster, small_data.X, sample_rows=300)
    client = MlflowClient()
    names = {Path(a.path).name for a in client.list_artifacts(run.info.run_id, "explain")}
    assert names == {Path(FIGURE_PATH).name, Path(TABLE_PATH).name}
    stored = mlflow.artifacts.load_dict(f"runs:/{run.info.run_id}/{TABLE_PATH}")
    table = pd.DataFrame(stored["data"], columns=stored["columns"])
    assert list(table["feature"]) == list(logged["feature"])
    np.testing.assert_allclose(table["mean_abs_contribution"], logged["mean_abs_contribution"])


def test_a_training_run_logs_it(small_data: TrainingData, fresh_store: Store) -> None:
    params = default_params(seed=0, learning_rate=0.1, num_threads=1)
    cv = cross_validate(
        small_data.X, small_data.y, params, seed=0, folds=2, num_boost_round=30,
        early_stopping_rounds=10, log_every=0,
    )  # fmt: skip
    booster = fit_final(small_data.X, small_data.y, params, cv.final_rounds, log_every=0)
    settings = replace(QUICK, rows=3_000, register_as="")
    run = log_and_register(small_data, params, cv, booster, settings, fresh_store.experiment_id)
    client = MlflowClient()
    names = {a.path for a in client.list_artifacts(run.run_id, "explain")}
    assert names == {FIGURE_PATH, TABLE_PATH}
    assert "plots/feature_importance.png" in {
        a.path for a in client.list_artifacts(run.run_id, "plots")
    }
