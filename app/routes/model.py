"""What is being served."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from app.model_holder import ModelHolder
from app.schemas import ErrorBody, ModelCard

router = APIRouter()


@router.get("/model", response_model=ModelCard, responses={503: {"model": ErrorBody}})
def model_card(request: Request) -> dict[str, Any]:
    """Model URI, run, registered name/version/alias, flavor, features, metrics and params."""
    holder: ModelHolder = request.app.state.holder
    return {**holder.require().describe(), **holder.status()}
