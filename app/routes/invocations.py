"""POST /invocations: MLflow's scoring protocol (and pandas split, CSV, Parquet, Arrow).

Requests are answered by ``app.hotpath.HotPath`` before they reach FastAPI; this route runs the
same ``invocation`` and publishes the operation in ``/openapi.json`` and ``/docs``.
"""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from app.dataplane import answered_by
from app.deps import ScoringAuth
from app.hotpath import invocation, plane_of
from app.schemas import SCORING_ERRORS, Predictions
from scoring.contract.models import invocations_openapi

router = APIRouter(tags=["scoring"], dependencies=[ScoringAuth])


@router.post(
    "/invocations",
    response_model=Predictions,
    responses=SCORING_ERRORS,
    openapi_extra=invocations_openapi(),
    summary="Score rows: P(target = 1) for each",
)
async def invocations(request: Request) -> Response:
    """Score rows: P(target = 1) for each, in input order."""
    scored, model, role = await invocation(request, plane_of(request))
    return Response(scored.content, media_type="application/json", headers=answered_by(model, role))
