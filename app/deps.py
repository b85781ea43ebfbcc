"""What routes need, as FastAPI dependencies: ``Annotated[..., Depends(...)]`` aliases.

``ScoringAuth`` guards the scoring routes: a router that scores declares
``APIRouter(dependencies=[ScoringAuth])`` and needs ``Authorization: Bearer <API key>`` whenever
API keys are configured (``API_KEYS``, ``API_KEYS_FILE``); without keys it lets every request in.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from app.admission import InFlight
from app.config import Settings
from app.hotpath import check_api_key, plane_of
from app.limits import Admission
from app.model_holder import ModelHolder
from app.monitoring import Monitoring
from app.observability import Metrics


async def _settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


async def _holder(request: Request) -> ModelHolder:
    holder: ModelHolder = request.app.state.holder
    return holder


async def _challenger(request: Request) -> ModelHolder | None:
    challenger: ModelHolder | None = request.app.state.challenger
    return challenger


async def _metrics(request: Request) -> Metrics:
    metrics: Metrics = request.app.state.metrics
    return metrics


async def _admission(request: Request) -> Admission:
    admission: Admission = request.app.state.admission
    return admission


async def _in_flight(request: Request) -> InFlight:
    in_flight: InFlight = request.app.state.in_flight
    return in_flight


_bearer = HTTPBearer(
    auto_error=False,
    scheme_name="APIKey",
    description="An API key from API_KEYS or API_KEYS_FILE",
)


async def _scoring_auth(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> str | None:
    """The id of the caller's API key; ``None`` when no keys are configured. 401 otherwise."""
    token = credentials.credentials if credentials is not None else None
    return check_api_key(request, token, plane_of(request))


ScoringAuth = Security(_scoring_auth)
"""Router-level guard of the scoring routes: ``APIRouter(dependencies=[ScoringAuth])``."""


async def _monitoring(request: Request) -> Monitoring:
    monitoring: Monitoring = request.app.state.monitoring
    return monitoring


SettingsDep = Annotated[Settings, Depends(_settings)]
HolderDep = Annotated[ModelHolder, Depends(_holder)]
ChallengerDep = Annotated[ModelHolder | None, Depends(_challenger)]
MetricsDep = Annotated[Metrics, Depends(_metrics)]
InFlightDep = Annotated[InFlight, Depends(_in_flight)]
AdmissionDep = Annotated[Admission, Depends(_admission)]
MonitoringDep = Annotated[Monitoring, Depends(_monitoring)]
