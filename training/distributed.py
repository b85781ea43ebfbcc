"""Train the same model on a Dask cluster with ``lightgbm.dask``, log and register it the same way.

``python -m training.train --dask-scheduler tcp://host:8786`` (or ``local``: a new
``LocalCluster`` of worker processes) reads the data as a Dask DataFrame (``dd.read_csv`` on
``--data``, or the synthetic stand-in split into partitions), so the rows stay on the workers,
and then walks the same line as the single-machine path::

    folds by a hash of ID_code -> K x DaskLGBMClassifier(eval_set=valid fold) -> best round
    -> DaskLGBMClassifier on all rows -> tracking.publish (log, register, promote)

Only what the MLflow run and its figures need comes back to the client: the id, target and
out-of-fold probability of each row (three numbers a row, not 200). The workers get their rows and
the parameters from the client (or read ``--data`` from shared storage) and need this package,
never the MLflow store: only the client logs and registers.

Differences from the single-machine path, on purpose:

* folds come from a hash of ``ID_code`` (no shuffle of the whole table), not stratified;
* ``lightgbm.dask`` has no early stopping, so each fold trains ``num_boost_round`` rounds and
  its best round is read off the validation curve (the same round early stopping would keep
  unless patience ran out first);
* histograms are built per worker and merged (data-parallel LightGBM), so trees differ slightly.

On the same data the two paths agree on CV AUC within ``AUC_TOLERANCE`` (tested).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score

# The one place training reaches the Dask client helper.
from batch.cluster import dask_client
from training.config import DEFAULT_ROWS, Settings
from training.data import FEATURES, ID, TARGET, check_frame, synthesize
from training.modelling import CVResult, family_params
from training.profile import sample_for_profile
from training.progress import say
from training.tracking import (
    LoggedRun,
    TrainingData,
    mlflow_dataset,
    open_experiment,
    publish,
    synthetic_source,
)

AUC_TOLERANCE = 0.01
"""Largest CV AUC difference between this path and ``training.train`` on the same data."""


def read_frame(
    settings: Settings, partitions: int, workers_share_disk: bool = True
) -> tuple[Any, str, Any]:
    """The training rows as a Dask DataFrame, each partition checked like ``load_csv`` checks.

    The workers read ``--data`` themselves when they can reach it: a URL of shared storage
    (``s3://...``), or any path on a local cluster. A path on this machine with a cluster
    elsewhere (``workers_share_disk=False``) is read here and sent to them, as the synthetic
    stand-in always is.

    Returns:
        The frame, a description of its source, and the MLflow dataset source.
    """
    import dask.dataframe as dd

    if settings.data is None:
        n = settings.rows or DEFAULT_ROWS
        frame = dd.from_pandas(  # type: ignore[no-untyped-call]
            synthesize(n, settings.seed), npartitions=partitions, sort=False
        )
        source, dataset_source, _ = synthetic_source(n, settings.seed)
        return frame, source, dataset_source
    dtype: dict[str, Any] = {ID: str, TARGET: "int64", **dict.fromkeys(FEATURES, "f8")}
    is_url = "://" in str(settings.data) and not str(settings.data).startswith("file://")
    path = str(settings.data) if is_url else str(Path(settings.data).resolve())
    if not (is_url or workers_share_disk):
        local = check_frame(pd.read_csv(path, dtype=dtype), source=path)
        return dd.from_pandas(local, npartitions=partitions, sort=False), path, path  # type: ignore[no-untyped-call]
    frame = dd.read_csv(path, dtype=dtype)
    frame = frame.map_partitions(check_frame, source=path, meta=frame._meta)
    return frame, path, path


def _folds(frame: Any, folds: int, seed: int) -> Any:
    """A fold number per row from a hash of its id: stable, and no shuffle across workers."""

    def assign(part: pd.DataFrame) -> pd.Series:
        hashed = pd.util.hash_pandas_object(part[ID], index=False, hash_key=f"{seed:016d}")
        return (hashed % folds).astype("int64")

    return frame.map_partitions(assign, meta=(None, "int64"))


def _classifier(params: dict[str, Any], rounds: int, client: Any) -> Any:
    import lightgbm.dask as lgbd

    # The Dask estimator takes LightGBM's parameters as keyword arguments.
    return lgbd.DaskLGBMClassifier(client=client, n_estimators=rounds, **params)


def cross_validate_dask(
    client: Any, frame: Any, params: dict[str, Any], settings: Settings
) -> tuple[CVResult, pd.DataFrame]:
    """K-fold CV with ``lightgbm.dask``; the best round of each fold read off its valid curve.

    Returns:
        The CV result, and a frame of ``ID_code``, ``target``, ``oof`` for every row.
    """
    fold = _folds(frame, settings.folds, settings.seed)
    frame = frame.assign(_fold=fold).persist()
    result = CVResult(fold_auc=[], best_iterations=[], oof=np.empty(0))
    pieces = []
    start = time.monotonic()
    for k in range(settings.folds):
        train = frame[frame["_fold"] != k]
        valid = frame[frame["_fold"] == k]
        model = _classifier(params, settings.num_boost_round, client)
        model.fit(
            train[FEATURES],
            train[TARGET],
            eval_X=(valid[FEATURES],),
            eval_y=(valid[TARGET],),
            eval_names=["valid"],
            eval_metric="auc",
        )
        curve = [float(v) for v in model.evals_result_["valid"]["auc"]]
        best = int(np.argmax(curve)) + 1
        proba = model.to_local().predict_proba(valid[FEATURES].compute(), num_iteration=best)
        got = valid[[ID, TARGET]].compute().assign(oof=proba[:, 1])
        auc = float(roc_auc_score(got[TARGET], got["oof"]))
        pieces.append(got)
        result.fold_auc.append(auc)
        result.best_iterations.append(best)
        result.curves.append(curve)
        say(
            f"fold {k + 1}/{settings.folds} (dask): AUC {auc:.5f} at round {best}; "
            f"{time.monotonic() - start:.0f}s"
        )
    oof = pd.concat(pieces, ignore_index=True)
    result.oof = oof["oof"].to_numpy()
    result.seconds = time.monotonic() - start
    return result, oof


def run_distributed(settings: Settings, scheduler: str = "local", workers: int = 2) -> LoggedRun:
    """The distributed pipeline: Dask data, Dask CV and fit, then the single-machine logging.

    Args:
        settings: What to train and where to log it (the same settings as ``training.train``).
        scheduler: ``tcp://host:8786`` of a running Dask scheduler, or ``"local"``.
        workers: Worker processes of a local cluster.

    Returns:
        Where the run landed.
    """
    start = time.monotonic()
    experiment_id = open_experiment(settings.experiment)
    params = family_params(settings.model, settings.seed, settings.learning_rate)
    # lightgbm.dask gives each worker the threads its Dask worker has, and warns if told.
    params.pop("num_threads")
    os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "warning")
    with dask_client(scheduler, workers) as client:
        n_workers = max(len(client.scheduler_info()["workers"]), 1)
        say(f"dask: {client.scheduler.address} with {n_workers} worker(s)")
        frame, source, dataset_source = read_frame(
            settings, partitions=2 * n_workers, workers_share_disk=scheduler == "local"
        )
        cv, oof = cross_validate_dask(client, frame, params, settings)
        say(f"CV AUC {cv.mean_auc:.5f} ± {cv.std_auc:.5f}; final model: {cv.final_rounds} rounds")
        final = _classifier(params, cv.final_rounds, client)
        final.fit(frame[FEATURES], frame[TARGET])
        booster = final.booster_
        example = frame.head(1000)
        profile_rows = sample_for_profile(frame, FEATURES)
    # The run records the rows in the order their out-of-fold scores came back.
    y = oof[TARGET].to_numpy()
    # Digest and schema of a sample: the whole table never comes to this machine.
    dataset = mlflow_dataset(example, dataset_source, name="dask-train")
    data = TrainingData(frame=example, X=profile_rows, y=y, source=source, dataset=dataset)
    params = {**params, "dask_workers": n_workers, "dask_scheduler": scheduler}
    logged = publish(data, params, cv, booster, settings, experiment_id=experiment_id)
    say(f"done in {time.monotonic() - start:.0f}s")
    return logged
