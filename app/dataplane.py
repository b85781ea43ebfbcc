"""The data plane: read a body, decode it by the contract, score it. Shared by the scoring routes.

Routes stay thin (HTTP in, HTTP out); this module knows the limits, the threads and the timeouts.
"""

from __future__ import annotations

import asyncio

import numpy as np
import orjson
from fastapi import Request
from starlette.concurrency import run_in_threadpool

from app.admission import InFlight
from app.config import Settings
from app.observability import Metrics
from scoring.contract.decode import parse_body
from scoring.errors import BodyTimeout, PayloadTooLarge, ScoringTimeout
from scoring.loading import LoadedModel


async def read_body(request: Request, settings: Settings) -> bytes:
    """The whole body within ``body_timeout_seconds`` (else 408), refusing (413) as soon as it is
    known to exceed ``max_body_bytes``."""
    limit = settings.max_body_bytes
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"the body is {int(declared)} bytes; the limit is {limit}")
    chunks: list[bytes] = []
    size = 0
    try:
        # asyncio.timeout, not wait_for: no extra task per request on the hot path.
        async with asyncio.timeout(settings.body_timeout_seconds):
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise PayloadTooLarge(f"the body is over the limit of {limit} bytes")
                chunks.append(chunk)
    except TimeoutError:
        raise BodyTimeout(
            f"the body did not arrive within {settings.body_timeout_seconds:g}s"
        ) from None
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
    metrics.observe_scored(x, predictions, model)
    content = orjson.dumps({"predictions": predictions}, option=orjson.OPT_SERIALIZE_NUMPY)
    return content, len(x)


async def score_admitted(
    body: bytes,
    content_type: str | None,
    model: LoadedModel,
    settings: Settings,
    metrics: Metrics,
    *,
    in_flight: InFlight,
) -> tuple[bytes, int]:
    """``score`` within a scoring slot: small bodies on the loop, big ones in a thread, under
    ``request_timeout_seconds`` (504; the slot stays taken until the work really ends)."""
    with in_flight.slot() as slot:
        if len(body) <= settings.inline_body_bytes:
            # Small bodies cost less than a thread hop: score them right here.
            return score(body, content_type, model, settings, metrics)
        work = asyncio.ensure_future(
            run_in_threadpool(score, body, content_type, model, settings, metrics)
        )
        slot.release_when_done(work)
        try:
            return await asyncio.wait_for(asyncio.shield(work), settings.request_timeout_seconds)
        except TimeoutError:
            raise ScoringTimeout(
                f"scoring took longer than {settings.request_timeout_seconds:g}s"
            ) from None
