"""Log the reference profile of the training data inside the model's artifact folder.

The service compares what it scores with this profile (``scoring.drift``). It is written as
``reference_profile.json`` in the logged model's own artifacts, next to ``MLmodel``, so it is
versioned with the model and every URI that names the model finds it: ``runs:/<run>/model``,
``models:/<name>/<version>``, ``models:/<name>@<alias>``, ``models:/m-<id>``, or the downloaded
folder itself.

One call after ``mlflow.lightgbm.log_model``::

    log_reference_profile(info.model_id, data.X, cv.oof)

Distributed training profiles a sample of its Dask frame (``sample_for_profile``): deciles from
100,000 rows are within about 0.002 of the whole table's shares.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd

from scoring.drift import PROFILE_FILE, Profile, build_profile

PROFILE_ROWS = 200_000
"""At most this many training rows are profiled (a seeded sample beyond that)."""


def reference_profile(
    x: pd.DataFrame | np.ndarray,
    predictions: np.ndarray,
    features: list[str] | None = None,
    max_rows: int = PROFILE_ROWS,
    seed: int = 0,
) -> Profile:
    """The profile of training rows ``x`` and of the model's predictions.

    Args:
        x: Training features (a frame, or a matrix in ``features`` order).
        predictions: The model's predicted probabilities on training-distribution rows. Pass the
            out-of-fold ones (``CVResult.oof``): they are what the model does on rows it has not
            seen, as in production; in-sample predictions of the final model are more confident
            than that and would read as drift on unchanged data.
        features: Column names (default: the frame's columns).
        max_rows: Profile a seeded sample of at most this many rows.
        seed: Seed of that sample.

    Returns:
        The profile.
    """
    matrix: np.ndarray
    if isinstance(x, pd.DataFrame):
        features = features or [str(c) for c in x.columns]
        matrix = x[features].to_numpy(dtype=np.float64)
    else:
        if features is None:
            raise ValueError("features are needed with a matrix")
        matrix = np.asarray(x, dtype=np.float64)
    if len(matrix) > max_rows:
        keep = np.random.default_rng(seed).choice(len(matrix), max_rows, replace=False)
        matrix = matrix[np.sort(keep)]
    return build_profile(
        matrix,
        np.asarray(predictions, dtype=np.float64),
        features,
        source=f"{len(matrix)} training rows; {len(predictions)} out-of-fold predictions",
    )


def log_reference_profile(
    model_id: str | None, x: pd.DataFrame | np.ndarray, predictions: np.ndarray
) -> Profile:
    """Profile the training rows and log the profile into the logged model's artifact folder.

    Args:
        model_id: The logged model's id (``ModelInfo.model_id``, ``m-...``); ``None``: the active
            run's ``model/`` folder.
        x: The training features (a frame).
        predictions: The model's out-of-fold predictions (see ``reference_profile``).

    Returns:
        The profile logged.
    """
    profile = reference_profile(x, predictions)
    with tempfile.TemporaryDirectory(prefix="profile-") as tmp:
        path = Path(tmp) / PROFILE_FILE
        path.write_text(profile.to_json())
        if model_id is None:
            mlflow.log_artifact(str(path), artifact_path="model")
        else:
            mlflow.MlflowClient().log_model_artifact(model_id, str(path))
    return profile


def sample_for_profile(frame: Any, features: list[str], rows: int = 100_000, seed: int = 0) -> Any:
    """A pandas sample of about ``rows`` rows of a Dask frame's ``features``, for the profile."""
    total = int(frame.shape[0].compute())
    fraction = min(1.0, rows / max(total, 1))
    sample = (
        frame[features]
        if fraction >= 1.0
        else frame[features].sample(frac=fraction, random_state=seed)
    )
    return sample.compute()
