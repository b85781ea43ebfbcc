"""The Open Inference Protocol (KServe V2) REST routes, beside /invocations: the same model, the
same checks (``scoring.contract.v2``) and the same limits (``app.dataplane``).

``{name}`` is the registered model's name (``santander``), or ``model`` for a model served
without one; ``{version}`` the registered version being served. Errors are the protocol's
``{"error": "..."}`` (with this service's ``error_code`` beside it).
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from starlette.routing import Match

from app.config import Settings
from app.dataplane import Scored, answered_by, handle, predict
from app.deps import (
    AdmissionDep,
    ChallengerDep,
    HolderDep,
    InFlightDep,
    MetricsDep,
    ScoringAuth,
    SettingsDep,
)
from app.model_holder import ModelHolder
from app.observability import Metrics
from scoring.contract import v2
from scoring.errors import ModelNotReady, NotFound, ServiceError, UnsupportedMediaType, quote_name
from scoring.features import SANTANDER_FEATURES
from scoring.loading import LoadedModel
from scoring.model_ref import ModelRef

Handler = Callable[[Request], Coroutine[Any, Any, Response]]


def error_response(exc: ServiceError) -> JSONResponse:
    """A service error as the protocol's error body."""
    headers = {"Retry-After": "5"} if exc.status_code == 503 else None
    body = {"error": exc.message, "error_code": exc.error_code}
    return JSONResponse(body, status_code=exc.status_code, headers=headers)


class V2Route(APIRoute):
    """A route whose errors are answered in the protocol's shape, not the service's."""

    def get_route_handler(self) -> Handler:
        handler: Handler = super().get_route_handler()

        async def route(request: Request) -> Response:
            try:
                return await handler(request)
            except ServiceError as exc:
                return error_response(exc)

        return route


ERRORS: dict[int | str, dict[str, Any]] = {
    404: {"model": v2.V2Error, "description": "No such model or version"},
    503: {"model": v2.V2Error, "description": "No model loaded yet, or overloaded"},
}
INFER_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": v2.V2Error, "description": "Malformed request or binary data"},
    408: {"model": v2.V2Error, "description": "The body took too long to arrive"},
    413: {"model": v2.V2Error, "description": "Body or row count over the limit"},
    415: {"model": v2.V2Error, "description": "A compressed body (not supported)"},
    422: {"model": v2.V2Error, "description": "Inputs not as the model needs"},
    **ERRORS,
    504: {"model": v2.V2Error, "description": "Scoring took longer than the time limit"},
}

router = APIRouter(prefix="/v2", tags=["v2"], route_class=V2Route)


def served_name(model: LoadedModel) -> str:
    return model.registered_name or v2.DEFAULT_MODEL_NAME


def _served(holder: ModelHolder, name: str, version: str | None) -> LoadedModel:
    """The model this path names, or 404 (another name or version) or 503 (not loaded yet)."""
    model = holder.current
    if model is None:
        expected = ModelRef.parse(holder.uri).name if holder.uri else None
        if name == (expected or v2.DEFAULT_MODEL_NAME):
            raise ModelNotReady(holder.not_ready_reason())
        raise NotFound(f"unknown model {quote_name(name)}")
    serving = served_name(model)
    if name != serving:
        raise NotFound(f"unknown model {quote_name(name)}; this server serves '{serving}'")
    if version is not None and version != model.version:
        served = f"version '{model.version}'" if model.version else "no numbered version"
        raise NotFound(
            f"model '{serving}' has no version {quote_name(version)} here; it serves {served}"
        )
    return model


def _pick(
    holder: ModelHolder, challenger: ModelHolder | None, name: str, version: str | None
) -> tuple[LoadedModel, str]:
    """The model a path names, and its role: a version path may name the challenger's version
    (``CHALLENGER_URI``), so both models are reachable by name and version side by side."""
    other = challenger.current if challenger is not None else None
    if (
        version is not None
        and other is not None
        and served_name(other) == name
        and other.version == version
    ):
        return other, "challenger"
    return _served(holder, name, version), "champion"


@router.get("", response_model=v2.ServerMetadata, summary="Server metadata")
async def server_metadata(request: Request) -> v2.ServerMetadata:
    """The server's name, version and protocol extensions."""
    return v2.ServerMetadata(
        name="santander-serving", version=request.app.version, extensions=v2.EXTENSIONS
    )


@router.get("/health/live", response_model=v2.ServerLive, summary="Server liveness")
async def server_live() -> v2.ServerLive:
    """200 while the process serves requests, model or not."""
    return v2.ServerLive(live=True)


@router.get(
    "/health/ready",
    response_model=v2.ServerReady,
    responses={503: {"model": v2.ServerReady}},
    summary="Server readiness",
)
async def server_ready(holder: HolderDep) -> JSONResponse:
    """200 once the model is loaded, 503 before."""
    ready = holder.current is not None
    return JSONResponse({"ready": ready}, status_code=200 if ready else 503)


def _metadata(
    holder: ModelHolder, name: str, version: str | None, challenger: ModelHolder | None = None
) -> v2.ModelMetadata:
    model, _ = _pick(holder, challenger, name, version)
    return v2.model_metadata(
        served_name(model), model.version, model.predictor.flavor, model.predictor.features
    )


def _ready(
    holder: ModelHolder, name: str, version: str | None, challenger: ModelHolder | None = None
) -> JSONResponse:
    try:
        model, _ = _pick(holder, challenger, name, version)
    except ModelNotReady:
        return JSONResponse({"name": name, "ready": False}, status_code=503)
    return JSONResponse({"name": served_name(model), "ready": True})


