"""What is being served."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from app.deps import ChallengerDep, HolderDep, SettingsDep
from app.schemas import ErrorBody, ModelCard

router = APIRouter(tags=["model"])


@router.get("/model", response_model=ModelCard, responses={503: {"model": ErrorBody}})
def model_card(
    holder: HolderDep, challenger: ChallengerDep, settings: SettingsDep
) -> dict[str, Any]:
    """Model URI, run, registered name/version/alias, flavor, features, metrics and params."""
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
