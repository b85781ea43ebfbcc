"""The model itself: LightGBM parameters, stratified K-fold CV, the final fit.

Small pure functions of arrays and parameter dicts: no MLflow, no files, no settings object, so
a notebook or a test calls each on its own::

    params = default_params(seed, learning_rate)         # the well-known Santander parameters
    cv = cross_validate(X, y, params, folds)              # stratified K-fold, early stopping on AUC
    booster = fit_final(X, y, params, cv.final_rounds)    # all rows, the rounds CV found

Model families (``--model``), all LightGBM boosters, so the service serves each natively:

* ``gbdt``: :func:`default_params`, small trees over random 5% feature samples;
* ``additive``: one feature per tree (``interaction_constraints``), i.e. a generalised additive
  model: the sum of one learned curve per feature. On data whose features act independently
  (Santander's do) this is the right shape, and it cannot fit spurious interactions;
* ``nb-trees``: the same additive trees fitted to a Gaussian naive Bayes teacher's probabilities
  (``cross_entropy`` on soft labels) instead of the 0/1 target. Naive Bayes is the
  maximum-likelihood model when each feature is Gaussian within a class and independent of the
  others (the stand-in's construction, and close to the real data); its 4 numbers per feature
  are far less noisy than 0/1 labels, and the trees carry its log-odds into a LightGBM model.
  The trees still choose their cuts from the data: where a feature is not Gaussian, they follow
  what the teacher says there, which is what the teacher's AUC allows.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import lightgbm as lgb
import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedKFold
from sklearn.naive_bayes import GaussianNB

from training.data import FEATURES
from training.progress import progress_callback, say


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


Teacher = Callable[[np.ndarray, np.ndarray], np.ndarray]
"""Labels to fit from a training fold's rows and 0/1 targets (e.g. a teacher's probabilities)."""


def naive_bayes_teacher(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """P(target = 1) of each row under a Gaussian naive Bayes fitted to these rows.

    Args:
        x: Training rows (rows x features).
        y: Their 0/1 targets.

    Returns:
        Soft labels in [0, 1], one per row.
    """
    model = GaussianNB().fit(x, y)
    return np.asarray(model.predict_proba(x)[:, 1], dtype=np.float64)


@dataclass(frozen=True)
class Family:
    """A model family: how its LightGBM parameters differ from the defaults, and what it fits.

    Attributes:
        name: The ``--model`` value.
        summary: One line for ``--help`` and the README.
        overrides: Parameters replacing those of :func:`default_params`.
        teacher: Labels to fit instead of the target (``None``: the target itself).
    """

    name: str
    summary: str
    overrides: dict[str, Any]
    teacher: Teacher | None = None


ONE_FEATURE_PER_TREE = [[i] for i in range(len(FEATURES))]

FAMILIES: dict[str, Family] = {
    family.name: family
    for family in (
        Family("gbdt", "gradient-boosted trees, 13 leaves on 5% feature samples", {}),
        Family(
            "additive",
            "one feature per tree (a boosted additive model), 4 leaves",
            {
                "interaction_constraints": ONE_FEATURE_PER_TREE,
                "num_leaves": 4,
                "bagging_fraction": 0.5,
                "bagging_freq": 1,
                "min_data_in_leaf": 200,
                "lambda_l2": 10.0,
            },
        ),
        Family(
            "nb-trees",
            "one feature per tree fitted to a Gaussian naive Bayes teacher",
            {
                "objective": "cross_entropy",
                "interaction_constraints": ONE_FEATURE_PER_TREE,
                # Soft labels carry no noise: larger trees and steps fit the teacher sooner.
                "num_leaves": 32,
                "feature_fraction": 0.2,
                "bagging_fraction": 1.0,
                "bagging_freq": 0,
                "min_data_in_leaf": 100,
            },
            teacher=naive_bayes_teacher,
        ),
    )
}
DEFAULT_FAMILY = "gbdt"


def family_params(
    family: str, seed: int = 0, learning_rate: float = 0.05, num_threads: int = 0
) -> dict[str, Any]:
    """The LightGBM parameters of model family ``family`` (see :data:`FAMILIES`).

    Args:
        family: ``gbdt``, ``additive`` or ``nb-trees``.
        seed: As :func:`default_params`.
        learning_rate: As :func:`default_params`.
        num_threads: As :func:`default_params`.

    Returns:
        A LightGBM parameter dict.

    Raises:
        KeyError: An unknown family.
    """
    return {**default_params(seed, learning_rate, num_threads), **FAMILIES[family].overrides}


def cross_validate(  # noqa: PLR0917  (the notebooks call it positionally)
    x: pd.DataFrame | np.ndarray,
    y: np.ndarray,
    params: dict[str, Any],
    folds: int = 5,
    num_boost_round: int = 20_000,
    early_stopping_rounds: int = 300,
    seed: int = 0,
    log_every: int = 500,
    *,
    teacher: Teacher | None = None,
    fold_callbacks: Callable[[int], list[Callable[[Any], None]]] | None = None,
    after_fold: Callable[[int, CVResult], None] | None = None,
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
        teacher: Fit its labels on each training fold instead of the target (the validation
            fold is always scored against the target).
        fold_callbacks: Extra LightGBM callbacks for fold ``k`` (1-based), e.g. a pruner's.
        after_fold: Called with ``k`` and the result so far after each fold (may raise to stop).

    Returns:
        Per-fold AUC and best iteration, out-of-fold predictions and learning curves.
    """
    matrix = as_matrix(x)
    y = np.asarray(y)
    oof = np.zeros(len(y), dtype=np.float64)
    result = CVResult(fold_auc=[], best_iterations=[], oof=oof)
    start = time.monotonic()
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    for k, (train_idx, valid_idx) in enumerate(splitter.split(matrix, y), start=1):
        labels = y[train_idx] if teacher is None else teacher(matrix[train_idx], y[train_idx])
        train_set = lgb.Dataset(
            matrix[train_idx],
            labels,
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
                *(fold_callbacks(k) if fold_callbacks else []),
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
        if after_fold is not None:
            after_fold(k, result)
    result.seconds = time.monotonic() - start
    return result


def fit_final(
    x: pd.DataFrame | np.ndarray,
    y: np.ndarray,
    params: dict[str, Any],
    num_boost_round: int,
    log_every: int = 500,
    *,
    teacher: Teacher | None = None,
) -> lgb.Booster:
    """Fit the model to be served on all rows, for the number of rounds CV found.

    Args:
        x: Features (rows x 200).
        y: Target (0/1).
        params: LightGBM parameters.
        num_boost_round: Rounds (usually :attr:`CVResult.final_rounds`).
        log_every: Progress every this many rounds (0: quiet).
        teacher: Fit its labels instead of the target (as in :func:`cross_validate`).

    Returns:
        The trained booster; ``predict`` gives P(target=1).
    """
    matrix, target = as_matrix(x), np.asarray(y)
    labels = target if teacher is None else teacher(matrix, target)
    train_set = lgb.Dataset(matrix, labels, feature_name=FEATURES, params=params)
    return lgb.train(
        params,
        train_set,
        num_boost_round=num_boost_round,
        callbacks=[progress_callback("final model", log_every)],
    )


def as_matrix(x: pd.DataFrame | np.ndarray) -> np.ndarray:
    """The 200 features as a C-contiguous float64 array, in ``FEATURES`` order for a frame."""
    if isinstance(x, pd.DataFrame):
        x = x[FEATURES].to_numpy(dtype=np.float64)
    return np.ascontiguousarray(x, dtype=np.float64)
