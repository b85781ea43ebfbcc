"""``POST /invocations`` and ``POST /explain`` straight to the data plane, past FastAPI's
per-request layers.

A one-row request is dominated by what surrounds the scoring: FastAPI's routing over every
route, its dependency solving, its middleware stack and response objects cost more than parsing
and scoring the row. ``HotPath`` sits just inside ``RequestContext`` (request id, access line,
metrics) and answers ``POST /invocations`` itself with ``invocation`` below, which the FastAPI
route in ``app/routes/invocations.py`` also runs: one behaviour, whichever door a request takes.
``POST /explain`` likewise with ``explanation``, when its query is empty or a plain ``top=K``
(anything else, FastAPI validates and answers). The routes stay for ``/openapi.json`` and
``/docs``; every other request goes to FastAPI.

Error answers come from ``error_response``, which the app's ``ServiceError`` handler uses too.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

from fastapi.responses import JSONResponse
from starlette.datastructures import Headers

from app.admission import InFlight
from app.auth import ApiKeys
from app.challenger import Shadow, routed_to_challenger
from app.config import Settings
from app.dataplane import (
    CONTRIBUTION_COST,
    Incoming,
    Scored,
    answer_headers,
    explain_body,
    handle,
)
from app.limits import Admission
from app.model_holder import ModelHolder
from app.observability import Answer, Metrics
from scoring.contract.decode import check_media_type
from scoring.errors import ServiceError, Unauthorized
from scoring.explain import contributions_of
from scoring.loading import LoadedModel

ASGIApp = Any
_ERROR_HEADERS = {401: {"WWW-Authenticate": "Bearer"}, 503: {"Retry-After": "5"}}
INVOCATIONS = "/invocations"
EXPLAIN = "/explain"
MAX_TOP = 10_000
"""The largest ``top`` of ``/explain`` (the route's query validation says the same)."""


class IndexedHeaders(Headers):
    """Starlette's request ``Headers``, looked up in a dict made once.

    ``Headers`` scans and decodes the header list on every lookup, and a missing header costs
    a ``KeyError`` on top; a scoring request looks up two to four (content type and length,
    authorization, the routing key). The dict is made in C from the raw pairs (the first of
    repeated headers wins, as in ``Headers``); a value is decoded when looked up.
    """

    def __init__(self, raw: list[tuple[bytes, bytes]]) -> None:
        # Not Headers.__init__ (a Python call and checks to set ``_list``, all it keeps).
        self._list = raw
        self._index = dict(reversed(raw))

    def get(self, key: str, default: Any = None) -> Any:
        value = self._index.get(key.lower().encode("latin-1"))
        return default if value is None else value.decode("latin-1")

    def __getitem__(self, key: str) -> str:
        value = self._index.get(key.lower().encode("latin-1"))
        if value is None:
            raise KeyError(key)
        decoded: str = value.decode("latin-1")
        return decoded

    def __contains__(self, key: Any) -> bool:
        return isinstance(key, str) and key.lower().encode("latin-1") in self._index


class HotRequest:
    """What the scoring paths read of a request (``Incoming``: its scope, ``receive`` and
    headers), made in one call: Starlette's ``Request`` took four Python calls to make."""

    __slots__ = ("headers", "receive", "scope")

    def __init__(self, scope: Any, receive: Any) -> None:
        self.scope = scope
        self.receive = receive
        self.headers = IndexedHeaders(scope["headers"])


def error_response(method: str, exc: ServiceError) -> JSONResponse:
    """The JSON answer to a ``ServiceError``: its status, ``{"error_code", "message"}``, and
    ``Retry-After`` (503) or ``WWW-Authenticate`` (401); a POST refused before its body was read
    (408, 413, 503) also closes the connection rather than read on."""
    headers = _ERROR_HEADERS.get(exc.status_code)
    if exc.status_code in (408, 413, 503) and method == "POST":
        headers = {**(headers or {}), "Connection": "close"}
    return JSONResponse(exc.body(), status_code=exc.status_code, headers=headers)


def bearer_token(authorization: str | None) -> str | None:
    """The credentials of an ``Authorization: Bearer <token>`` header (as FastAPI's
    ``HTTPBearer``: the scheme in any case), else ``None``."""
    if not authorization:
        return None
    scheme, _, credentials = authorization.partition(" ")
    if scheme.lower() != "bearer" or not credentials:
        return None
    return credentials


@dataclass(frozen=True, slots=True, kw_only=True)
class Plane:
    """What the scoring paths read on every request, gathered once per app
    (``app.state.plane``, set by ``create_app``): each read of Starlette's ``State`` is a
    Python-level ``__getattr__`` call, and a one-row request made eight."""

    settings: Settings
    metrics: Metrics
    holder: ModelHolder
    challenger: ModelHolder | None
    shadow: Shadow | None
    in_flight: InFlight
    admission: Admission
    api_keys: ApiKeys | None


def plane_of(request: Incoming) -> Plane:
    """The app's ``Plane``."""
    plane: Plane = request.scope["app"].state.plane
    return plane


def check_api_key(request: Incoming, token: str | None, plane: Plane) -> str | None:
    """The id of the caller's API key; ``None`` when no keys are configured. 401 otherwise."""
    keys = plane.api_keys
    if keys is None:
        return None
    key_id = keys.identify(token) if token is not None else None
    if key_id is None:
        plane.metrics.api_key_rejected.inc()
        raise Unauthorized("a valid 'Authorization: Bearer <API key>' header is required")
    plane.metrics.api_key_requests.labels(key_id).inc()
    access_notes(request)["key_id"] = key_id
    return key_id


async def invocation(request: Incoming, plane: Plane) -> tuple[Scored, LoadedModel, str]:
    """Score one ``/invocations`` request: the answer, the model that gave it and its role
    (champion, or challenger in a split). Raises ``ServiceError`` for every refusal."""
    headers = request.headers
    content_type = headers.get("content-type")
    check_media_type(content_type)
    role, answering = "champion", plane.holder
    challenger = plane.challenger
    if challenger is not None and challenger.current is not None:
        fraction = plane.settings.split_fraction
        if fraction is not None and routed_to_challenger(fraction, headers.get("x-routing-key")):
            role, answering = "challenger", challenger
    model = answering.require()
    notes = access_notes(request)
    notes["model_role"] = role
    scored = await _handled(request, plane, notes, model, content_type, role=role)
    shadow = plane.shadow
    if shadow is not None:
        shadow.submit(scored.x, scored.predictions, model)
    return scored, model, role


async def explanation(request: Incoming, plane: Plane, top: int | None) -> Scored:
    """Explain one ``/explain`` request (``top`` reasons per row if asked). Raises
    ``ServiceError`` for every refusal; a model that cannot explain is refused (422) before the
    body is read."""
    content_type = request.headers.get("content-type")
    check_media_type(content_type)
    model = plane.holder.require()
    contributions_of(model.predictor)
    return await _handled(
        request,
        plane,
        access_notes(request),
        model,
        content_type,
        work=functools.partial(explain_body, top=top),
        # One row on the loop (a few ms); more in a thread, not to hold up other requests.
        inline_bytes=plane.settings.inline_body_bytes // CONTRIBUTION_COST,
    )


async def _handled(
    request: Incoming,
    plane: Plane,
    notes: dict[str, Any],
    model: LoadedModel,
    content_type: str | None,
    **how: Any,
) -> Scored:
    """``dataplane.handle`` with the app's settings, metrics and admission, the model and the
    rows noted for the access log; ``how``: ``handle``'s ``role``, ``work``, ``inline_bytes``."""
    notes["model_version"] = model.version
    notes["model"] = model.label
    scored = await handle(
        request,
        model,
        settings=plane.settings,
        metrics=plane.metrics,
        in_flight=plane.in_flight,
        admission=plane.admission,
        content_type=content_type,
        **how,
    )
    notes["rows"] = scored.rows
    return scored


def access_notes(request: Incoming) -> dict[str, Any]:
    """What the access line says of a request beyond its method, path and status: the dict
    behind ``request.state`` (the model, its version and role, the rows, the API key's id),
    written directly rather than through Starlette's ``State`` object on the hot path."""
    notes: dict[str, Any] = request.scope.setdefault("state", {})
    return notes


def plain_top(query: bytes) -> int:
    """``top`` from a query that is empty (0: no reasons) or exactly ``top=K`` with
    ``1 <= K <= MAX_TOP``; -1 for anything else (FastAPI's validation then answers)."""
    if not query:
        return 0
    name, _, value = query.partition(b"=")
    if name != b"top" or not value.isdigit() or len(value) > 5:
        return -1
    top = int(value)
    return top if 1 <= top <= MAX_TOP else -1


@functools.lru_cache(maxsize=64)
def _raw_answered_by(label: str, role: str) -> tuple[tuple[bytes, bytes], ...]:
    """``answer_headers`` as ASGI wants them, made once per model and role."""
    return tuple((k.lower().encode(), v.encode()) for k, v in answer_headers(label, role))


class HotPath:
    """Pure ASGI: ``POST /invocations`` answered by ``invocation`` and ``POST /explain`` (plain
    query) by ``explanation``; the rest passed on. ``answer`` gives the hot path's answer
    without sending it, for the request context to send (``RequestContext(hot=...)``)."""

    def __init__(self, app: ASGIApp, routes: dict[str, Any], plane: Plane) -> None:
        """``routes``: the FastAPI routes by path, put in ``scope["route"]`` as FastAPI would
        (the per-route metrics read it); ``plane``: the app's."""
        self.app = app
        self.routes = routes
        self.plane = plane

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        found = await self.answer(scope, receive) if scope["type"] == "http" else None
        if found is None:
            await self.app(scope, receive, send)
            return
        status, headers, body = found
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def answer(self, scope: Any, receive: Any) -> Answer | None:
        """The answer to an HTTP request the hot path takes (every refusal included); ``None``
        for any other request, which nothing here has read."""
        path = scope["path"]
        if scope["method"] != "POST" or path not in self.routes:
            return None
        top = plain_top(scope.get("query_string", b"")) if path == EXPLAIN else 0
        if top < 0:
            return None
        scope["route"] = self.routes[path]
        request = HotRequest(scope, receive)
        plane = self.plane
        try:
            if plane.api_keys is not None:
                check_api_key(request, bearer_token(request.headers.get("authorization")), plane)
            if path == INVOCATIONS:
                scored, model, role = await invocation(request, plane)
                extra = _raw_answered_by(model.label, role)
            else:
                scored = await explanation(request, plane, top or None)
                extra = ()  # one model explains: no split, no shadow
        except ServiceError as exc:
            refusal = error_response("POST", exc)
            return refusal.status_code, refusal.raw_headers, bytes(refusal.body)
        content = scored.content
        return (
            200,
            [
                (b"content-type", b"application/json"),
                (b"content-length", b"%d" % len(content)),
                *extra,
            ],
            content,
        )
