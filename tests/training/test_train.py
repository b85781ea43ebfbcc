"""training.train: options, parameters, reproducibility, and what one run logs to MLflow."""

from __future__ import annotations

import json
import subprocess
from dataclasses import replace
from pathlib import Path

import lightgbm as lgb
import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient
from mlflow.types import DataType

from tests.helpers import PROJECT_DIR
from tests.training.conftest import Store
from training.data import FEATURES, TARGET, synthesize, write_csv
from training.promote import CV_METRIC
from training.train import (
    DEFAULT,
    QUICK,
    CVResult,
    TrainingData,
    cross_validate,
    dataset_schema,
    default_params,
    fit_final,
    load_or_synthesize,
    log_and_register,
    main,
    parse_args,
)

# Small and fast: 2 folds x 40 rounds on 3,000 rows.
FAST = {"folds": 2, "num_boost_round": 40, "early_stopping_rounds": 20, "log_every": 0}


def _params(seed: int, threads: int = 1) -> dict[str, object]:
    return default_params(seed=seed, learning_rate=0.1, num_threads=threads)


def test_presets_and_explicit_options() -> None:
    quick = parse_args(["--quick"])
    assert quick == QUICK
    assert (quick.rows, quick.folds, quick.preset) == (20_000, 3, "quick")
    assert parse_args([]) == DEFAULT
    assert (DEFAULT.rows, DEFAULT.folds, DEFAULT.register_as, DEFAULT.promote) == (
        200_000,
        5,
        "santander",
        "if-better",
    )
    mixed = parse_args(["--quick", "--folds", "4", "--learning-rate", "0.2", "--promote", "never"])
    assert (mixed.folds, mixed.learning_rate, mixed.promote, mixed.rows) == (
        4,
        0.2,
        "never",
        20_000,
    )
    assert parse_args(["--data", "x.csv"]).rows is None  # a file: all its rows
    assert parse_args(["--data", "x.csv", "--rows", "500"]).rows == 500
    assert parse_args(["--register-as", ""]).register_as == ""


