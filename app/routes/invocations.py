"""POST /invocations: MLflow's scoring protocol (and pandas split, CSV, Parquet, Arrow)."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from app.challenger import routed_to_challenger
from app.dataplane import handle
from app.deps import (
    AdmissionDep,
    ChallengerDep,
    HolderDep,
    InFlightDep,
    MetricsDep,
    ScoringAuth,
    SettingsDep,
)
from app.schemas import ErrorBody, Predictions
from scoring.contract.decode import check_media_type
from scoring.contract.models import invocations_openapi

router = APIRouter(tags=["scoring"], dependencies=[ScoringAuth])


@router.post(
    "/invocations",
    response_model=Predictions,
    responses={
        400: {"model": ErrorBody, "description": "Malformed body"},
        401: {"model": ErrorBody, "description": "API keys are on and none valid was given"},
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
    challenger: ChallengerDep,
    metrics: MetricsDep,
    in_flight: InFlightDep,
    admission: AdmissionDep,
) -> Response:
    """Score rows: P(target = 1) for each, in input order."""
    check_media_type(request.headers.get("content-type"))
    role, answering = "champion", holder
    fraction = settings.split_fraction
    if (
        fraction is not None
        and challenger is not None
        and challenger.current is not None
        and routed_to_challenger(fraction, request.headers.get("x-routing-key"))
    ):
        role, answering = "challenger", challenger
    model = answering.require()
    request.state.model_version = model.version
    request.state.model = model.label
    request.state.model_role = role
    scored = await handle(
        request,
        model,
        settings=settings,
        metrics=metrics,
        in_flight=in_flight,
        admission=admission,
        role=role,
    )
    request.state.rows = scored.rows
    shadow = request.app.state.shadow
    if shadow is not None:
        shadow.submit(scored.x, scored.predictions, model)
    # Which model answered: a caller (or a test) can match every answer to its version.
    headers = {
        "X-Model-Version": model.label.encode("ascii", "replace").decode(),
        "X-Model-Role": role,
    }
    return Response(scored.content, media_type="application/json", headers=headers)
