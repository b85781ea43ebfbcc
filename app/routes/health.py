"""Liveness, readiness and versions."""

from __future__ import annotations

import functools
import platform
from importlib.metadata import PackageNotFoundError, version

from fastapi import APIRouter
from fastapi.responses import JSONResponse, PlainTextResponse

from app.deps import HolderDep
from app.model_holder import ModelHolder
from app.schemas import ErrorBody, Ready, Versions

router = APIRouter(tags=["health"])


@functools.cache
def _version(package: str) -> str:
    try:
        return version(package)
    except PackageNotFoundError:
        return "unknown"


def _ready(holder: ModelHolder) -> JSONResponse:
    if holder.current is not None:
        return JSONResponse({"status": "ready", "reason": None, "model_uri": holder.current.uri})
    body = {"status": "not ready", "reason": holder.not_ready_reason(), "model_uri": holder.uri}
    return JSONResponse(body, status_code=503)


@router.get("/ping", response_class=PlainTextResponse, responses={503: {"model": ErrorBody}})
async def ping(holder: HolderDep) -> PlainTextResponse:
    """200 once the model is loaded (as MLflow's server)."""
    if holder.current is None:
        return PlainTextResponse("\n", status_code=503)
    return PlainTextResponse("\n")


@router.get("/health", response_model=Ready, responses={503: {"model": Ready}})
async def health(holder: HolderDep) -> JSONResponse:
    """200 once the model is loaded (as MLflow's server), else 503 with the reason."""
    return _ready(holder)


@router.get("/health/live")
async def live() -> dict[str, str]:
    """200 while the process serves requests, model or not."""
    return {"status": "live"}


@router.get("/health/ready", response_model=Ready, responses={503: {"model": Ready}})
async def ready(holder: HolderDep) -> JSONResponse:
    """200 when a model is loaded and requests can be scored; 503 with the reason otherwise."""
    return _ready(holder)


@router.get(
    "/version",
    response_class=PlainTextResponse,
    responses={200: {"content": {"text/plain": {"example": "3.17.0"}}}},
)
async def mlflow_version() -> PlainTextResponse:
    """The MLflow version, as plain text (what ``mlflow models serve`` answers, and MLflow's
    ``ScoringServerClient.get_version()`` reads)."""
    return PlainTextResponse(_version("mlflow"))


@router.get("/versions", response_model=Versions)
async def versions() -> Versions:
    """Service, MLflow, LightGBM and Python versions."""
    return Versions(
        service=_version("santander-serving"),
        mlflow=_version("mlflow"),
        lightgbm=_version("lightgbm"),
        python=platform.python_version(),
    )
