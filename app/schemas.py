"""Pydantic models of the service's responses, as published in ``/openapi.json``.

The request models are the contract's (``scoring.contract.models``).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class Predictions(BaseModel):
    """P(target = 1) for each input row, in input order (the shape of MLflow's server)."""

    predictions: list[float]


class ErrorBody(BaseModel):
    """Every error: a stable code and a message naming the field, column or row at fault."""

    error_code: str = Field(examples=["MISSING_COLUMNS"])
    message: str = Field(examples=["missing column(s) 'var_7'"])


class Ready(BaseModel):
    status: Literal["ready", "not ready"]
    reason: str | None = None
    model_uri: str | None = None


class Versions(BaseModel):
    service: str
    mlflow: str
    lightgbm: str
    python: str


class ModelCard(BaseModel):
    """What is being served and where it came from, and how loading has gone."""

    model_config = ConfigDict(extra="allow")

    model_uri: str
    run_id: str | None
    model_id: str | None
    registered_name: str | None
    version: str | None
    alias: str | None
    flavor: str
    loading: str | None = Field(
        default=None,
        description="How the model was read: lightgbm native text, allowlisted pickle, "
        "allowlisted skops, or pyfunc (untrusted allowed)",
    )
    explainer: str | None = Field(
        default=None,
        description="What answers /explain: LightGBM's own TreeSHAP, or the fast engine once "
        "built (after the first /explain, or at load with EXPLAIN_AT_LOAD)",
    )
    features: list[str]
    metrics: dict[str, float]
    params: dict[str, str]
    loaded_at: float
    load_seconds: float
    load_attempts: int = 0
    load_failures: int = 0
    last_error: str | None = None
    last_error_at: float | None = None
    worker_pid: int | None = Field(
        default=None, description="The server process that answered (one of WORKERS)"
    )


class Reason(BaseModel):
    """One reason code: a feature, the row's value of it and what it added to the log-odds."""

    feature: str = Field(examples=["var_81"])
    value: float | None = Field(description="the row's input; null where it was missing")
    contribution: float = Field(description="log-odds this feature added (negative: lowered)")


class Explanation(BaseModel):
    """Each prediction with its exact decomposition (TreeSHAP, LightGBM's ``pred_contrib``):
    ``base_value + sum(contributions[i]) == logit(predictions[i])`` for every row ``i``."""

    predictions: list[float] = Field(description="P(target = 1) per row, as /invocations answers")
    base_value: float = Field(description="the model's expected log-odds: where every row starts")
    features: list[str] = Field(description="the model's features: the columns of contributions")
    contributions: list[list[float]] = Field(
        description="per row, what each feature added to the log-odds, in the order of features"
    )
    reasons: list[list[Reason]] | None = Field(
        default=None,
        description="with ?top=K: per row the (up to) K features of largest |contribution|, "
        "largest first; features that contributed nothing are left out",
    )
    model_config = ConfigDict(
        json_schema_extra={
            "example": {
                "predictions": [0.0731],
                "base_value": -2.2,
                "features": ["var_0", "var_1", "...", "var_199"],
                "contributions": [[0.013, -0.2, "...", 0.041]],
                "reasons": [
                    [
                        {"feature": "var_1", "value": 3.25, "contribution": -0.2},
                        {"feature": "var_199", "value": None, "contribution": 0.041},
                    ]
                ],
            }
        }
    )


SCORING_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorBody, "description": "Malformed body"},
    401: {"model": ErrorBody, "description": "API keys are on and none valid was given"},
    408: {"model": ErrorBody, "description": "The body took too long to arrive"},
    413: {"model": ErrorBody, "description": "Body or row count over the limit"},
    415: {"model": ErrorBody, "description": "Unsupported Content-Type"},
    422: {"model": ErrorBody, "description": "Columns or values not as the model needs"},
    503: {"model": ErrorBody, "description": "No model loaded yet, or overloaded"},
    504: {"model": ErrorBody, "description": "Scoring took longer than the time limit"},
}
"""The error answers every body-scoring route documents (``/invocations``, ``/explain``)."""
