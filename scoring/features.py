"""The feature schema, defined once: the Santander features, a model's own from its signature."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from scoring.errors import ModelLoadError

SANTANDER_FEATURES: tuple[str, ...] = tuple(f"var_{i}" for i in range(200))
"""The 200 float features of Kaggle's Santander Customer Transaction Prediction, in order."""

TARGET = "target"
ID_COLUMN = "ID_code"
NUMERIC_TYPES = frozenset({"double", "float", "long", "integer"})
"""MLflow signature column types this service scores as float64."""


def features_from_signature(signature: Any, uri: str = "?") -> tuple[str, ...]:
    """The input columns of an MLflow ``ModelSignature``, in order.

    A model logged without named inputs is taken to score ``SANTANDER_FEATURES``.

    Raises:
        ModelLoadError: an input column that is not numeric.
    """
    if signature is None or signature.inputs is None or not signature.inputs.has_input_names():
        return SANTANDER_FEATURES
    for spec in signature.inputs.inputs:
        kind = str(getattr(spec.type, "name", spec.type))
        if kind not in NUMERIC_TYPES:
            raise ModelLoadError(
                uri, f"input {spec.name!r} has type {kind}; this service serves numeric features"
            )
    return tuple(str(n) for n in signature.inputs.input_names())


def feature_range(features: Sequence[str]) -> str:
    """``var_0..var_199``: a short way to name a feature list in messages and docs."""
    if len(features) > 2:
        return f"{features[0]}..{features[-1]}"
    return ", ".join(features)
