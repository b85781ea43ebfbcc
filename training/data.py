"""Santander-format training data: load and check the real ``train.csv``, or synthesize a stand-in.

The real file (Kaggle's Santander Customer Transaction Prediction) has ``ID_code``, ``target`` and
``var_0``..``var_199``. Without it, :func:`synthesize` draws a seeded stand-in with the real
file's statistics, so the whole project runs offline and a model can be judged against a known
ceiling (its Bayes-optimal AUC is about 0.92):

* ``y ~ Bernoulli(0.1005)``;
* mean shifts ``d_j = +-|N(0,1)|``, rescaled so that ``sum d_j^2 = 2 Phi^-1(0.86)^2`` (what a
  linear model can reach: AUC 0.86);
* log-sd ratios ``g_j ~ N(0,1)``, rescaled so that ``sum 2 g_j^2 = 2 Phi^-1(0.92)^2 - sum d_j^2``,
  and ``s_j = exp(g_j)`` (the extra signal that a per-feature model such as naive Bayes finds);
* ``Z ~ N(0,1)``; for positives ``Z_j <- s_j Z_j + d_j``;
* ``x_j = round(mu_j + sigma_j Z_j, 4)`` with ``mu_j ~ N(6.6, 8.5^2)`` and
  ``sigma_j ~ LogNormal(1.37, 0.98)``.

Command line::

    python -m training.data --rows 200000 --seed 0 --out data/train.csv
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pa_csv
from scipy.stats import norm

from scoring.features import SANTANDER_FEATURES

ID = "ID_code"
TARGET = "target"
FEATURES = list(SANTANDER_FEATURES)  # the feature schema is defined once, in the core
N_FEATURES = len(FEATURES)
COLUMNS = [ID, TARGET, *FEATURES]

POSITIVE_RATE = 0.1005
LINEAR_AUC = 0.86  # the AUC that the mean shifts alone allow
BAYES_AUC = 0.92  # the AUC that mean shifts and sd ratios together allow (approximately)
DECIMALS = 4


class DataError(ValueError):
    """The training file does not have the Santander format; the message names the column."""


@dataclass(frozen=True)
class SyntheticSpec:
    """The per-feature parameters of a synthetic data set (all arrays have one entry per feature).

    Attributes:
        mu: Location of each feature.
        sigma: Scale of each feature (negatives' standard deviation).
        shift: Mean shift of the positives, in units of ``sigma``.
        scale: Standard-deviation ratio of positives to negatives.
        positive_rate: P(target = 1).
    """

    mu: np.ndarray
    sigma: np.ndarray
    shift: np.ndarray
    scale: np.ndarray
    positive_rate: float = POSITIVE_RATE

    def log_likelihood_ratio(self, x: np.ndarray) -> np.ndarray:
        """The Bayes-optimal score log p(x | 1) - log p(x | 0) for rows ``x`` (n x 200).

        Ranking by it gives the best AUC any model can reach on this data (rounding aside).
        """
        z = (x - self.mu) / self.sigma
        z1 = (z - self.shift) / self.scale
        return np.asarray((0.5 * z**2 - 0.5 * z1**2 - np.log(self.scale)).sum(axis=1))


def synthetic_spec(seed: int) -> SyntheticSpec:
    """Draw the per-feature parameters of the synthetic data set for ``seed``.

    They depend on the seed only, not on the number of rows, so a small sample and the full
    200,000 rows drawn with one seed describe the same population.

    Args:
        seed: Random seed.

    Returns:
        The parameters, rescaled so that the linear and Bayes-optimal AUCs hit their targets.
    """
    rng = np.random.default_rng(np.random.SeedSequence([seed, 1]))
    shift = rng.choice([-1.0, 1.0], size=N_FEATURES) * np.abs(rng.standard_normal(N_FEATURES))
    shift_energy = 2 * norm.ppf(LINEAR_AUC) ** 2
    shift *= np.sqrt(shift_energy / np.sum(shift**2))
    log_scale = rng.standard_normal(N_FEATURES)
    scale_energy = 2 * norm.ppf(BAYES_AUC) ** 2 - shift_energy
    log_scale *= np.sqrt(scale_energy / np.sum(2 * log_scale**2))
    mu = rng.normal(6.6, 8.5, size=N_FEATURES)
    sigma = rng.lognormal(1.37, 0.98, size=N_FEATURES)
    return SyntheticSpec(mu=mu, sigma=sigma, shift=shift, scale=np.exp(log_scale))


def synthesize(rows: int, seed: int = 0) -> pd.DataFrame:
    """Draw a Santander-shaped data set with the real file's statistics.

    Args:
        rows: Number of rows.
        seed: Random seed; the same seed gives the same frame.

    Returns:
        A frame with ``ID_code`` (``train_0``...), ``target`` (int 0/1) and ``var_0``..``var_199``
        (floats rounded to 4 decimals), as :func:`load_csv` returns the real file.
    """
    if rows < 1:
        raise ValueError(f"rows must be positive, got {rows}")
    spec = synthetic_spec(seed)
    rng = np.random.default_rng(np.random.SeedSequence([seed, 2]))
    y = (rng.random(rows) < spec.positive_rate).astype(np.int64)
    z = rng.standard_normal((rows, N_FEATURES))
    pos = y == 1
    z[pos] = z[pos] * spec.scale + spec.shift
    x = np.round(spec.mu + spec.sigma * z, DECIMALS)
    frame = pd.DataFrame(x, columns=FEATURES)
    frame.insert(0, TARGET, pd.Series(y, index=frame.index))
    frame.insert(0, ID, [f"train_{i}" for i in range(rows)])
    return frame


def write_csv(frame: pd.DataFrame, path: str | Path) -> Path:
    """Write ``frame`` in the real file's CSV format (no index, no quotes), creating folders.

    Args:
        frame: A frame with the Santander columns.
        path: Destination file.

    Returns:
        The path written.
    """
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    # Arrow writes 200,000 x 202 values in seconds where pandas takes over a minute. The header
    # goes in by hand because Arrow always quotes it; the values, like the real file's, are not.
    table = pa.Table.from_pandas(frame, preserve_index=False)
    with out.open("wb") as sink:
        sink.write((",".join(str(c) for c in frame.columns) + "\n").encode())
        pa_csv.write_csv(
            table, sink, pa_csv.WriteOptions(include_header=False, quoting_style="none")
        )
    return out


def check_frame(frame: pd.DataFrame, source: str = "data") -> pd.DataFrame:
    """Check that ``frame`` has the Santander training format and return it in canonical order.

    Missing values in features are allowed (LightGBM and the service handle them); everything
    else that would make training fail later, or silently train on the wrong thing, is refused.

    Args:
        frame: The frame as read from the CSV.
        source: What to call it in error messages (usually the file path).

    Returns:
        The frame with columns ``ID_code, target, var_0..var_199``, ``target`` as int64 and the
        features as float64.

    Raises:
        DataError: One clear error naming the column at fault.
    """
    columns = [str(c) for c in frame.columns]
    duplicated = sorted({c for c in columns if columns.count(c) > 1})
    if duplicated:
        raise DataError(f"{source}: {_names('duplicated', duplicated)}")
    missing = [c for c in COLUMNS if c not in columns]
    if missing:
        raise DataError(f"{source}: {_names('missing', missing)}")
    extra = [c for c in columns if c not in COLUMNS]
    if extra:
        raise DataError(
            f"{source}: {_names('unexpected', extra)} "
            f"(expected {ID}, {TARGET}, {FEATURES[0]}..{FEATURES[-1]})"
        )
    if len(frame) == 0:
        raise DataError(f"{source}: no rows")
    frame = frame[COLUMNS].copy()
    for column in FEATURES:
        frame[column] = _numeric(frame[column], column, source)
    frame[TARGET] = _target(frame[TARGET], source)
    frame[ID] = frame[ID].astype(str)
    return frame


def load_csv(path: str | Path) -> pd.DataFrame:
    """Read and check a Santander ``train.csv``.

    Args:
        path: The CSV file (Kaggle's, or one written by :func:`write_csv`).

    Returns:
        The checked frame (see :func:`check_frame`).

    Raises:
        FileNotFoundError: No such file.
        DataError: The file is not in the Santander training format.
    """
    source = str(path)
    if not Path(path).is_file():
        raise FileNotFoundError(f"{source}: no such file")
    try:
        # Read ID_code as text (it is a label, whatever it looks like); let pandas infer the rest.
        frame = pd.read_csv(path, dtype={ID: str}, low_memory=False)
    except pd.errors.EmptyDataError:
        raise DataError(f"{source}: empty file") from None
    except pd.errors.ParserError as exc:
        raise DataError(f"{source}: not a valid CSV file ({exc})") from None
    return check_frame(frame, source)


def features_and_target(frame: pd.DataFrame) -> tuple[pd.DataFrame, np.ndarray]:
    """Split a checked frame into the 200 feature columns and the 0/1 target vector."""
    return frame[FEATURES], frame[TARGET].to_numpy(dtype=np.int64)


def _names(what: str, columns: Sequence[str]) -> str:
    """``missing column 'x'`` or ``missing columns 'x', 'y' and 3 more``."""
    shown = ", ".join(repr(c) for c in columns[:10])
    more = f" and {len(columns) - 10} more" if len(columns) > 10 else ""
    plural = "s" if len(columns) > 1 else ""
    return f"{what} column{plural} {shown}{more}"


def _numeric(values: pd.Series, column: str, source: str) -> pd.Series:
    if pd.api.types.is_bool_dtype(values) or not (
        pd.api.types.is_numeric_dtype(values)
        or pd.api.types.is_object_dtype(values)
        or pd.api.types.is_string_dtype(values)
    ):
        raise DataError(f"{source}: column {column!r} is not numeric (dtype {values.dtype})")
    if pd.api.types.is_numeric_dtype(values):
        return values.astype(np.float64)
    converted = pd.to_numeric(values, errors="coerce")
    bad = converted.isna() & values.notna()
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0])
        raise DataError(
            f"{source}: column {column!r} has a non-numeric value {values.iloc[row]!r} "
            f"(data row {row + 1}); {int(bad.sum())} such value(s) in all"
        )
    return converted.astype(np.float64)


def _target(values: pd.Series, source: str) -> pd.Series:
    numbers = pd.to_numeric(values, errors="coerce")
    bad = ~numbers.isin([0, 1])
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0])
        raise DataError(
            f"{source}: column {TARGET!r} must be 0 or 1, found {values.iloc[row]!r} "
            f"(data row {row + 1}); {int(bad.sum())} such value(s) in all"
        )
    return numbers.astype(np.int64)


def main(argv: Sequence[str] | None = None) -> int:
    """Synthesize a stand-in ``train.csv`` (the command line)."""
    parser = argparse.ArgumentParser(
        prog="python -m training.data", description="Synthesize a Santander-format train.csv."
    )
    parser.add_argument("--rows", type=int, default=200_000, help="rows (default 200000)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--out", type=Path, default=Path("data/train.csv"), help="output CSV")
    args = parser.parse_args(argv)
    start = time.monotonic()
    frame = synthesize(args.rows, args.seed)
    out = write_csv(frame, args.out)
    print(
        f"wrote {out}: {len(frame):,} rows, {frame[TARGET].mean():.2%} positives, "
        f"seed {args.seed}, in {time.monotonic() - start:.1f}s",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
