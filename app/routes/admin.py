"""Admin routes, mounted only when ADMIN_TOKEN is set: reload the model without downtime."""

from __future__ import annotations

import hmac
from typing import Any

from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool

from app.errors import ModelLoadError, ReloadFailed, Unauthorized
from app.model_holder import ModelHolder
from app.schemas import ErrorBody

router = APIRouter(prefix="/admin")


def _authorize(request: Request) -> None:
    token = request.app.state.settings.admin_token
    given = request.headers.get("authorization", "")
    scheme, _, credential = given.partition(" ")
    expected = token.get_secret_value().encode() if token else b""
    # Constant-time comparison; the token is never logged or echoed.
    if scheme.lower() != "bearer" or not hmac.compare_digest(credential.encode(), expected):
        raise Unauthorized("a valid 'Authorization: Bearer <ADMIN_TOKEN>' header is required")


@router.post(
    "/reload",
    responses={401: {"model": ErrorBody}, 502: {"model": ErrorBody}},
    summary="Re-resolve MODEL_URI and swap in the new model",
)
async def reload(request: Request, force: bool = False) -> dict[str, Any]:
    """Re-resolve MODEL_URI; load and swap atomically if it moved (or ``force``)."""
    _authorize(request)
    holder: ModelHolder = request.app.state.holder
    try:
        swapped = await run_in_threadpool(holder.reload, force)
    except ModelLoadError as exc:
        raise ReloadFailed(f"{exc}; still serving the previous model") from None
    holder.announce_reload()
    model = holder.require()
    return {"status": "reloaded" if swapped else "unchanged", "model": model.describe()}
