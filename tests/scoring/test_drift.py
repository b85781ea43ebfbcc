"""The reference profile and PSI arithmetic (``scoring.drift``), and where training logs it."""

from __future__ import annotations

import math
from pathlib import Path

import mlflow
import numpy as np
import pytest

from scoring.drift import (
    EPSILON,
    Profile,
    bin_counts,
    build_profile,
    column_psi,
    profile_column,
    psi,
    read_profile,
    status_of,
    window_psi,
)
from scoring.loading import LoadOptions, load_model


def test_deciles_split_training_rows_in_tenths_and_missing_is_its_own_bin() -> None:
    rng = np.random.default_rng(0)
    values = rng.normal(size=10_000)
    values[:500] = np.nan
    column = profile_column(values)
    assert len(column.edges) == 9 and len(column.shares) == 11
    np.testing.assert_allclose(column.shares[:-1], 0.095, atol=0.001)
    assert column.missing_rate == pytest.approx(0.05) == column.shares[-1]
    assert math.isclose(column.shares.sum(), 1.0)


def test_psi_is_zero_for_the_same_shares_and_grows_with_a_shift() -> None:
    rng = np.random.default_rng(1)
    column = profile_column(rng.normal(size=50_000))
    assert column_psi(column, rng.normal(size=20_000)) < 0.005
    assert 0.1 < column_psi(column, rng.normal(0.4, 1, size=20_000)) < 0.25
    assert column_psi(column, rng.normal(1.0, 1, size=20_000)) > 0.5
    # Values turning missing is drift too.
    values = rng.normal(size=20_000)
    values[:4_000] = np.nan
    assert column_psi(column, values) > 0.25


def test_empty_bins_are_floored_not_infinite() -> None:
    expected = np.array([0.5, 0.5, 0.0])
    value = psi(expected, np.array([0, 10, 0]))
    assert math.isfinite(value) and value == pytest.approx(
        (1 - 0.5) * math.log(1 / 0.5) + (EPSILON - 0.5) * math.log(EPSILON / 0.5)
    )
    assert math.isnan(psi(expected, np.array([0, 0, 0])))


def test_ties_merge_edges_and_values_on_an_edge_fall_below_it() -> None:
    column = profile_column(np.array([0.0] * 80 + [1.0] * 20))
    assert column.edges.tolist() == [0.0, 1.0]
    np.testing.assert_array_equal(
        bin_counts(np.array([0.0, 0.5, 1.0, 2.0, np.nan]), column.edges), [1, 2, 1, 1]
    )


def test_a_profile_survives_json_and_window_psi_follows_column_order(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    x = rng.normal(size=(5_000, 3))
    profile = build_profile(x, rng.random(5_000), ["a", "b", "c"], source="test")
    (tmp_path / "reference_profile.json").write_text(profile.to_json())
    back = read_profile(tmp_path)
    assert back is not None and back.features == ("a", "b", "c") and back.rows == 5_000
    np.testing.assert_array_equal(back.column("b").edges, profile.column("b").edges)
    window = rng.normal(size=(3_000, 3))
    window[:, 2] += 1.0  # "c" drifts
    # The served matrix has the columns in another order: c, a, b.
    served = window[:, [2, 0, 1]]
    features, prediction = window_psi(back, served, rng.random(3_000), columns=[1, 2, 0])
    assert features[2] > 0.5 and max(features[:2]) < 0.02 and prediction < 0.02
    assert read_profile(tmp_path / "absent") is None
    (tmp_path / "reference_profile.json").write_text('{"format": 99}')
    with pytest.raises(ValueError):
        read_profile(tmp_path)


def test_status_thresholds() -> None:
    assert [status_of(v) for v in (0.05, 0.1, 0.2, 0.25, 1.0)] == [
        "ok",
        "watch",
        "watch",
        "act",
        "act",
    ]


def test_training_logs_the_profile_inside_the_model_for_every_kind_of_uri(
    tracking_dir: Path,
) -> None:
    import lightgbm as lgb

    from tests.helpers import make_frame
    from training.profile import log_reference_profile

    x, y = make_frame(400, seed=5)
    booster = lgb.train({"objective": "binary", "verbose": -1}, lgb.Dataset(x, y), 5)
    with mlflow.start_run() as run:
        info = mlflow.lightgbm.log_model(
            booster, name="model", registered_model_name="profiled", input_example=x.head(2)
        )
        logged = log_reference_profile(info.model_id, x, booster.predict(x.to_numpy()))
    version = info.registered_model_version
    mlflow.MlflowClient().set_registered_model_alias("profiled", "live", str(version))
    for uri in (
        f"runs:/{run.info.run_id}/model",
        f"models:/profiled/{version}",
        "models:/profiled@live",
        f"models:/{info.model_id}",
    ):
        loaded = load_model(uri, LoadOptions(compiled=False))
        assert loaded.profile is not None, uri
        assert loaded.profile.features == logged.features and loaded.profile_note is None
    assert isinstance(logged, Profile) and logged.rows == 400
