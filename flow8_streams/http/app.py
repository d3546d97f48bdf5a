"""The FastAPI application of ``flow8 serve``: every request bounded, authenticated and scoped to
its key's company before a route reads anything, and every error mapped to one status here.

| status | when |
|---|---|
| 401 | no API key, not a flow8 key, unknown or revoked (``Unauthenticated``) |
| 403 | a member's key on an admin's resource (``/v1/keys``) |
| 404 | no such play, flow or key in the key's company (another company's is a 404 too, never a 403) |
| 408 | a wait whose timeout passed first |
| 409 | a play another flow8 process drives (``flow8 run``) or a play id another play holds; a flow
  version stored with another definition; a finished play cancelled |
| 413 | a body over ``limits.max_message_bytes``, or a field over its own limit (the field named) |
| 422 | a field or parameter of the wrong shape (FastAPI's ``detail`` list: each ``loc`` names it) |
| 429 | a key over ``http.rate_limit_per_second`` (when set; per instance), with ``Retry-After``; a wait past
  ``http.max_waits_per_key`` held for the key by this instance |
| 503 | a store that cannot be reached; a wait past ``http.max_waits`` held by this instance (``Retry-After``);
  on ``--streams``, a play's history (``/events``, ``/audit``, ``/timeline``) whose read of the events
  topic would pass ``http.history_max_records`` or ``http.history_max_bytes`` (``ReadTooLarge``) |
| 504 | on ``--streams``, a read of a play's history that took more than ``http.history_max_seconds`` |

Every 4xx is counted in ``flow8_http_refused_total{status}``.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, HTTPException, Request, Response
from fastapi_offline import FastAPIOffline
from starlette.middleware.gzip import GZipMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from flow8_streams import __version__
from flow8_streams.domain.bounded import TooLarge
from flow8_streams.domain.flow import FlowDefinition
from flow8_streams.errors import Flow8Error, InvalidInput, LimitExceeded, NotFound, ReadTimedOut, StoreUnavailable
from flow8_streams.http.backends import Backend, PlayBusy
from flow8_streams.http.common import Json, RateLimit, WaitSlots
from flow8_streams.http.keys import KeyCache, Unauthenticated
from flow8_streams.metrics import Metrics
from flow8_streams.settings import Settings

log = logging.getLogger("flow8.http")


class _BodyTooLarge(HTTPException):
    """Raised by the body's reader: a route that reads the body answers 413 with it."""

    def __init__(self, max_body: int) -> None:
        message = f"the request body is larger than the limit of {max_body} bytes (limits.max_message_bytes)"
        super().__init__(413, detail=[{"loc": ["body"], "msg": message, "type": "too_large"}])


class Guard:
    """Refuses a body over ``max_body`` (by its Content-Length, or as it streams in) with 413
    before a route reads it whole, and counts every 4xx response."""

    def __init__(self, app: ASGIApp, max_body: int, metrics: Metrics) -> None:
        self.app = app
        self.max_body = max_body
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def counted(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                if 400 <= message["status"] < 500:
                    self.metrics.http_refused.labels(status=str(message["status"])).inc()
            await send(message)

        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_body):
            await self._too_large(counted)
            return
        seen = 0

        async def bounded() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_body:
                    raise _BodyTooLarge(self.max_body)
            return message

        try:
            await self.app(scope, bounded, counted)
        except _BodyTooLarge:
            if started:
                raise
            await self._too_large(counted)

    async def _too_large(self, send: Send) -> None:
        response = Json({"detail": _BodyTooLarge(self.max_body).detail}, status_code=413)
        await response({"type": "http"}, _no_body, send)


async def _no_body() -> Message:  # pragma: no cover - a response never reads
    return {"type": "http.disconnect"}


# the first class an error is an instance of gives its status
STATUSES: tuple[tuple[type[Flow8Error], int], ...] = (
    (Unauthenticated, 401),
    (NotFound, 404),
    (PlayBusy, 409),
    (LimitExceeded, 413),
    (TooLarge, 413),
    (InvalidInput, 422),
    (ReadTimedOut, 504),
    (StoreUnavailable, 503),
    (Flow8Error, 400),
)


async def _flow8_error(request: Request, exc: Exception) -> Response:
    status = next(code for kind, code in STATUSES if isinstance(exc, kind))
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    if status >= 500:
        log.warning("%s %s: %s", request.method, request.url.path, exc)
    return Json({"detail": str(exc)}, status_code=status, headers=headers)


def _with_flow_schema(app: FastAPI) -> None:
    """Put the flow definition's JSON Schema (schemas/flow-definition.schema.json, from the same model)
    in the OpenAPI document's components, where the flow routes' bodies refer to it."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            spec = build()
            flow = FlowDefinition.model_json_schema(ref_template="#/components/schemas/{model}")
            schemas = spec.setdefault("components", {}).setdefault("schemas", {})
            schemas.update(flow.pop("$defs", {}))
            schemas["FlowDefinition"] = flow
        return app.openapi_schema or {}

    app.openapi = openapi  # type: ignore[method-assign]


def create_app(settings: Settings, metrics: Metrics, backend: Backend) -> FastAPI:
    """The API over an open ``backend``."""
    from flow8_streams.http import routes_flows, routes_keys, routes_kv, routes_ops, routes_plays, ui
    from flow8_streams.http.audits import audit_cache

    app = FastAPIOffline(
        title="flow8",
        version=__version__,
        description="Plays, flows and KV of one company per API key (Authorization: Bearer KEY).",
        default_response_class=Json,
    )
    app.state.backend = backend
    app.state.settings = settings
    app.state.metrics = metrics
    # the embedded backend reads a key from its SQLite file in microseconds: nothing to save there
    key_seconds = settings.http.key_cache_seconds if backend.name == "streams" else 0
    app.state.keys = KeyCache(backend.stores.keys, key_seconds, metrics)
    per_second = settings.http.rate_limit_per_second
    app.state.rate_limit = RateLimit(per_second) if per_second is not None else None
    app.state.waits = WaitSlots(settings.http.max_waits, settings.http.max_waits_per_key, metrics.http_waits)
    app.state.audits = audit_cache(backend, settings, metrics)  # its refresh job runs in ``serve``
    app.add_exception_handler(Flow8Error, _flow8_error)
    for module in (routes_plays, routes_flows, routes_kv, routes_keys, routes_ops):
        app.include_router(module.router)
    ui.install(app)
    _with_flow_schema(app)
    if settings.http.compression:
        app.add_middleware(
            GZipMiddleware,
            minimum_size=settings.http.compression_min_bytes,
            compresslevel=settings.http.compression_level,
        )
    app.add_middleware(Guard, max_body=settings.limits.max_message_bytes, metrics=metrics)
    return app
