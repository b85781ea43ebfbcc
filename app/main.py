"""The FastAPI application: ``create_app()`` builds it; nothing runs at import time.

Serve with ``python -m app`` or ``uvicorn --factory app.main:create_app``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from pydantic.json_schema import models_json_schema
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.config import Settings, get_settings
from app.errors import ServiceError
from app.model_holder import ModelHolder
from app.predictor import LoadedModel, Predictor
from app.routes import health, invocations, model
from app.schemas import REQUEST_MODELS

log = logging.getLogger("app")

_HTTP_CODES = {404: "NOT_FOUND", 405: "METHOD_NOT_ALLOWED", 413: "PAYLOAD_TOO_LARGE"}


def create_app(
    settings: Settings | None = None,
    predictor: Predictor | None = None,
    holder: ModelHolder | None = None,
) -> FastAPI:
    """Build the service.

    Args:
        settings: defaults to the environment (``get_settings()``).
        predictor: serve this in-memory predictor instead of loading ``MODEL_URI`` (tests).
        holder: a ready-made model holder (tests, or a custom loader).
    """
    settings = settings or get_settings()
    if holder is None:
        holder = ModelHolder(settings.model_uri)
        if predictor is not None:
            holder.current = LoadedModel(predictor=predictor, uri=settings.model_uri or "memory")

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        retry: asyncio.Task[None] | None = None
        if holder.current is None:
            if settings.model_load_retry:
                retry = asyncio.create_task(
                    holder.load_until_ready(settings.model_retry_max_seconds)
                )
            else:
                # Fails start-up with one line naming the URI and the cause.
                await run_in_threadpool(holder.load)
        try:
            yield
        finally:
            if retry is not None:
                retry.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await retry

    app = FastAPI(
        title="Santander transaction scoring",
        summary="P(target = 1) for Santander-format rows, from an MLflow-registered LightGBM model",
        version=_service_version(),
        lifespan=lifespan,
        docs_url="/docs" if settings.enable_docs else None,
        redoc_url="/redoc" if settings.enable_docs else None,
        openapi_url="/openapi.json" if settings.enable_docs else None,
    )
    app.state.settings = settings
    app.state.holder = holder
    app.include_router(invocations.router)
    app.include_router(health.router)
    app.include_router(model.router)
    _install_error_handlers(app)
    _install_openapi(app)
    return app


def _service_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("santander-serving")
    except PackageNotFoundError:
        return "0"


def _install_error_handlers(app: FastAPI) -> None:
    async def service_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, ServiceError)
        headers = {"Retry-After": "5"} if exc.status_code == 503 else None
        return JSONResponse(exc.body(), status_code=exc.status_code, headers=headers)

    async def http_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        code = _HTTP_CODES.get(exc.status_code, "HTTP_ERROR")
        message = exc.detail if isinstance(exc.detail, str) else code.replace("_", " ").lower()
        return JSONResponse(
            {"error_code": code, "message": message},
            status_code=exc.status_code,
            headers=getattr(exc, "headers", None),
        )

    async def validation_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()))
        message = f"{where}: {first.get('msg', 'invalid')}" if where else "invalid request"
        return JSONResponse({"error_code": "INVALID_INPUT", "message": message}, status_code=422)

    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return JSONResponse(
            {"error_code": "INTERNAL_ERROR", "message": "internal error; see the server log"},
            status_code=500,
        )

    app.add_exception_handler(ServiceError, service_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(Exception, unexpected)


def _install_openapi(app: FastAPI) -> None:
    """Publish the request models that /invocations parses by hand under components/schemas."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        schema = get_openapi(
            title=app.title, version=app.version, summary=app.summary, routes=app.routes
        )
        _, defs = models_json_schema(
            [(m, "validation") for m in REQUEST_MODELS],
            ref_template="#/components/schemas/{model}",
        )
        schema.setdefault("components", {}).setdefault("schemas", {}).update(defs["$defs"])
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
