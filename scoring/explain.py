"""Exact per-row explanations: what each feature added to a row's score, and its reason codes.

A LightGBM model's score of a row is a sum over its trees; TreeSHAP (LightGBM's own
``Booster.predict(..., pred_contrib=True)``) splits that sum exactly among the features, so for
every row::

    base_value + sum(contributions[row]) == raw score == logit(P(target = 1))

in log-odds for a binary objective. ``base_value`` is the model's expected raw score (the same for
every row). A feature's contribution is positive where its value pushed this row towards
``target = 1``; a missing value has a contribution too (LightGBM sends it down a learnt branch).

Reason codes are each row's ``k`` features with the largest ``|contribution|``, largest first (ties
in the model's feature order); a feature that contributed exactly nothing (no tree uses it on this
row's paths) is never a reason, so a row may have fewer than ``k``. Shared by ``POST /explain``
and ``python -m batch --explain K``; the HTTP and Dask doors only format what this returns.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from scoring.errors import ExplanationsUnavailable
from scoring.predictors import Predictor

Contributions = Callable[[np.ndarray, int], np.ndarray]


@dataclass(frozen=True)
class Explanation:
    """Predictions and their exact decomposition, one row per input row."""

    predictions: np.ndarray
    """P(target = 1) per row, exactly as ``/invocations`` answers."""
    base_value: float
    """The expected raw score (log-odds), where every row starts."""
    features: tuple[str, ...]
    """The model's features: the columns of ``contributions`` and of the input matrix."""
    contributions: np.ndarray
    """``(rows, features)`` log-odds: ``base_value + row.sum()`` is the row's logit."""


def contributions_of(predictor: Predictor) -> Contributions:
    """The predictor's ``contributions(x, threads)``, or ``ExplanationsUnavailable`` (422) naming
    what is served when it has none (a pyfunc model of another flavor)."""
    method = getattr(predictor, "contributions", None)
    if not callable(method):
        flavor = getattr(predictor, "flavor", type(predictor).__name__)
        raise ExplanationsUnavailable(
            f"the served model ({flavor} flavor) gives no per-feature contributions; "
            "explanations need a LightGBM model (a Booster or an LGBMClassifier). "
            "/invocations still scores it"
        )
    return method  # type: ignore[no-any-return]


def explain(
    predictor: Predictor, x: np.ndarray, threads: int, predict_threads: int | None = None
) -> Explanation:
    """Score ``x`` (columns in ``predictor.features`` order) and decompose every score, with
    ``threads`` for the contributions and ``predict_threads`` (default: the same) for the
    predictions (a few rows score fastest on one).

    Raises:
        ExplanationsUnavailable: the predictor cannot decompose its scores.
    """
    contributions = contributions_of(predictor)(x, threads)
    scoring_threads = threads if predict_threads is None else predict_threads
    predictions = np.asarray(predictor.predict(x, scoring_threads), dtype=np.float64)
    return Explanation(
        predictions=predictions,
        base_value=float(contributions[0, -1]) if len(contributions) else 0.0,
        features=tuple(predictor.features),
        contributions=np.ascontiguousarray(contributions[:, :-1]),
    )


def top_indices(contributions: np.ndarray, k: int) -> np.ndarray:
    """Per row, the columns of the ``k`` largest ``|contribution|``, largest first, ties in column
    order; ``-1`` pads a row with fewer than ``k`` non-zero contributions. Shape ``(rows, k)``."""
    k = max(0, min(k, contributions.shape[1]))
    magnitude = np.abs(contributions)
    order = np.argsort(-magnitude, axis=1, kind="stable")[:, :k]
    # Sorted by magnitude, so the zero contributions are a suffix of each row.
    order[np.take_along_axis(magnitude, order, axis=1) == 0] = -1
    return order


def reasons(explanation: Explanation, x: np.ndarray, k: int) -> list[list[dict[str, Any]]]:
    """Per row, up to ``k`` reasons ``{"feature", "value", "contribution"}``, largest
    ``|contribution|`` first; ``value`` is the row's input (None where it was missing)."""
    names = explanation.features
    contributions = explanation.contributions
    out: list[list[dict[str, Any]]] = []
    for row, columns in enumerate(top_indices(contributions, k).tolist()):
        values = x[row]
        weights = contributions[row]
        out.append(
            [
                {
                    "feature": names[j],
                    "value": None if np.isnan(values[j]) else float(values[j]),
                    "contribution": float(weights[j]),
                }
                for j in columns
                if j >= 0
            ]
        )
    return out


def reason_columns(
    explanation: Explanation, x: np.ndarray, k: int
) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """``reasons`` as columns, for tables: for reason 1..k, the feature names (object, None where
    a row has fewer reasons), the row's values and the contributions (NaN where absent)."""
    index = top_indices(explanation.contributions, k)
    present = index >= 0
    safe = np.where(present, index, 0)
    names = np.array(explanation.features, dtype=object)[safe]
    names[~present] = None
    values = np.where(present, np.take_along_axis(x, safe, axis=1), np.nan)
    weights = np.where(present, np.take_along_axis(explanation.contributions, safe, axis=1), np.nan)
    return [(names[:, i], values[:, i], weights[:, i]) for i in range(index.shape[1])]
