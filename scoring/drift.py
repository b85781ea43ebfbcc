"""The reference profile of a model's training data, and the population stability index (PSI).

Numpy only: training builds a profile (``build_profile``) and logs it in the model's artifact
folder as ``reference_profile.json``; the service reads it back (``read_profile``) and compares a
window of scored rows with it (``window_psi``).

Binning: per feature, the interior decile edges of the training values (ties merged, so a
feature with few distinct values gets fewer bins), bins ``(-inf, e1], (e1, e2], ..., (ek, inf)``,
plus one bin for missing values, so a change in the missing-value rate is drift too. The
predictions are binned the same way. PSI of a column::

    PSI = sum over bins of (actual - expected) * ln(actual / expected)

with shares floored at ``EPSILON`` (an empty bin on one side would be infinite). Usual reading:
under 0.1 stable, 0.1 to 0.25 watch, 0.25 and over act. Under no drift a window of ``n`` rows has
an expected PSI of about ``(bins - 1) / n`` from sampling alone (0.001 for 10,000 rows).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

PROFILE_FILE = "reference_profile.json"
"""Its name in the model's artifact folder."""
FORMAT = 1
EPSILON = 1e-4
WATCH = 0.1
ACT = 0.25
DECILES = tuple(i / 10 for i in range(1, 10))


@dataclass(frozen=True)
class ColumnProfile:
    """One column's bins on the training data.

    Attributes:
        edges: Interior bin edges, ascending (k edges make k + 1 value bins).
        shares: Training share of each value bin, then of the missing bin (k + 2 values).
        missing_rate: Share of missing values in training (the last of ``shares``).
        mean: Mean of the present values (NaN if none).
        std: Standard deviation of the present values (NaN if none).
    """

    edges: np.ndarray
    shares: np.ndarray
    missing_rate: float
    mean: float
    std: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "edges": self.edges.tolist(),
            "shares": self.shares.tolist(),
            "missing_rate": self.missing_rate,
            "mean": _finite_or_none(self.mean),
            "std": _finite_or_none(self.std),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ColumnProfile:
        edges = np.asarray(data["edges"], dtype=np.float64)
        shares = np.asarray(data["shares"], dtype=np.float64)
        if shares.shape != (len(edges) + 2,):
            raise ValueError(f"{len(edges)} edges need {len(edges) + 2} shares, not {len(shares)}")
        if len(edges) > 1 and not np.all(np.diff(edges) > 0):
            raise ValueError("edges are not strictly increasing")
        mean, std = data.get("mean"), data.get("std")
        return cls(
            edges=edges,
            shares=shares,
            missing_rate=float(data["missing_rate"]),
            mean=math.nan if mean is None else float(mean),
            std=math.nan if std is None else float(std),
        )


@dataclass(frozen=True)
class Profile:
    """What the training data looked like: per feature and for the model's own predictions."""

    features: tuple[str, ...]
    columns: tuple[ColumnProfile, ...]
    prediction: ColumnProfile
    rows: int
    created_at: float = field(default_factory=time.time)
    source: str = ""

    def column(self, feature: str) -> ColumnProfile:
        return self.columns[self.features.index(feature)]

    def to_json(self) -> str:
        return json.dumps(
            {
                "format": FORMAT,
                "rows": self.rows,
                "created_at": self.created_at,
                "source": self.source,
                "features": list(self.features),
                "columns": [c.to_dict() for c in self.columns],
                "prediction": self.prediction.to_dict(),
            },
            allow_nan=False,
        )

    @classmethod
    def from_json(cls, text: str) -> Profile:
        """Raises ``ValueError`` on anything but a well-formed profile of a known format."""
        data = json.loads(text)
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise ValueError(f"not a reference profile of format {FORMAT}")
        features = tuple(str(f) for f in data["features"])
        columns = tuple(ColumnProfile.from_dict(c) for c in data["columns"])
        if len(columns) != len(features):
            raise ValueError(f"{len(features)} features but {len(columns)} column profiles")
        return cls(
            features=features,
            columns=columns,
            prediction=ColumnProfile.from_dict(data["prediction"]),
            rows=int(data["rows"]),
            created_at=float(data.get("created_at", 0.0)),
            source=str(data.get("source", "")),
        )