@router.get(
    "/models/{name}", response_model=v2.ModelMetadata, responses=ERRORS, summary="Model metadata"
)
async def model_metadata(name: str, holder: HolderDep) -> v2.ModelMetadata:
    """Inputs (the features, FP64), output (predictions, FP64), versions."""
    return _metadata(holder, name, None)


@router.get(
    "/models/{name}/versions/{version}",
    response_model=v2.ModelMetadata,
    responses=ERRORS,
    summary="Model version metadata",
)
async def model_version_metadata(
    name: str, version: str, holder: HolderDep, challenger: ChallengerDep
) -> v2.ModelMetadata:
    """Inputs (the features, FP64), output (predictions, FP64), versions."""
    return _metadata(holder, name, version, challenger)


@router.get(
    "/models/{name}/ready", response_model=v2.ModelReady, responses=ERRORS, summary="Model ready"
)
async def model_ready(name: str, holder: HolderDep) -> JSONResponse:
    """200 when the model is loaded and can score, 503 before."""
    return _ready(holder, name, None)


@router.get(
    "/models/{name}/versions/{version}/ready",
    response_model=v2.ModelReady,
    responses=ERRORS,
    summary="Model version ready",
)
async def model_version_ready(
    name: str, version: str, holder: HolderDep, challenger: ChallengerDep
) -> JSONResponse:
    """200 when this version is loaded and can score, 503 before."""
    return _ready(holder, name, version, challenger)


async def _infer(
    request: Request,
    name: str,
    version: str | None,
    *,
    settings: SettingsDep,
    holder: HolderDep,
    metrics: MetricsDep,
    in_flight: InFlightDep,
    admission: AdmissionDep,
    challenger: ModelHolder | None = None,
) -> Response:
    encoding = request.headers.get("content-encoding", "identity").strip().lower()
    if encoding != "identity":
        raise UnsupportedMediaType(f"Content-Encoding {quote_name(encoding)} is not supported")
    model, role = _pick(holder, challenger, name, version)
    request.state.model_version = model.version
    request.state.model = model.label
    request.state.model_role = role
    header_length = request.headers.get(v2.HEADER_LENGTH)

    def work(
        body: bytes,
        content_type: str | None,
        model: LoadedModel,
        settings: Settings,
        metrics: Metrics,
        *,
        role: str = "champion",
    ) -> Scored:
        parsed, x = v2.decode_request(
            body, header_length, model.predictor.features, settings.max_rows
        )
        predictions = predict(x, model, settings, metrics, role)
        content, json_length = v2.encode_response(
            parsed, predictions, served_name(model), model.version
        )
        if json_length is None:
            return Scored(content, x, predictions)
        headers = {v2.HEADER_LENGTH: str(json_length)}
        return Scored(content, x, predictions, "application/octet-stream", headers)

    # The same admission as /invocations: body reads, memory, a scoring slot, the time limits.
    scored = await handle(
        request,
        model,
        settings=settings,
        metrics=metrics,
        in_flight=in_flight,
        admission=admission,
        work=work,
        role=role,
    )
    request.state.rows = scored.rows
    headers = {**(scored.headers or {}), **answered_by(model, role)}
    return Response(scored.content, media_type=scored.media_type, headers=headers)


_INFER: dict[str, Any] = {
    "response_model": v2.InferenceResponse,
    "responses": INFER_ERRORS,
    "openapi_extra": v2.infer_openapi(SANTANDER_FEATURES),
    # API keys, when on, guard inference as they guard /invocations; health stays open.
    "dependencies": [ScoringAuth],
}


@router.post("/models/{name}/infer", summary="Infer: P(target = 1) per row", **_INFER)
async def infer(
    request: Request,
    name: str,
    *,
    settings: SettingsDep,
    holder: HolderDep,
    metrics: MetricsDep,
    in_flight: InFlightDep,
    admission: AdmissionDep,
) -> Response:
    """Score the rows of the input tensors: ``predictions``, P(target = 1) per row."""
    return await _infer(
        request,
        name,
        None,
        settings=settings,
        holder=holder,
        metrics=metrics,
        in_flight=in_flight,
        admission=admission,
    )


@router.post("/models/{name}/versions/{version}/infer", summary="Infer with a version", **_INFER)
async def infer_version(
    request: Request,
    name: str,
    version: str,
    *,
    settings: SettingsDep,
    holder: HolderDep,
    metrics: MetricsDep,
    in_flight: InFlightDep,
    admission: AdmissionDep,
    challenger: ChallengerDep,
) -> Response:
    """Score the rows of the input tensors with this version of the model (the champion's, or
    the challenger's when ``CHALLENGER_URI`` serves one beside it)."""
    return await _infer(
        request,
        name,
        version,
        settings=settings,
        holder=holder,
        metrics=metrics,
        in_flight=in_flight,
        admission=admission,
        challenger=challenger,
    )


@router.api_route(
    "/{path:path}",
    methods=["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"],
    include_in_schema=False,
)
async def unmatched(request: Request, path: str) -> Response:
    """Any other /v2 path: 404, or 405 where only the method is wrong, in the protocol's shape."""
    allowed = sorted(
        method
        for route in router.routes
        if isinstance(route, APIRoute) and route.endpoint is not unmatched
        if route.matches({**request.scope, "method": "\x00"})[0] is Match.PARTIAL
        for method in route.methods or ()
    )
    if allowed:
        body = {"error": "method not allowed", "error_code": "METHOD_NOT_ALLOWED"}
        return JSONResponse(body, status_code=405, headers={"Allow": ", ".join(allowed)})
    return error_response(NotFound(f"no V2 route {quote_name('/v2/' + path)}"))
