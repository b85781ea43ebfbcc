"""POST /invocations: parse, validate, score."""

from __future__ import annotations

import numpy as np
import orjson
from fastapi import APIRouter, Request, Response
from starlette.concurrency import run_in_threadpool

from app.config import Settings
from app.errors import PayloadTooLarge, UnsupportedMediaType
from app.model_holder import ModelHolder
from app.payloads import SUPPORTED, media_type, parse_body
from app.predictor import LoadedModel
from app.schemas import ErrorBody, Predictions, invocations_openapi

router = APIRouter()

_ACCEPTED = {
    "application/json",
    "text/json",
    "text/csv",
    "application/csv",
    "application/vnd.apache.parquet",
    "application/x-parquet",
    "application/vnd.apache.arrow.stream",
    "application/vnd.apache.arrow.file",
}


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


def score(body: bytes, content_type: str | None, model: LoadedModel, settings: Settings) -> bytes:
    """Parse, validate and score one body; the JSON answer as bytes."""
    predictor = model.predictor
    x = parse_body(body, content_type, predictor.features, settings.max_rows)
    predictions = predictor.predict(x, settings.threads_for(len(x)))
    return orjson.dumps(
        {"predictions": np.asarray(predictions, dtype=np.float64)},
        option=orjson.OPT_SERIALIZE_NUMPY,
    )


@router.post(
    "/invocations",
    response_model=Predictions,
    responses={
        400: {"model": ErrorBody, "description": "Malformed body"},
        413: {"model": ErrorBody, "description": "Body or row count over the limit"},
        415: {"model": ErrorBody, "description": "Unsupported Content-Type"},
        422: {"model": ErrorBody, "description": "Columns or values not as the model needs"},
        503: {"model": ErrorBody, "description": "No model loaded yet"},
    },
    openapi_extra=invocations_openapi(),
    summary="Score rows: P(target = 1) for each",
)
async def invocations(request: Request) -> Response:
    """Score rows: P(target = 1) for each, in input order."""
    settings: Settings = request.app.state.settings
    holder: ModelHolder = request.app.state.holder
    content_type = request.headers.get("content-type")
    kind = media_type(content_type)
    if kind not in _ACCEPTED and not kind.endswith("+json"):
        if not kind:
            raise UnsupportedMediaType(f"no Content-Type given; send one of: {SUPPORTED}")
        raise UnsupportedMediaType(f"Content-Type {kind[:64]!r} is not supported; use {SUPPORTED}")
    model = holder.require()
    body = await read_body(request, settings.max_body_bytes)
    if len(body) <= settings.inline_body_bytes:
        # Small bodies cost less than a thread hop: score them right here.
        content = score(body, content_type, model, settings)
    else:
        content = await run_in_threadpool(score, body, content_type, model, settings)
    return Response(content, media_type="application/json")
