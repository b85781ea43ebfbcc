"""POST /explain: each prediction with its exact per-feature contributions, and reason codes.

The same bodies, content types, checks, limits and errors as ``/invocations`` (``app.dataplane``);
the decomposition is the core's (``scoring.explain``).
"""

from __future__ import annotations

import functools
from typing import Annotated

from fastapi import APIRouter, Query, Request, Response

from app.dataplane import CONTRIBUTION_COST, explain_body, handle
from app.deps import AdmissionDep, HolderDep, InFlightDep, MetricsDep, ScoringAuth, SettingsDep
from app.schemas import SCORING_ERRORS, ErrorBody, Explanation
from scoring.contract.decode import check_media_type
from scoring.contract.models import invocations_openapi
from scoring.explain import contributions_of

router = APIRouter(tags=["scoring"], dependencies=[ScoringAuth])

Top = Annotated[
    int | None,
    Query(
        ge=1,
        le=10_000,
        description="add `reasons`: per row the K features with the largest |contribution|",
    ),
]


@router.post(
    "/explain",
    response_model=Explanation,
    response_model_exclude_none=True,
    responses={
        **SCORING_ERRORS,
        422: {
            "model": ErrorBody,
            "description": "Columns or values not as the model needs, or a served model that "
            "cannot explain (EXPLANATIONS_UNAVAILABLE: not a LightGBM model)",
        },
    },
    openapi_extra=invocations_openapi(),
    summary="Explain rows: each P(target = 1) with what every feature added to it",
)
async def explain(
    request: Request,
    *,
    settings: SettingsDep,
    holder: HolderDep,
    metrics: MetricsDep,
    in_flight: InFlightDep,
    admission: AdmissionDep,
    top: Top = None,
) -> Response:
    """Each prediction with its exact contributions in log-odds (and `top` reasons per row)."""
    check_media_type(request.headers.get("content-type"))
    model = holder.require()
    contributions_of(model.predictor)  # a model that cannot explain: 422 before reading the body
    request.state.model_version = model.version
    scored = await handle(
        request,
        model,
        settings=settings,
        metrics=metrics,
        in_flight=in_flight,
        admission=admission,
        work=functools.partial(explain_body, top=top),
        # One row on the loop (a few ms); more in a thread, not to hold up other requests.
        inline_bytes=settings.inline_body_bytes // CONTRIBUTION_COST,
    )
    request.state.rows = scored.rows
    return Response(scored.content, media_type="application/json")
