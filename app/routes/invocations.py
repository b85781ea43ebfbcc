"""POST /invocations: MLflow's scoring protocol (and pandas split, CSV, Parquet, Arrow)."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from app.challenger import routed_to_challenger
from app.dataplane import answered_by, handle
from app.deps import (
    AdmissionDep,
    ChallengerDep,
    HolderDep,
    InFlightDep,
    MetricsDep,
    ScoringAuth,
    SettingsDep,
)
from app.schemas import SCORING_ERRORS, Predictions
from scoring.contract.decode import check_media_type
from scoring.contract.models import invocations_openapi

router = APIRouter(tags=["scoring"], dependencies=[ScoringAuth])


@router.post(
    "/invocations",
    response_model=Predictions,
    responses=SCORING_ERRORS,
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
    return Response(scored.content, media_type="application/json", headers=answered_by(model, role))
