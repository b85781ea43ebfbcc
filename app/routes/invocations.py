"""POST /invocations: parse, validate, score."""

from __future__ import annotations

import asyncio

import numpy as np
import orjson
from fastapi import APIRouter, Request, Response
from starlette.concurrency import run_in_threadpool

from app.config import Settings
from app.errors import BodyTimeout, Overloaded, PayloadTooLarge, ScoringTimeout
from app.model_holder import ModelHolder
from app.observability import Metrics
from app.payloads import check_media_type, parse_body
from app.predictor import LoadedModel
from app.schemas import ErrorBody, Predictions, invocations_openapi

router = APIRouter()


async def read_body(request: Request, limit: int) -> bytes:
    """The whole body, refusing (413) as soon as it is known to exceed ``limit`` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"the body is {int(declared)} bytes; the limit is {limit}")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"the body is over the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def score(
    body: bytes,
    content_type: str | None,
    model: LoadedModel,
    settings: Settings,
    metrics: Metrics,
) -> tuple[bytes, int]:
    """Parse, validate and score one body: the JSON answer as bytes, and the row count."""
    predictor = model.predictor
    x = parse_body(body, content_type, predictor.features, settings.max_rows)
    predictions = np.asarray(predictor.predict(x, settings.threads_for(len(x))), dtype=np.float64)
    metrics.observe_predictions(predictions)
    content = orjson.dumps({"predictions": predictions}, option=orjson.OPT_SERIALIZE_NUMPY)
    return content, len(x)


class InFlight:
    """Counts scoring work in progress, including work whose client was already answered 504."""

    def __init__(self, limit: int, metrics: Metrics) -> None:
        self.limit = limit
        self.count = 0
        self.metrics = metrics

    def enter(self) -> None:
        if self.count >= self.limit:
            self.metrics.shed.inc()
            raise Overloaded(f"{self.count} requests in progress; retry shortly")
        self.count += 1
        self.metrics.in_progress.inc()

    def leave(self, *_: object) -> None:
        self.count -= 1
        self.metrics.in_progress.dec()


@router.post(
    "/invocations",
    response_model=Predictions,
    responses={
        400: {"model": ErrorBody, "description": "Malformed body"},
        408: {"model": ErrorBody, "description": "The body took too long to arrive"},
        413: {"model": ErrorBody, "description": "Body or row count over the limit"},
        415: {"model": ErrorBody, "description": "Unsupported Content-Type"},
        422: {"model": ErrorBody, "description": "Columns or values not as the model needs"},
        503: {"model": ErrorBody, "description": "No model loaded yet, or overloaded"},
        504: {"model": ErrorBody, "description": "Scoring took longer than the time limit"},
    },
    openapi_extra=invocations_openapi(),
    summary="Score rows: P(target = 1) for each",
)
async def invocations(request: Request) -> Response:
    """Score rows: P(target = 1) for each, in input order."""
    app_state = request.app.state
    settings: Settings = app_state.settings
    holder: ModelHolder = app_state.holder
    in_flight: InFlight = app_state.in_flight
    content_type = request.headers.get("content-type")
    check_media_type(content_type)
    model = holder.require()
    in_flight.enter()
    try:
        # asyncio.timeout, not wait_for: no extra task per request on the hot path.
        async with asyncio.timeout(settings.body_timeout_seconds):
            body = await read_body(request, settings.max_body_bytes)
    except TimeoutError:
        in_flight.leave()
        raise BodyTimeout(
            f"the body did not arrive within {settings.body_timeout_seconds:g}s"
        ) from None
    except BaseException:
        in_flight.leave()
        raise
    request.state.model_version = model.version
    if len(body) <= settings.inline_body_bytes:
        # Small bodies cost less than a thread hop: score them right here.
        try:
            content, rows = score(body, content_type, model, settings, app_state.metrics)
        finally:
            in_flight.leave()
    else:
        work = asyncio.ensure_future(
            run_in_threadpool(score, body, content_type, model, settings, app_state.metrics)
        )
        # The slot is given back when the work ends, not when the client gets its 504.
        work.add_done_callback(in_flight.leave)
        try:
            content, rows = await asyncio.wait_for(
                asyncio.shield(work), settings.request_timeout_seconds
            )
        except TimeoutError:
            raise ScoringTimeout(
                f"scoring took longer than {settings.request_timeout_seconds:g}s"
            ) from None
    request.state.rows = rows
    return Response(content, media_type="application/json")
