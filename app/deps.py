"""What routes need, as FastAPI dependencies: ``Annotated[..., Depends(...)]`` aliases."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from app.admission import InFlight
from app.config import Settings
from app.model_holder import ModelHolder
from app.monitoring import Monitoring
from app.observability import Metrics


def _settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def _holder(request: Request) -> ModelHolder:
    holder: ModelHolder = request.app.state.holder
    return holder


def _metrics(request: Request) -> Metrics:
    metrics: Metrics = request.app.state.metrics
    return metrics


def _in_flight(request: Request) -> InFlight:
    in_flight: InFlight = request.app.state.in_flight
    return in_flight


def _monitoring(request: Request) -> Monitoring:
    monitoring: Monitoring = request.app.state.monitoring
    return monitoring


SettingsDep = Annotated[Settings, Depends(_settings)]
HolderDep = Annotated[ModelHolder, Depends(_holder)]
MetricsDep = Annotated[Metrics, Depends(_metrics)]
InFlightDep = Annotated[InFlight, Depends(_in_flight)]
MonitoringDep = Annotated[Monitoring, Depends(_monitoring)]
