"""Train the Santander LightGBM model: check data, cross-validate, fit, log, register, promote.

A straight line of small public functions, each usable on its own (the notebooks import them)::

    data = load_or_synthesize(path, rows, seed)          # checked frame + its MLflow dataset
    params = default_params(seed, learning_rate)         # the well-known Santander parameters
    cv = cross_validate(data.X, data.y, params, folds)   # stratified K-fold, early stopping on AUC
    booster = fit_final(data.X, data.y, params, cv.final_rounds)
    logged = log_and_register(data, params, cv, booster, settings)   # one MLflow run
    promote(client, name, logged.version, cv.mean_auc, policy)       # move @champion or not

Command line: ``python -m training.train [--quick] [--data PATH] ...``. Progress goes to stderr;
the last line of stdout is the run id, so ``RUN=$(python -m training.train --quick | tail -n1)``
works.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import subprocess
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
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
from sklearn.model_selection import StratifiedKFold, train_test_split

from scoring.tracking import configure_tracking, ensure_experiment
from training.data import (
    FEATURES,
    ID,
    TARGET,
    DataError,
    features_and_target,
    load_csv,
    synthesize,
)
from training.plots import (
    importance_figure,
    pr_figure,
    roc_figure,
    score_distribution_figure,
)
from training.profile import log_reference_profile
from training.promote import CV_METRIC, POLICIES, Policy, promote

PROJECT_DIR = Path(__file__).resolve().parents[1]
DEFAULT_EXPERIMENT = "santander"
DEFAULT_MODEL_NAME = "santander"


@dataclass(frozen=True)
class Settings:
    """Everything that decides a training run (the command line, after presets are applied).

    Attributes:
        data: A Santander ``train.csv``; ``None`` synthesizes a stand-in.
        rows: Rows to synthesize, or to sample (stratified) from ``data``; ``None`` keeps all.
        seed: Seed for synthesis, fold split and LightGBM: same seed, same data, same model.
        folds: Number of stratified CV folds.
        num_boost_round: Upper bound on boosting rounds per fold (early stopping picks fewer).
        learning_rate: LightGBM learning rate.
        early_stopping_rounds: Stop a fold after this many rounds without a better valid AUC.
        log_every: Print progress every this many rounds.
        num_threads: LightGBM threads (0: OpenMP default, all cores).
        experiment: MLflow experiment name.
        register_as: Registered model name; empty string: log the model but do not register it.
        promote: Promotion policy for alias ``champion``.
        preset: ``"quick"`` or ``"default"``, recorded as a tag.
        dask_scheduler: ``tcp://host:8786`` or ``"local"``: train with ``lightgbm.dask`` there
            (``training.distributed``); ``None``: on this machine.
    """

    data: Path | None = None
    rows: int | None = 200_000
    seed: int = 0
    folds: int = 5
    num_boost_round: int = 20_000
    learning_rate: float = 0.05
    early_stopping_rounds: int = 300
    log_every: int = 500
    num_threads: int = 0
    experiment: str = DEFAULT_EXPERIMENT
    register_as: str = DEFAULT_MODEL_NAME
    promote: Policy = "if-better"
    preset: str = "default"
    dask_scheduler: str | None = None


DEFAULT = Settings()
# Small enough to finish in seconds (demos, tests, `make run`), still clearly better than chance.
QUICK = replace(
    DEFAULT,
    rows=20_000,
    folds=3,
    num_boost_round=300,
    learning_rate=0.1,
    early_stopping_rounds=50,
    log_every=100,
    num_threads=1,  # on 20,000 rows a second thread costs more in synchronisation than it saves
    preset="quick",
)


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


@dataclass
class CVResult:
    """What stratified K-fold cross-validation found.

    Attributes:
        fold_auc: Validation AUC of each fold at its best iteration.
        best_iterations: Best iteration (number of rounds) of each fold.
        oof: Out-of-fold predicted probabilities, one per training row.
        curves: Validation AUC after each round, per fold (for learning-curve plots).
        seconds: Wall time of the whole cross-validation.
    """

    fold_auc: list[float]
    best_iterations: list[int]
    oof: np.ndarray
    curves: list[list[float]] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def mean_auc(self) -> float:
        """Mean of the per-fold AUCs: the score that promotion compares."""
        return float(np.mean(self.fold_auc))

    @property
    def std_auc(self) -> float:
        """Standard deviation of the per-fold AUCs."""
        return float(np.std(self.fold_auc))

    @property
    def final_rounds(self) -> int:
        """Rounds for the final model: the mean best iteration over the folds."""
        return max(1, round(float(np.mean(self.best_iterations))))


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


def say(message: str) -> None:
    """Progress for people: stderr, so that stdout carries only the run id."""
    print(message, file=sys.stderr, flush=True)


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
    if path is None:
        n = rows or DEFAULT.rows or 200_000
        frame = synthesize(n, seed)
        source = f"synthetic (training.data.synthesize, rows={n}, seed={seed})"
        dataset_source: Any = CodeDatasetSource(
            tags={"generator": "training.data.synthesize", "rows": str(n), "seed": str(seed)}
        )
        name = f"santander-synthetic-{n}-seed{seed}"
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
    with warnings.catch_warnings():
        # A local path "can be interpreted in multiple ways", all of them the same local file.
        warnings.simplefilter("ignore", UserWarning)
        dataset = from_pandas(frame, source=dataset_source, targets=TARGET, name=name)
    # MLflow would infer the schema by testing every one of the 40 million cells for None in
    # Python (minutes for 200,000 rows); the columns are known, so state it. ``schema`` is a
    # cached property: filling its cache is the documented way to preset it.
    dataset.__dict__["schema"] = dataset_schema(frame)
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


def default_params(
    seed: int = 0, learning_rate: float = 0.05, num_threads: int = 0
) -> dict[str, Any]:
    """The well-known Santander LightGBM parameters, made reproducible.

    Small trees on a 5% feature sample each: the features are near-independent and each carries
    a little signal, so many shallow, decorrelated trees add them up best.

    Args:
        seed: Seeds bagging, feature sampling and everything else in LightGBM.
        learning_rate: Shrinkage per round.
        num_threads: Threads (0: all cores).

    Returns:
        A LightGBM parameter dict.
    """
    return {
        "objective": "binary",
        "metric": "auc",
        "boosting": "gbdt",
        "num_leaves": 13,
        "max_depth": -1,
        "learning_rate": learning_rate,
        "feature_fraction": 0.05,
        "bagging_fraction": 0.4,
        "bagging_freq": 5,
        "min_data_in_leaf": 80,
        "min_sum_hessian_in_leaf": 10.0,
        "seed": seed,
        # Same seed, same data -> same model, bit for bit. Column-wise histograms are also the
        # faster layout here: with 10 of 200 features per tree only those columns are built.
        "deterministic": True,
        "force_col_wise": True,
        "num_threads": num_threads,
        "verbosity": -1,
    }


def progress_callback(label: str, every: int) -> Callable[[Any], None]:
    """A LightGBM callback printing ``label``, the round and the validation AUC so far.

    Args:
        label: E.g. ``"fold 2/5"``.
        every: Print every this many rounds (0: never).

    Returns:
        The callback.
    """
    start = time.monotonic()
    best = {"auc": -math.inf, "iteration": 0}

    def _callback(env: Any) -> None:
        iteration = env.iteration + 1
        aucs = [r[2] for r in env.evaluation_result_list if r[1] == "auc"]
        if aucs and aucs[0] > best["auc"]:
            best["auc"], best["iteration"] = aucs[0], iteration
        if every and (iteration % every == 0 or iteration == env.end_iteration):
            elapsed = time.monotonic() - start
            score = (
                f"  auc {aucs[0]:.5f}  best {best['auc']:.5f} @ {best['iteration']}" if aucs else ""
            )
            say(f"  {label}  round {iteration:>6}{score}  ({elapsed:.0f}s)")

    # Before early stopping (order 30), which ends training at the last round by raising.
    _callback.order = 25  # type: ignore[attr-defined]
    return _callback


def cross_validate(  # noqa: PLR0917  (the notebooks call it positionally)
    x: pd.DataFrame | np.ndarray,
    y: np.ndarray,
    params: dict[str, Any],
    folds: int = 5,
    num_boost_round: int = 20_000,
    early_stopping_rounds: int = 300,
    seed: int = 0,
    log_every: int = 500,
) -> CVResult:
    """Stratified K-fold cross-validation with early stopping on validation AUC.

    Args:
        x: Features (rows x 200).
        y: Target (0/1).
        params: LightGBM parameters (see :func:`default_params`).
        folds: Number of folds.
        num_boost_round: Upper bound on rounds per fold.
        early_stopping_rounds: Patience, in rounds, on the validation AUC.
        seed: Seed of the fold split.
        log_every: Progress every this many rounds (0: quiet).

    Returns:
        Per-fold AUC and best iteration, out-of-fold predictions and learning curves.
    """
    matrix = _matrix(x)
    y = np.asarray(y)
    oof = np.zeros(len(y), dtype=np.float64)
    result = CVResult(fold_auc=[], best_iterations=[], oof=oof)
    start = time.monotonic()
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    for k, (train_idx, valid_idx) in enumerate(splitter.split(matrix, y), start=1):
        train_set = lgb.Dataset(
            matrix[train_idx],
            y[train_idx],
            feature_name=FEATURES,
            params=params,
            free_raw_data=True,
        )
        valid_set = lgb.Dataset(matrix[valid_idx], y[valid_idx], reference=train_set)
        history: dict[str, Any] = {}
        booster = lgb.train(
            params,
            train_set,
            num_boost_round=num_boost_round,
            valid_sets=[valid_set],
            valid_names=["valid"],
            callbacks=[
                lgb.early_stopping(early_stopping_rounds, first_metric_only=True, verbose=False),
                lgb.record_evaluation(history),
                progress_callback(f"fold {k}/{folds}", log_every),
            ],
        )
        best = booster.best_iteration or booster.current_iteration()
        oof[valid_idx] = booster.predict(matrix[valid_idx], num_iteration=best)
        auc = float(roc_auc_score(y[valid_idx], oof[valid_idx]))
        result.fold_auc.append(auc)
        result.best_iterations.append(int(best))
        result.curves.append([float(v) for v in history["valid"]["auc"]])
        say(
            f"fold {k}/{folds}: AUC {auc:.5f} at round {best}; "
            f"mean so far {np.mean(result.fold_auc):.5f} ({time.monotonic() - start:.0f}s)"
        )
    result.seconds = time.monotonic() - start
    return result


def fit_final(
    x: pd.DataFrame | np.ndarray,
    y: np.ndarray,
    params: dict[str, Any],
    num_boost_round: int,
    log_every: int = 500,
) -> lgb.Booster:
    """Fit the model to be served on all rows, for the number of rounds CV found.

    Args:
        x: Features (rows x 200).
        y: Target (0/1).
        params: LightGBM parameters.
        num_boost_round: Rounds (usually :attr:`CVResult.final_rounds`).
        log_every: Progress every this many rounds (0: quiet).

    Returns:
        The trained booster; ``predict`` gives P(target=1).
    """
    train_set = lgb.Dataset(_matrix(x), np.asarray(y), feature_name=FEATURES, params=params)
    return lgb.train(
        params,
        train_set,
        num_boost_round=num_boost_round,
        callbacks=[progress_callback("final model", log_every)],
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


def log_and_register(  # noqa: PLR0917  (the notebooks call it positionally)
    data: TrainingData,
    params: dict[str, Any],
    cv: CVResult,
    booster: lgb.Booster,
    settings: Settings,
    experiment_id: str | None = None,
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

    Returns:
        The run id, model URI and registered version.
    """
    if experiment_id is None:
        experiment_id = ensure_experiment(settings.experiment)
    client = mlflow.MlflowClient()
    tags = {"preset": settings.preset, "data.source": data.source}
    commit = git_commit()
    if commit:
        tags["mlflow.source.git.commit"] = commit
    with mlflow.start_run(experiment_id=experiment_id, tags=tags) as run:
        run_id = run.info.run_id
        mlflow.log_params(
            {
                **params,
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
        info = mlflow.lightgbm.log_model(
            booster,
            name="model",
            signature=model_signature(),
            input_example=data.X.head(2),
            registered_model_name=settings.register_as or None,
            pip_requirements=pip_requirements(),
        )
        log_reference_profile(info.model_id, data.X, cv.oof)
    registered = info.registered_model_version
    return LoggedRun(
        run_id=run_id,
        model_uri=f"runs:/{run_id}/model",
        model_id=str(info.model_id),
        name=settings.register_as or None,
        version=None if registered is None else str(registered),
    )


def parse_args(argv: Sequence[str] | None = None) -> Settings:
    """Turn the command line into :class:`Settings` (``--quick`` first, then explicit options)."""
    parser = argparse.ArgumentParser(
        prog="python -m training.train",
        description="Cross-validate and fit the Santander LightGBM model, log it to MLflow, "
        "register it and promote it to @champion if it beats the current one. Progress goes "
        "to stderr; the last line of stdout is the run id.",
    )
    parser.add_argument("--data", type=Path, help="Santander train.csv (default: synthesize)")
    parser.add_argument(
        "--rows",
        type=int,
        help="rows to synthesize (default 200000; --quick 20000), or to sample from --data",
    )
    parser.add_argument("--seed", type=int, help="seed for data, folds and LightGBM (default 0)")
    parser.add_argument("--folds", type=int, help="CV folds (default 5; --quick 3)")
    parser.add_argument(
        "--num-boost-round",
        type=int,
        help="max rounds per fold, early stopping picks (default 20000; --quick 300)",
    )
    parser.add_argument(
        "--learning-rate", type=float, help="learning rate (default 0.05; --quick 0.1)"
    )
    parser.add_argument(
        "--early-stopping-rounds", type=int, help="patience on valid AUC (default 300; --quick 50)"
    )
    parser.add_argument("--threads", type=int, help="LightGBM threads (default 0: all cores)")
    parser.add_argument("--experiment", help=f"MLflow experiment (default {DEFAULT_EXPERIMENT})")
    parser.add_argument(
        "--register-as",
        help=f"registered model name (default {DEFAULT_MODEL_NAME}; '' to skip registering)",
    )
    parser.add_argument(
        "--promote",
        choices=POLICIES,
        help="move @champion: if-better (default, compares mean CV AUC), always, never",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="small preset for demos and tests: 20000 rows, 3 folds, 300 rounds at 0.1",
    )
    parser.add_argument(
        "--log-every", type=int, help="progress every N rounds (default 500; --quick 100)"
    )
    parser.add_argument(
        "--dask-scheduler",
        help="train with lightgbm.dask on this Dask scheduler (tcp://host:8786), or 'local'",
    )
    args = parser.parse_args(argv)
    base = QUICK if args.quick else DEFAULT
    given = {
        "data": args.data,
        "rows": args.rows,
        "seed": args.seed,
        "folds": args.folds,
        "num_boost_round": args.num_boost_round,
        "learning_rate": args.learning_rate,
        "early_stopping_rounds": args.early_stopping_rounds,
        "num_threads": args.threads,
        "experiment": args.experiment,
        "register_as": args.register_as,
        "promote": args.promote,
        "log_every": args.log_every,
        "dask_scheduler": args.dask_scheduler,
    }
    settings = replace(base, **{k: v for k, v in given.items() if v is not None})
    if args.data is not None and args.rows is None:
        settings = replace(settings, rows=None)  # a file: all its rows unless told otherwise
    if settings.folds < 2:
        parser.error("--folds must be at least 2")
    if settings.rows is not None and settings.rows < 10 * settings.folds:
        parser.error("--rows is too small for the number of folds")
    return settings


def run(settings: Settings) -> LoggedRun:
    """The whole pipeline for ``settings``: data, CV, final fit, log, register, promote.

    Args:
        settings: What to train and where to log it.

    Returns:
        Where the run landed.
    """
    if settings.dask_scheduler:
        from training.distributed import run_distributed

        return run_distributed(settings, settings.dask_scheduler)
    start = time.monotonic()
    # Data first: a bad file fails in seconds, before anything is written to the store.
    data = load_or_synthesize(settings.data, settings.rows, settings.seed)
    uri = configure_tracking()
    experiment_id = ensure_experiment(settings.experiment)
    say(f"MLflow store: {uri} (experiment {settings.experiment!r})")
    say(
        f"data: {data.source}: {len(data.y):,} rows, {np.mean(data.y):.2%} positives, "
        f"digest {data.dataset.digest}"
    )
    params = default_params(settings.seed, settings.learning_rate, settings.num_threads)
    say(
        f"{settings.folds}-fold CV: up to {settings.num_boost_round} rounds at learning rate "
        f"{settings.learning_rate}, early stopping after {settings.early_stopping_rounds}"
    )
    cv = cross_validate(
        data.X,
        data.y,
        params,
        settings.folds,
        num_boost_round=settings.num_boost_round,
        early_stopping_rounds=settings.early_stopping_rounds,
        seed=settings.seed,
        log_every=settings.log_every,
    )
    say(
        f"CV AUC {cv.mean_auc:.5f} ± {cv.std_auc:.5f}; best rounds {cv.best_iterations}; "
        f"final model: {cv.final_rounds} rounds on all rows"
    )
    booster = fit_final(data.X, data.y, params, cv.final_rounds, settings.log_every)
    logged = log_and_register(data, params, cv, booster, settings, experiment_id=experiment_id)
    say(f"logged run {logged.run_id} ({logged.model_uri})")
    if logged.name and logged.version:
        promote(mlflow.MlflowClient(), logged.name, logged.version, cv.mean_auc, settings.promote)
    say(f"done in {time.monotonic() - start:.0f}s")
    return logged


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point: train, then print the run id as the last line of stdout."""
    settings = parse_args(argv)
    stdout = sys.stdout
    try:
        # Anything else that prints (MLflow, LightGBM's Python logger) goes to stderr.
        with contextlib.redirect_stdout(sys.stderr):
            logged = run(settings)
    except (FileNotFoundError, DataError) as exc:
        say(f"error: {exc}")
        return 2
    print(logged.run_id, file=stdout, flush=True)
    return 0


def _matrix(x: pd.DataFrame | np.ndarray) -> np.ndarray:
    if isinstance(x, pd.DataFrame):
        x = x[FEATURES].to_numpy(dtype=np.float64)
    return np.ascontiguousarray(x, dtype=np.float64)


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


if __name__ == "__main__":
    raise SystemExit(main())
