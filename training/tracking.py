"""The MLflow side of training: datasets, the served signature, logging, registration.

Every MLflow call of training goes through here; so does the project's store configuration
(the one import of ``app.tracking`` in ``training``), so both backends (``training.local``,
``training.distributed``) and ``training.tune`` log, register and promote the same way::

    data = load_or_synthesize(path, rows, seed)          # checked frame + its MLflow dataset
    experiment_id = open_experiment(settings.experiment)  # the store in force, the experiment
    logged = publish(data, params, cv, booster, settings, experiment_id)  # log, register, promote
"""

from __future__ import annotations

import contextlib
import subprocess
import time
import warnings
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import lightgbm as lgb
import mlflow
import numpy as np
import pandas as pd
from mlflow.data.code_dataset_source import CodeDatasetSource
from mlflow.data.pandas_dataset import PandasDataset, from_pandas
from mlflow.entities import Metric
from mlflow.models import ModelSignature
from mlflow.types import ColSpec, DataType, Schema, TensorSpec
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import train_test_split

from scoring.tracking import configure_tracking, ensure_experiment
from training.config import DEFAULT_ROWS, PROJECT_DIR, Settings
from training.data import FEATURES, ID, TARGET, features_and_target, load_csv, synthesize
from training.explain import log_global_explanation
from training.modelling import CVResult
from training.plots import (
    importance_figure,
    pr_figure,
    roc_figure,
    score_distribution_figure,
)
from training.profile import log_reference_profile
from training.progress import say
from training.promote import CV_METRIC, promote

__all__ = [
    "LoggedRun",
    "TrainingData",
    "configure_tracking",
    "dataset_schema",
    "ensure_experiment",
    "git_commit",
    "load_or_synthesize",
    "log_and_register",
    "mlflow_dataset",
    "model_signature",
    "open_experiment",
    "pip_requirements",
    "publish",
    "synthetic_source",
]


@dataclass
class TrainingData:
    """A checked training frame, its feature matrix and target, and where it came from.

    Attributes:
        frame: ``ID_code``, ``target``, ``var_0``..``var_199``.
        X: The 200 feature columns (float64).
        y: The target (int 0/1).
        source: A file path, or a description of the synthetic draw.
        dataset: The MLflow dataset (source + digest) for ``mlflow.log_input``.
    """

    frame: pd.DataFrame
    X: pd.DataFrame
    y: np.ndarray
    source: str
    dataset: PandasDataset


@dataclass(frozen=True)
class LoggedRun:
    """Where a training run landed in MLflow.

    Attributes:
        run_id: The MLflow run id.
        model_uri: ``runs:/<run_id>/model``.
        model_id: The MLflow logged-model id (``m-...``).
        name: Registered model name, or ``None`` if not registered.
        version: Registered model version, or ``None`` if not registered.
    """

    run_id: str
    model_uri: str
    model_id: str
    name: str | None
    version: str | None


def synthetic_source(rows: int, seed: int) -> tuple[str, CodeDatasetSource, str]:
    """How a synthetic draw is described: in words, as an MLflow dataset source, and by name.

    Args:
        rows: Rows drawn.
        seed: The draw's seed.

    Returns:
        ``(description, source, dataset name)``.
    """
    description = f"synthetic (training.data.synthesize, rows={rows}, seed={seed})"
    source = CodeDatasetSource(
        tags={"generator": "training.data.synthesize", "rows": str(rows), "seed": str(seed)}
    )
    return description, source, f"santander-synthetic-{rows}-seed{seed}"


def mlflow_dataset(frame: pd.DataFrame, source: Any, name: str) -> PandasDataset:
    """The MLflow dataset of a checked training frame, with its schema stated, not inferred.

    Args:
        frame: A frame as :func:`training.data.check_frame` returns it.
        source: A path, or a dataset source such as :func:`synthetic_source` gives.
        name: The dataset's name in MLflow.

    Returns:
        The dataset, for ``mlflow.log_input``.
    """
    with warnings.catch_warnings():
        # A local path "can be interpreted in multiple ways", all of them the same local file.
        warnings.simplefilter("ignore", UserWarning)
        dataset = from_pandas(frame, source=source, targets=TARGET, name=name)
    # MLflow would infer the schema by testing every one of the 40 million cells for None in
    # Python (minutes for 200,000 rows); the columns are known, so state it. ``schema`` is a
    # cached property: filling its cache is the documented way to preset it.
    dataset.__dict__["schema"] = dataset_schema(frame)
    return dataset


