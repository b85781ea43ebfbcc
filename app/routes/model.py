"""What is being served."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from app.deps import HolderDep, ScoringAuth
from app.schemas import ErrorBody, ModelCard

# Guarded like scoring when API keys are on: the run's params, metrics and features help
# whoever probes the model, and the callers who need them are the scoring clients.
router = APIRouter(tags=["model"], dependencies=[ScoringAuth])


@router.get(
    "/model",
    response_model=ModelCard,
    responses={401: {"model": ErrorBody}, 503: {"model": ErrorBody}},
)
def model_card(holder: HolderDep) -> dict[str, Any]:
    """Model URI, run, registered name/version/alias, flavor, loading path, metrics, params."""
    return {**holder.require().describe(), **holder.status()}
