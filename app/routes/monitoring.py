"""GET /monitoring: drift of the inputs and predictions against the training data, the log."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from app.deps import MonitoringDep

router = APIRouter(tags=["operations"])


@router.get("/monitoring", summary="Drift against the training data, and the inference log")
def monitoring(watch: MonitoringDep) -> dict[str, Any]:
    """Drift (PSI per feature and of the predictions, thresholds, status) and the log's state."""
    return watch.report()