def bin_counts(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Counts per value bin, then the missing count: ``len(edges) + 2`` integers."""
    values = np.asarray(values, dtype=np.float64)
    missing = np.isnan(values)
    present = values[~missing] if missing.any() else values
    # side="left": a value equal to an edge falls in the bin that edge closes, (e_i-1, e_i].
    counts = np.bincount(np.searchsorted(edges, present, side="left"), minlength=len(edges) + 1)
    return np.append(counts, np.count_nonzero(missing))


def profile_column(values: np.ndarray, quantiles: Sequence[float] = DECILES) -> ColumnProfile:
    """The bins of one column: its quantile edges (ties merged) and the share in each bin."""
    values = np.asarray(values, dtype=np.float64)
    present = values[~np.isnan(values)]
    if present.size:
        # Edges are data values (no interpolation): a discrete feature keeps its own values.
        edges = np.unique(np.quantile(present, quantiles, method="inverted_cdf"))
        mean, std = float(present.mean()), float(present.std())
    else:
        edges, mean, std = np.empty(0), math.nan, math.nan
    counts = bin_counts(values, edges)
    total = max(int(counts.sum()), 1)
    return ColumnProfile(
        edges=edges,
        shares=counts / total,
        missing_rate=float(counts[-1] / total),
        mean=mean,
        std=std,
    )


def build_profile(
    x: np.ndarray,
    predictions: np.ndarray,
    features: Sequence[str],
    source: str = "",
    quantiles: Sequence[float] = DECILES,
) -> Profile:
    """The reference profile of training rows ``x`` (n x features) and the model's predictions.

    Args:
        x: Training features, columns in the order of ``features``; NaN is missing.
        predictions: The model's predictions for those rows.
        features: Column names.
        source: Where the rows came from (for people).
        quantiles: Where to cut each column (deciles by default).
    """
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or x.shape[1] != len(features):
        raise ValueError(f"x has shape {x.shape}; expected (rows, {len(features)})")
    columns = tuple(profile_column(x[:, j], quantiles) for j in range(x.shape[1]))
    return Profile(
        features=tuple(features),
        columns=columns,
        prediction=profile_column(np.asarray(predictions, dtype=np.float64).ravel(), quantiles),
        rows=int(x.shape[0]),
        source=source,
    )


def psi(expected: np.ndarray, counts: np.ndarray) -> float:
    """PSI of observed bin ``counts`` against the ``expected`` shares (NaN when no rows)."""
    total = counts.sum()
    if total <= 0:
        return math.nan
    actual = np.maximum(counts / total, EPSILON)
    reference = np.maximum(expected, EPSILON)
    return float(np.sum((actual - reference) * np.log(actual / reference)))


def column_psi(column: ColumnProfile, values: np.ndarray) -> float:
    """PSI of ``values`` against one column of the profile."""
    return psi(column.shares, bin_counts(values, column.edges))


def window_psi(
    profile: Profile, x: np.ndarray, predictions: np.ndarray, columns: Sequence[int] | None = None
) -> tuple[np.ndarray, float]:
    """PSI of each profiled feature and of the predictions for a window of scored rows.

    Args:
        profile: The reference.
        x: Scored rows (n x anything); ``columns[i]`` is where ``profile.features[i]`` is in it
            (default: the same order).
        predictions: The predictions for those rows.
        columns: Column index of each profiled feature in ``x``.

    Returns:
        PSI per profiled feature (in ``profile.features`` order) and the predictions' PSI.
    """
    if columns is None:
        columns = range(len(profile.features))
    feature = np.array(
        [column_psi(col, x[:, j]) for col, j in zip(profile.columns, columns, strict=True)],
        dtype=np.float64,
    )
    return feature, column_psi(profile.prediction, predictions)


def status_of(value: float) -> str:
    """``ok``, ``watch`` (>= 0.1) or ``act`` (>= 0.25) for a PSI."""
    if value >= ACT:
        return "act"
    if value >= WATCH:
        return "watch"
    return "ok"


def read_profile(folder: str | Path) -> Profile | None:
    """The profile in a model's local folder, ``None`` if it has none.

    Raises:
        ValueError: there is one but it cannot be read.
    """
    path = Path(folder) / PROFILE_FILE
    if not path.is_file():
        return None
    return Profile.from_json(path.read_text())


def _finite_or_none(value: float) -> float | None:
    return value if math.isfinite(value) else None
