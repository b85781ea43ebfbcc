"""What is being served."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from app.deps import ChallengerDep, HolderDep, ScoringAuth, SettingsDep
from app.schemas import ErrorBody, ModelCard

# Guarded like scoring when API keys are on: the run's params, metrics and features help
# whoever probes the model, and the callers who need them are the scoring clients.
router = APIRouter(tags=["model"], dependencies=[ScoringAuth])


@router.get(
    "/model",
    response_model=ModelCard,
    responses={401: {"model": ErrorBody}, 503: {"model": ErrorBody}},
)
async def model_card(
    holder: HolderDep, challenger: ChallengerDep, settings: SettingsDep
) -> dict[str, Any]:
    """Model URI, run, registered name/version/alias, flavor, loading path, metrics, params,
    and the challenger beside it when there is one."""
    card = {**holder.require().describe(), **holder.status()}
    if challenger is not None:
        card["challenger"] = {
            "mode": settings.challenger_mode,
            "model_uri": challenger.uri,
            "loaded": challenger.current is not None,
            "reason": None if challenger.current is not None else challenger.not_ready_reason(),
            **(challenger.current.describe() if challenger.current is not None else {}),
            **challenger.status(),
        }
    return card
