"""What is being served."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from app.deps import HolderDep
from app.schemas import ErrorBody, ModelCard

router = APIRouter(tags=["model"])


@router.get("/model", response_model=ModelCard, responses={503: {"model": ErrorBody}})
def model_card(holder: HolderDep) -> dict[str, Any]:
    """Model URI, run, registered name/version/alias, flavor, features, metrics and params."""
    return {**holder.require().describe(), **holder.status()}