def load_or_synthesize(
    path: str | Path | None, rows: int | None = None, seed: int = 0
) -> TrainingData:
    """Load and check a Santander ``train.csv``, or synthesize a stand-in.

    Args:
        path: The CSV file; ``None`` synthesizes (see :func:`training.data.synthesize`).
        rows: Rows to synthesize (default 200,000), or a stratified sample of the file's rows
            (default: all of them).
        seed: Seed for the synthesis or the sample.

    Returns:
        The data, with an MLflow dataset whose source is the file, or the generator and seed.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        training.data.DataError: The file is not in the Santander format.
    """
    dataset_source: Any
    if path is None:
        n = rows or DEFAULT_ROWS
        frame = synthesize(n, seed)
        source, dataset_source, name = synthetic_source(n, seed)
    else:
        frame = load_csv(path)
        source = str(Path(path).resolve())
        dataset_source = source
        name = Path(path).stem
        if rows is not None and rows < len(frame):
            frame, _ = train_test_split(
                frame, train_size=rows, stratify=frame[TARGET], random_state=seed
            )
            frame = frame.sort_index().reset_index(drop=True)
            name = f"{name}-sample{rows}-seed{seed}"
    dataset = mlflow_dataset(frame, dataset_source, name)
    x, y = features_and_target(frame)
    return TrainingData(frame=frame, X=x, y=y, source=source, dataset=dataset)


def dataset_schema(frame: pd.DataFrame) -> Schema:
    """The MLflow schema of a checked training frame, computed column-wise (vectorised).

    Args:
        frame: A frame as :func:`training.data.check_frame` returns it.

    Returns:
        ``ID_code`` string, ``target`` long, the features double; a column is required when it
        has no missing value.
    """
    types = {ID: DataType.string, TARGET: DataType.long}
    missing = frame.isna().any()
    return Schema(
        [
            ColSpec(types.get(str(c), DataType.double), str(c), required=not bool(missing[c]))
            for c in frame.columns
        ]
    )


def model_signature() -> ModelSignature:
    """The served contract: ``var_0``..``var_199`` as doubles in, a float64 probability out."""
    return ModelSignature(
        inputs=Schema([ColSpec(DataType.double, name) for name in FEATURES]),
        outputs=Schema([TensorSpec(np.dtype("float64"), (-1,))]),
    )


def pip_requirements() -> list[str]:
    """Pinned requirements of the logged model, from the installed versions.

    Explicit, because MLflow's inference of them loads the model in a subprocess (~15 s).
    """
    pins = []
    for package in ("lightgbm", "mlflow", "numpy", "pandas", "scikit-learn", "scipy"):
        with contextlib.suppress(PackageNotFoundError):
            pins.append(f"{package}=={version(package)}")
    return pins


