"""Liveness, readiness and versions."""

from __future__ import annotations

import platform
from importlib.metadata import PackageNotFoundError, version

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, PlainTextResponse

from app.model_holder import ModelHolder
from app.schemas import ErrorBody, Ready, Versions

router = APIRouter()


def _version(package: str) -> str:
    try:
        return version(package)
    except PackageNotFoundError:
        return "unknown"


def _ready(request: Request) -> JSONResponse:
    holder: ModelHolder = request.app.state.holder
    if holder.current is not None:
        return JSONResponse({"status": "ready", "reason": None, "model_uri": holder.current.uri})
    body = {"status": "not ready", "reason": holder.not_ready_reason(), "model_uri": holder.uri}
    return JSONResponse(body, status_code=503)


@router.get("/ping", response_class=PlainTextResponse, responses={503: {"model": ErrorBody}})
def ping(request: Request) -> PlainTextResponse:
    """200 once the model is loaded (as MLflow's server)."""
    holder: ModelHolder = request.app.state.holder
    if holder.current is None:
        return PlainTextResponse("\n", status_code=503)
    return PlainTextResponse("\n")


@router.get("/health", response_model=Ready, responses={503: {"model": Ready}})
def health(request: Request) -> JSONResponse:
    """200 once the model is loaded (as MLflow's server), else 503 with the reason."""
    return _ready(request)


@router.get("/health/live")
def live() -> dict[str, str]:
    """200 while the process serves requests, model or not."""
    return {"status": "live"}


@router.get("/health/ready", response_model=Ready, responses={503: {"model": Ready}})
def ready(request: Request) -> JSONResponse:
    """200 when a model is loaded and requests can be scored; 503 with the reason otherwise."""
    return _ready(request)


@router.get("/version", response_model=Versions)
def versions() -> Versions:
    """Service, MLflow, LightGBM and Python versions."""
    return Versions(
        service=_version("santander-serving"),
        mlflow=_version("mlflow"),
        lightgbm=_version("lightgbm"),
        python=platform.python_version(),
    )
