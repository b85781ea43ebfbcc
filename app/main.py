"""The FastAPI application: ``create_app()`` builds it; nothing runs at import time.

Serve with ``python -m app`` or ``uvicorn --factory app.main:create_app``.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import inspect
import logging
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, Response
from fastapi_offline import FastAPIOffline
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.admission import InFlight
from app.challenger import Shadow
from app.config import Settings, get_settings
from app.connections import guard_connections
from app.hotpath import HotPath, Plane, error_response
from app.limits import Admission, arrow_allocates_with_malloc, limit_arenas
from app.model_holder import ModelHolder
from app.monitoring import Monitoring
from app.observability import (
    FLUSH_SECONDS,
    Metrics,
    RequestContext,
    configure_logging,
    mark_worker_dead,
)
from app.routes import admin, explain, health, invocations, model, monitoring, v2
from scoring.contract.models import contract_for, invocations_openapi
from scoring.errors import ServiceError
from scoring.features import SANTANDER_FEATURES
from scoring.loading import LoadedModel, load_model
from scoring.predictors import Predictor
from scoring.trusted import import_lightgbm_for_serving

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
    metrics = Metrics(settings.prometheus_multiproc_dir)
    if holder is None:
        options = settings.load_options()
        holder = ModelHolder(
            settings.model_uri,
            loader=lambda uri: load_model(uri, options),
            signal_file=settings.reload_signal_file,
        )
        if predictor is not None:
            holder.current = LoadedModel(predictor=predictor, uri=settings.model_uri or "memory")
    holder.on_swap.append(lambda new, old: _record_swap(metrics, new, old))
    holder.on_failure.append(lambda cause: metrics.load_failures.inc())
    admission = Admission(settings, metrics)
    holder.on_swap.append(lambda new, old: admission.memory.remeasure())

    # What a model builds later in a thread (compiled trees, the explanation engine on the
    # first /explain) counts in the budget too.
    def count_later_work(new: LoadedModel, old: LoadedModel | None) -> None:
        hooks = getattr(new.predictor, "on_ready", None)
        if hooks is not None:
            hooks.append(admission.memory.remeasure_soon)

    holder.on_swap.append(count_later_work)
    challenger: ModelHolder | None = None
    shadow: Shadow | None = None
    if settings.challenger_uri:
        options = settings.load_options()
        signal = settings.reload_signal_file
        challenger = ModelHolder(
            settings.challenger_uri,
            loader=lambda uri: load_model(uri, options),
            signal_file=f"{signal}.challenger" if signal else None,
            role="challenger",
        )
        if settings.split_fraction is None:
            shadow = Shadow(
                challenger,
                metrics,
                settings.decision_threshold,
                settings.shadow_queue_size,
                max_rows=settings.max_rows,
            )
    watch = Monitoring(settings, metrics, holder)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        metrics.tally.own()  # the loop's requests tally their metrics; /metrics flushes them
        tasks: list[asyncio.Task[None]] = []
        if holder.current is None:
            if settings.model_load_retry:
                tasks.append(
                    asyncio.create_task(holder.load_until_ready(settings.model_retry_max_seconds))
                )
            else:
                # Fails start-up with one line naming the URI and the cause.
                await holder.reload(force=True)
        else:
            _record_swap(metrics, holder.current, None)
        admission.start()
        if settings.model_poll_seconds > 0:
            tasks.append(asyncio.create_task(holder.poll(settings.model_poll_seconds)))
        if holder.signal is not None:
            tasks.append(asyncio.create_task(holder.follow_reloads()))
        if challenger is not None:
            # Always in the background, with retries: the champion never waits for it.
            tasks.append(
                asyncio.create_task(challenger.load_until_ready(settings.model_retry_max_seconds))
            )
            if settings.model_poll_seconds > 0:
                tasks.append(asyncio.create_task(challenger.poll(settings.model_poll_seconds)))
            if challenger.signal is not None:
                tasks.append(asyncio.create_task(challenger.follow_reloads()))
        if shadow is not None:
            tasks.append(asyncio.create_task(shadow.run()))
        tasks.append(asyncio.create_task(watch.run()))
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            metrics.tally.flush()  # the last answers' figures (several workers: due in 2 ms)
            mark_worker_dead(settings.prometheus_multiproc_dir)

    meta: dict[str, Any] = {
        "title": "Santander transaction scoring",
        "summary": "P(target = 1) for Santander rows from an MLflow-registered LightGBM model",
        "version": _service_version(),
        "lifespan": lifespan,
        # FastAPI's own OpenTelemetry hooks are off: /metrics and the access log cover the same,
        # and each request would otherwise ask whether a tracer is configured (``ServerEntry``
        # relies on it: it skips FastAPI's entry, which only differs when they are on).
        "telemetry": {"tracing": False, "metrics": False, "logs": False},
    }
    if settings.enable_docs:
        # /docs and /redoc with their scripts served from here, not a CDN: they work offline.
        app = FastAPIOffline(docs_url="/docs", redoc_url="/redoc", **meta)
    else:
        app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None, **meta)
    app.state.settings = settings
    app.state.holder = holder
    app.state.challenger = challenger
    app.state.shadow = shadow
    app.state.metrics = metrics
    app.state.in_flight = InFlight(settings.max_in_flight, metrics)
    app.state.api_keys = settings.api_key_set()
    app.state.admission = admission
    app.state.monitoring = watch
    app.state.plane = Plane(
        settings=settings,
        metrics=metrics,
        holder=holder,
        challenger=challenger,
        shadow=shadow,
        in_flight=app.state.in_flight,
        admission=admission,
        api_keys=app.state.api_keys,
    )
    app.include_router(invocations.router)
    app.include_router(explain.router)
    app.include_router(health.router)
    app.include_router(model.router)
    app.include_router(v2.router)
    app.include_router(monitoring.router)
    if settings.admin_token is not None and settings.admin_token.get_secret_value():
        app.include_router(admin.router)

    @app.get(
        "/metrics",
        tags=["operations"],
        include_in_schema=True,
        response_class=Response,
        responses={200: {"content": {"text/plain": {}}}},
    )
    async def prometheus_metrics() -> Response:
        """Prometheus text format: requests, latency, rows, probabilities, the model, loads."""
        metrics.tally.flush()  # on the loop, the tally's only writer
        if metrics.multiprocess:  # every worker's answers so far written to the files
            await asyncio.sleep(2 * FLUSH_SECONDS)
        content, media = await run_in_threadpool(metrics.render)
        return Response(content, media_type=media)

    _front_door(
        app,
        metrics,
        routes={route.path: route for r in (invocations, explain) for route in r.router.routes},
        cors_origins=settings.cors_origins,
    )
    _install_error_handlers(app)
    _install_openapi(app, holder, bearer=app.state.api_keys is not None)
    return app


def serve_app() -> ServerEntry:
    """The factory uvicorn runs in each worker: logging as configured, then the app."""
    settings = get_settings()
    import_lightgbm_for_serving(settings.allow_untrusted_models)
    configure_logging(settings.log_format, settings.log_level)
    # Fewer arenas: each thread that mallocs may otherwise get its own, kept after a burst.
    limit_arenas(settings.malloc_arena_max)
    arrow_allocates_with_malloc()
    app = create_app(settings)
    guard_connections(settings, app.state.metrics)
    # Each loaded model (champion or challenger) leaves the heap frozen (settle_heap).
    for holder in (app.state.holder, app.state.challenger):
        if holder is not None:
            holder.on_swap.append(lambda new, old: settle_heap())
    return ServerEntry(app)


class ServerEntry:
    """What the server runs: ``app``, but an HTTP request goes straight to its middleware
    stack (the request context first: ``_front_door``), where FastAPI's and Starlette's own
    entries send it when FastAPI's telemetry is off (``create_app`` turns it off), without
    their three Python calls per request. The lifespan, and a request before the stack is
    built, go through ``app`` itself."""

    __slots__ = ("app",)

    def __init__(self, app: FastAPI) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        app = self.app
        stack = app.middleware_stack
        if scope["type"] != "http" or stack is None or app.root_path:
            await app(scope, receive, send)
            return
        scope["app"] = app
        await stack(scope, receive, send)


def _front_door(
    app: FastAPI, metrics: Metrics, routes: dict[str, Any], cors_origins: list[str]
) -> None:
    """Put the request context (request id, access line, metrics, the 500 answer), CORS (if
    configured) and the hot path in front of FastAPI's own stack, outermost first.

    FastAPI's stack (its error and telemetry layers, its body limit, the user middleware, the
    exception handlers) costs a one-row request several layers of calls before the hot path
    would be reached; in front of it, ``POST /invocations`` and plain ``POST /explain`` skip
    them all. Every other request goes on through that stack as before. An unexpected error
    on the hot path gets the same JSON 500 as anywhere (the app's ``Exception`` handler), and
    the server still sees the exception (it logs it), as with FastAPI's own error layer.
    """
    build_stack = app.build_middleware_stack

    def build_middleware_stack() -> Any:
        stack = build_stack()
        hot = HotPath(stack, routes=routes, plane=app.state.plane)
        handler = app.exception_handlers[Exception]

        async def on_error(scope: Any, exc: Exception) -> Any:
            answer = handler(Request(scope), exc)
            return await answer if inspect.isawaitable(answer) else answer

        if cors_origins:  # CORS sees every answer: the hot path a layer inside it
            door = CORSMiddleware(
                hot, allow_origins=cors_origins, allow_methods=["GET", "POST"], allow_headers=["*"]
            )
            return RequestContext(door, metrics=metrics, on_error=on_error)
        # The hot path's answers sent by the request context itself; the rest to FastAPI's.
        return RequestContext(stack, metrics=metrics, on_error=on_error, hot=hot)

    app.build_middleware_stack = build_middleware_stack  # type: ignore[method-assign]


def _labels(model: LoadedModel) -> tuple[str, str, str, str]:
    return (model.uri, model.registered_name or "", model.version or "", model.run_id or "")


def settle_heap() -> None:
    """Collect once, then freeze what is left (the imported libraries, the model) out of the
    garbage collector's sight (``gc.freeze``).

    A worker holds some 350,000 long-lived objects once MLflow and the model are loaded; each
    full collection walks them all, a pause of 100-300 ms that lands on whichever request is
    running (the p99 and the worst latency of ``make bench``). Frozen objects are still freed
    when their last reference goes; only cycles among them wait for the next swap, which
    unfreezes and collects again.
    """
    gc.unfreeze()
    gc.collect()
    gc.freeze()


def _record_swap(metrics: Metrics, new: LoadedModel, old: LoadedModel | None) -> None:
    metrics.model_loaded(_labels(new), new.load_seconds, _labels(old) if old else None)


def _service_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("santander-serving")
    except PackageNotFoundError:
        return "0"


def _install_error_handlers(app: FastAPI) -> None:
    async def service_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, ServiceError)
        return error_response(request.method, exc)

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


OPENAPI_TAGS = [
    {"name": "scoring", "description": "Score rows: P(target = 1) for each"},
    {"name": "health", "description": "Liveness, readiness, versions"},
    {"name": "model", "description": "What is being served"},
    {"name": "v2", "description": "The Open Inference Protocol (KServe V2, REST)"},
    {"name": "operations", "description": "Metrics and administration"},
]


def _describe(model: LoadedModel | None, features: tuple[str, ...]) -> str:
    """The page's description: what is served, and how to send rows, with a worked example."""
    if model is None:
        served = "No model is loaded yet (see `/health/ready`)."
    else:
        name = (
            f"registered model **{model.registered_name}** version **{model.version}**"
            + (f" (alias `@{model.alias}`)" if model.alias else "")
            if model.registered_name
            else f"model `{model.uri}`"
        )
        served = f"Serving {name}, run `{model.run_id or '-'}`, from `{model.uri}`."
    head = ",".join(features[:3])
    return f"""{served}

`POST /invocations` takes {len(features)} features `{features[0]}`..`{features[-1]}` and answers
`{{"predictions": [...]}}`: P(target = 1) per row, in input order. Send one of:

| Content-Type | body |
| --- | --- |
| `application/json` | pandas `to_json(orient="split")`, or MLflow's `dataframe_split`, \
`dataframe_records`, `instances`, `inputs` (examples in the request body below) |
| `text/csv` | a header row, then rows: `{head},...` |
| `application/vnd.apache.parquet` | a Parquet file, e.g. `df.to_parquet()` |
| `application/vnd.apache.arrow.stream` | an Arrow IPC stream |

`null` and `NaN` are missing values. Mistakes get a 4xx JSON body `{{"error_code", "message"}}`
naming the column or row at fault. From Python:

```python
import requests
requests.post(URL + "/invocations", data=df.to_json(orient="split"),
              headers={{"Content-Type": "application/json"}}).json()
```
"""


def _install_openapi(app: FastAPI, holder: ModelHolder, bearer: bool) -> None:
    """Publish the contract of the model being served: its request models under
    components/schemas, its features in the examples, its name in the description.

    The scoring routes declare the API-key bearer scheme (so /docs' Authorize button works) only
    when ``bearer``, i.e. API keys are on; otherwise the schema says, truly, that they are open.
    """
    cache: dict[tuple[object, ...], dict[str, Any]] = {}

    def openapi() -> dict[str, Any]:
        model = holder.current
        features = tuple(model.predictor.features) if model else SANTANDER_FEATURES
        key = (features, model.uri if model else None, model.fingerprint if model else None)
        if key in cache:
            return cache[key]
        schema = get_openapi(
            title=app.title,
            version=app.version,
            summary=app.summary,
            description=_describe(model, features),
            routes=app.routes,
            tags=OPENAPI_TAGS,
        )
        post = schema.get("paths", {}).get("/invocations", {}).get("post")
        if post is not None:
            post["requestBody"] = invocations_openapi(features)["requestBody"]
        if post is not None and "/explain" in schema["paths"]:  # the same bodies as /invocations
            schema["paths"]["/explain"]["post"]["requestBody"] = post["requestBody"]
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        components.update(contract_for(features).components())
        if not bearer:
            schema["components"].pop("securitySchemes", None)
            for path in schema.get("paths", {}).values():
                for operation in path.values():
                    if operation.pop("security", None) is not None:
                        operation.get("responses", {}).pop("401", None)
        cache.clear()
        cache[key] = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