@pytest.mark.parametrize("argv", [["--folds", "1"], ["--rows", "5"], ["--promote", "maybe"]])
def test_bad_options_are_refused(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        parse_args(argv)
    assert exc.value.code == 2


def test_default_params_are_the_santander_ones() -> None:
    params = default_params()
    assert params["objective"] == "binary" and params["metric"] == "auc"
    assert params["num_leaves"] == 13
    assert params["feature_fraction"] == 0.05
    assert params["bagging_fraction"] == 0.4
    assert params["min_data_in_leaf"] == 80
    assert params["learning_rate"] <= 0.05
    assert params["deterministic"] is True
    assert DEFAULT.learning_rate <= 0.05


def test_same_seed_same_predictions(small_data: TrainingData) -> None:
    """Two threads, bagging and feature sampling: still identical, bit for bit."""

    def train(seed: int) -> tuple[CVResult, np.ndarray]:
        params = _params(seed, threads=2)
        cv = cross_validate(small_data.X, small_data.y, params, seed=seed, **FAST)
        booster = fit_final(small_data.X, small_data.y, params, cv.final_rounds, log_every=0)
        return cv, booster.predict(small_data.X.to_numpy())

    (cv_a, pred_a), (cv_b, pred_b), (_, pred_c) = train(7), train(7), train(8)
    np.testing.assert_array_equal(cv_a.oof, cv_b.oof)
    assert cv_a.best_iterations == cv_b.best_iterations
    np.testing.assert_array_equal(pred_a, pred_b)
    # ...and the seed matters (so the check above could fail).
    assert not np.array_equal(pred_a, pred_c)


def test_cross_validation_result(small_data: TrainingData) -> None:
    cv = cross_validate(small_data.X, small_data.y, _params(0), seed=0, **FAST)
    assert len(cv.fold_auc) == len(cv.best_iterations) == len(cv.curves) == 2
    assert all(1 <= b <= 40 for b in cv.best_iterations)
    assert cv.final_rounds == round(np.mean(cv.best_iterations))
    assert np.all((cv.oof > 0) & (cv.oof < 1))  # every row got an out-of-fold prediction
    assert 0.6 < cv.mean_auc < 0.95
    assert cv.fold_auc[0] == pytest.approx(max(cv.curves[0]), abs=1e-9)


def test_load_a_file_and_sample_it(tmp_path: Path) -> None:
    path = write_csv(synthesize(1_000, seed=4), tmp_path / "train.csv")
    full = load_or_synthesize(path, rows=None, seed=0)
    assert len(full.y) == 1_000 and full.source == str(path.resolve())
    sample = load_or_synthesize(path, rows=300, seed=0)
    assert len(sample.y) == 300
    assert abs(sample.y.mean() - full.y.mean()) < 0.01  # stratified
    assert sample.dataset.digest != full.dataset.digest
    assert load_or_synthesize(path, rows=300, seed=0).dataset.digest == sample.dataset.digest


def test_dataset_schema_matches_mlflow_inference(small_data: TrainingData) -> None:
    from mlflow.types.utils import _infer_schema

    frame = small_data.frame.head(50).copy()
    frame.loc[3, "var_5"] = np.nan
    assert dataset_schema(frame) == _infer_schema(frame)


def test_bad_data_fails_fast_with_the_column_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    frame = synthesize(100, seed=0).drop(columns="var_123")
    path = tmp_path / "train.csv"
    frame.to_csv(path, index=False)
    assert main(["--data", str(path)]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert "missing column 'var_123'" in err
    assert main(["--data", str(tmp_path / "absent.csv")]) == 2
    assert "no such file" in capsys.readouterr().err


def test_log_and_register(small_data: TrainingData, fresh_store: Store) -> None:
    params = _params(0)
    cv = cross_validate(small_data.X, small_data.y, params, seed=0, **FAST)
    booster = fit_final(small_data.X, small_data.y, params, cv.final_rounds, log_every=0)
    settings = replace(QUICK, rows=3_000, register_as="logged", **FAST)
    logged = log_and_register(small_data, params, cv, booster, settings, fresh_store.experiment_id)

    client = MlflowClient()
    run = client.get_run(logged.run_id)
    assert run.info.status == "FINISHED"
    # parameters
    assert run.data.params["num_leaves"] == "13"
    assert run.data.params["folds"] == "2"
    assert run.data.params["final_num_boost_round"] == str(cv.final_rounds)
    # per-fold and mean CV AUC, best iterations
    metrics = run.data.metrics
    assert metrics[CV_METRIC] == pytest.approx(cv.mean_auc)
    assert metrics["fold1_auc"] == pytest.approx(cv.fold_auc[0])
    assert metrics["fold2_best_iteration"] == cv.best_iterations[1]
    assert metrics["best_iteration_mean"] == pytest.approx(np.mean(cv.best_iterations))
    curve = client.get_metric_history(logged.run_id, "fold1_valid_auc")
    assert len(curve) == len(cv.curves[0]) and curve[-1].value == pytest.approx(cv.curves[0][-1])
    # dataset with digest, git commit
    (dataset_input,) = run.inputs.dataset_inputs
    assert dataset_input.dataset.digest == small_data.dataset.digest
    assert json.loads(dataset_input.dataset.source)["tags"]["seed"] == "0"
    assert {t.key: t.value for t in dataset_input.tags}["mlflow.data.context"] == "training"
    head = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=PROJECT_DIR, capture_output=True, text=True, check=False
    )
    if head.returncode == 0:
        assert run.data.tags["mlflow.source.git.commit"] == head.stdout.strip()
    # plots
    plots = {Path(a.path).name for a in client.list_artifacts(logged.run_id, "plots")}
    assert plots == {"roc.png", "pr.png", "feature_importance.png", "score_distribution.png"}
    # the model: signature, input example, registered, same predictions as the booster
    info = mlflow.models.get_model_info(logged.model_uri)
    assert info.signature.inputs.input_names() == FEATURES
    assert set(info.signature.inputs.input_types()) == {DataType.double}
    (output,) = info.signature.outputs.inputs
    assert (output.type, output.shape) == (np.dtype("float64"), (-1,))
    assert info.saved_input_example_info is not None
    assert logged.version == "1"
    assert client.get_model_version("logged", "1").run_id == logged.run_id
    rows = small_data.X.head(20)
    served = mlflow.pyfunc.load_model(f"models:/logged/{logged.version}").predict(rows)
    np.testing.assert_allclose(np.asarray(served), booster.predict(rows.to_numpy()), rtol=1e-12)
    native = mlflow.lightgbm.load_model(logged.model_uri)
    assert isinstance(native, lgb.Booster)


def test_unregistered_run(small_data: TrainingData, fresh_store: Store) -> None:
    params = _params(0)
    cv = cross_validate(small_data.X, small_data.y, params, seed=0, **FAST)
    booster = fit_final(small_data.X, small_data.y, params, cv.final_rounds, log_every=0)
    settings = replace(QUICK, register_as="")
    logged = log_and_register(small_data, params, cv, booster, settings, fresh_store.experiment_id)
    assert logged.name is None and logged.version is None
    frame = pd.DataFrame(small_data.X.head(3))
    assert len(mlflow.pyfunc.load_model(logged.model_uri).predict(frame)) == 3
    assert TARGET not in frame
