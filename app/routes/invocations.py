"""POST /invocations: MLflow's scoring protocol (and pandas split, CSV, Parquet, Arrow)."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from app.dataplane import read_body, reserve_decoded, reserve_memory, score_admitted
from app.deps import AdmissionDep, HolderDep, InFlightDep, MetricsDep, SettingsDep
from app.schemas import ErrorBody, Predictions
from scoring.contract.decode import check_media_type
from scoring.contract.models import invocations_openapi

router = APIRouter(tags=["scoring"])


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
async def invocations(
    request: Request,
    *,
    settings: SettingsDep,
    holder: HolderDep,
    metrics: MetricsDep,
    in_flight: InFlightDep,
    admission: AdmissionDep,
) -> Response:
    """Score rows: P(target = 1) for each, in input order."""
    content_type = request.headers.get("content-type")
    kind = check_media_type(content_type)
    model = holder.require()
    # Bodies arriving, then memory, then (once the body is in) a scoring slot.
    with admission.body_reads.enter():
        reservation = await reserve_memory(request, kind, settings, admission.memory)
        try:
            body = await read_body(request, settings, metrics, reservation)
            reserve_decoded(body, kind, reservation)
        except BaseException:
            reservation.release()
            raise
    request.state.model_version = model.version
    try:
        content, rows = await score_admitted(
            body,
            content_type,
            model,
            settings,
            metrics,
            in_flight=in_flight,
            reservation=reservation,
            limiter=admission.limiter,
        )
    finally:
        del body
        if not reservation.handed_over:
            reservation.release()
    request.state.rows = rows
    return Response(content, media_type="application/json")
