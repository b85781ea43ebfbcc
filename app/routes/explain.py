"""POST /explain: each prediction with its exact per-feature contributions, and reason codes.

The same bodies, content types, checks, limits and errors as ``/invocations`` (``app.dataplane``);
the decomposition is the core's (``scoring.explain``). Requests with an empty or plain ``top=K``
query are answered by ``app.hotpath.HotPath`` before they reach FastAPI, with the same
``explanation``; this route answers the others and publishes the operation.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request, Response

from app.deps import ScoringAuth
from app.hotpath import MAX_TOP, explanation, plane_of
from app.schemas import SCORING_ERRORS, ErrorBody, Explanation
from scoring.contract.models import invocations_openapi

router = APIRouter(tags=["scoring"], dependencies=[ScoringAuth])

Top = Annotated[
    int | None,
    Query(
        ge=1,
        le=MAX_TOP,
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
async def explain(request: Request, top: Top = None) -> Response:
    """Each prediction with its exact contributions in log-odds (and `top` reasons per row)."""
    scored = await explanation(request, plane_of(request), top)
    return Response(scored.content, media_type="application/json")
