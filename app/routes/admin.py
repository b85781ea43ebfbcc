"""Admin routes, mounted only when ADMIN_TOKEN is set: reload the model without downtime."""

from __future__ import annotations

import hmac
from typing import Any

from fastapi import APIRouter, Depends, Request

from app.deps import ChallengerDep, HolderDep, SettingsDep
from app.schemas import ErrorBody
from scoring.errors import ModelLoadError, ReloadFailed, Unauthorized


async def _authorize(request: Request, settings: SettingsDep) -> None:
    token = settings.admin_token
    given = request.headers.get("authorization", "")
    scheme, _, credential = given.partition(" ")
    expected = token.get_secret_value().encode() if token else b""
    # Constant-time comparison; the token is never logged or echoed.
    if scheme.lower() != "bearer" or not hmac.compare_digest(credential.encode(), expected):
        raise Unauthorized("a valid 'Authorization: Bearer <ADMIN_TOKEN>' header is required")


router = APIRouter(prefix="/admin", tags=["operations"], dependencies=[Depends(_authorize)])


@router.post(
    "/reload",
    responses={401: {"model": ErrorBody}, 502: {"model": ErrorBody}},
    summary="Re-resolve MODEL_URI and swap in the new model",
)
async def reload(
    holder: HolderDep, challenger: ChallengerDep, force: bool = False
) -> dict[str, Any]:
    """Re-resolve MODEL_URI (and CHALLENGER_URI); load and swap if it moved (or ``force``).

    "reloaded" means another model serves after this call than before it, whichever of this
    call, polling or a concurrent reload did the swap.
    """
    served = holder.current
    # Tell the other workers first, so that they load side by side with this one.
    await holder.announce_reload()
    answer: dict[str, Any] = {}
    if challenger is not None:
        # The challenger's outcome is reported, never a reason to fail the champion's reload.
        await challenger.announce_reload()
        before = challenger.current
        try:
            moved = await challenger.reload(force) or challenger.current is not before
            answer["challenger"] = {
                "status": "reloaded" if moved else "unchanged",
                "version": challenger.current.version if challenger.current else None,
            }
        except ModelLoadError as exc:
            answer["challenger"] = {"status": "failed", "error": str(exc)}
    try:
        swapped = await holder.reload(force) or holder.current is not served
    except ModelLoadError as exc:
        raise ReloadFailed(f"{exc}; still serving the previous model") from None
    model = holder.require()
    return {"status": "reloaded" if swapped else "unchanged", "model": model.describe(), **answer}
