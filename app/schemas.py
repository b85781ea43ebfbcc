"""Pydantic models of the service's responses, as published in ``/openapi.json``.

The request models are the contract's (``scoring.contract.models``).
"""

from __future__ import annotations

from typing import Literal

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