def git_commit() -> str | None:
    """The project's current git commit, or ``None`` outside a git checkout (e.g. a container)."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=PROJECT_DIR,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def open_experiment(name: str) -> str:
    """Point MLflow at the store in force and return the id of experiment ``name`` (created).

    Args:
        name: The experiment.

    Returns:
        Its id.
    """
    uri = configure_tracking()
    experiment_id = ensure_experiment(name)
    say(f"MLflow store: {uri} (experiment {name!r})")
    return experiment_id


def log_and_register(  # noqa: PLR0917  (the notebooks call it positionally)
    data: TrainingData,
    params: dict[str, Any],
    cv: CVResult,
    booster: lgb.Booster,
    settings: Settings,
    experiment_id: str | None = None,
    tags: dict[str, str] | None = None,
) -> LoggedRun:
    """Log one training run to MLflow and register its model.

    Logs the parameters, the per-fold and mean CV AUC and best iterations, the learning curves,
    the dataset (source and digest) and git commit, four diagnostic figures, and the final
    booster (lightgbm flavor, with signature and input example), registered as
    ``settings.register_as`` unless that is empty.

    Args:
        data: The training data.
        params: The LightGBM parameters used.
        cv: The cross-validation result.
        booster: The final model.
        settings: The run's settings (recorded as parameters and tags).
        experiment_id: Experiment to log to (default: ``settings.experiment``, created if needed).
        tags: Extra run tags.

    Returns:
        The run id, model URI and registered version.
    """
    if experiment_id is None:
        experiment_id = ensure_experiment(settings.experiment)
    client = mlflow.MlflowClient()
    tags = {
        "preset": settings.preset,
        "data.source": data.source,
        "model_family": settings.model,
        **(tags or {}),
    }
    commit = git_commit()
    if commit:
        tags["mlflow.source.git.commit"] = commit
    with mlflow.start_run(experiment_id=experiment_id, tags=tags) as run:
        run_id = run.info.run_id
        mlflow.log_params(
            {
                **params,
                "model_family": settings.model,
                "num_boost_round": settings.num_boost_round,
                "early_stopping_rounds": settings.early_stopping_rounds,
                "folds": settings.folds,
                "cv_seed": settings.seed,
                "rows": len(data.y),
                "positive_rate": round(float(np.mean(data.y)), 5),
                "final_num_boost_round": cv.final_rounds,
            }
        )
        mlflow.log_input(data.dataset, context="training")
        metrics = {
            CV_METRIC: cv.mean_auc,
            "cv_auc_std": cv.std_auc,
            "oof_auc": float(roc_auc_score(data.y, cv.oof)),
            "best_iteration_mean": float(np.mean(cv.best_iterations)),
            "cv_seconds": cv.seconds,
        }
        for k, (auc, best) in enumerate(zip(cv.fold_auc, cv.best_iterations, strict=True), 1):
            metrics[f"fold{k}_auc"] = auc
            metrics[f"fold{k}_best_iteration"] = float(best)
        mlflow.log_metrics(metrics)
        _log_curves(client, run_id, cv.curves)
        for figure, path in (
            (roc_figure(data.y, cv.oof), "plots/roc.png"),
            (pr_figure(data.y, cv.oof), "plots/pr.png"),
            (importance_figure(booster, top=30), "plots/feature_importance.png"),
            (score_distribution_figure(data.y, cv.oof), "plots/score_distribution.png"),
        ):
            mlflow.log_figure(figure, path)
        log_global_explanation(booster, data.X)
        info = mlflow.lightgbm.log_model(
            booster,
            name="model",
            signature=model_signature(),
            input_example=data.X.head(2),
            registered_model_name=settings.register_as or None,
            pip_requirements=pip_requirements(),
        )
        # Beside the model (any URI of it finds it): the service's drift reference.
        log_reference_profile(info.model_id, data.X, cv.oof)
    registered = info.registered_model_version
    return LoggedRun(
        run_id=run_id,
        model_uri=f"runs:/{run_id}/model",
        model_id=str(info.model_id),
        name=settings.register_as or None,
        version=None if registered is None else str(registered),
    )


def publish(  # noqa: PLR0917
    data: TrainingData,
    params: dict[str, Any],
    cv: CVResult,
    booster: lgb.Booster,
    settings: Settings,
    experiment_id: str | None = None,
    tags: dict[str, str] | None = None,
) -> LoggedRun:
    """:func:`log_and_register`, then promote the new version under ``settings.promote``.

    The one ending of every training path (local, Dask, the tuner's ``--register``).

    Returns:
        Where the run landed.
    """
    logged = log_and_register(data, params, cv, booster, settings, experiment_id, tags)
    say(f"logged run {logged.run_id} ({logged.model_uri})")
    if logged.name and logged.version:
        promote(mlflow.MlflowClient(), logged.name, logged.version, cv.mean_auc, settings.promote)
    return logged


def _log_curves(client: mlflow.MlflowClient, run_id: str, curves: list[list[float]]) -> None:
    """Validation AUC per round as metric steps, thinned to ~200 points per fold."""
    now = int(time.time() * 1000)
    metrics = []
    for k, curve in enumerate(curves, 1):
        stride = max(1, len(curve) // 200)
        for i in range(stride - 1, len(curve), stride):
            metrics.append(Metric(f"fold{k}_valid_auc", curve[i], now, i + 1))
    for i in range(0, len(metrics), 1000):
        client.log_batch(run_id, metrics=metrics[i : i + 1000])
