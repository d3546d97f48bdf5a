"""``/v1/plays``: start (idempotent on ``play_id``), list by page, get, events, cancel, wait, audit."""

from __future__ import annotations

import base64
import binascii
import uuid
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

import orjson
from fastapi import APIRouter, Path, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from flow8_streams.domain.flow import NAME_PATTERN
from flow8_streams.domain.messages import ID_PATTERN, StartPlay
from flow8_streams.errors import CompanyMismatch, NotFound
from flow8_streams.http.backends import Play
from flow8_streams.http.common import BoundedRoute, Caller, Config, Json, Store, WaitSlots, problem
from flow8_streams.stores.ports import PlayPage

router = APIRouter(prefix="/v1/plays", tags=["plays"], route_class=BoundedRoute)
PlayIdPath = Annotated[str, Path(pattern=ID_PATTERN, description="The play's id.")]
MAX_CURSOR = 512


class StartRequest(BaseModel):
    """A play to start: a flow of the catalog (``PUT /v1/flows/{name}``) and its input."""

    model_config = ConfigDict(extra="forbid")

    flow: str = Field(pattern=NAME_PATTERN, description="Flow name in the catalog.")
    input: Any = Field(default_factory=dict, description="The play's input (JSON).")
    flow_version: int | None = Field(default=None, ge=1, description="Latest when absent.")
    play_id: str | None = Field(
        default=None, pattern=ID_PATTERN, description="Your own id: the same id again is the same play."
    )


def _location(play_id: str) -> dict[str, str]:
    return {"Location": f"/v1/plays/{play_id}"}


async def _play(backend: Store, company_id: str, play_id: str) -> Play:
    state = await backend.play(company_id, play_id)
    if state is None:
        raise NotFound(f"no play {play_id}")
    return state


@router.post("", status_code=202, summary="Start a play (202; 200 with the play when play_id exists)")
async def start(body: StartRequest, key: Caller, backend: Store) -> Response:
    try:  # the streams runtime's own rules for a client's play id (its reserved prefix)
        StartPlay(company_id=key.company_id, **body.model_dump())
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        raise problem(422, first["msg"], field=("body", *map(str, first["loc"]))) from None
    play_id = body.play_id or str(uuid.uuid4())
    if body.play_id is not None:
        known = await backend.play(None, play_id)
        if known is not None:
            if known.public()["company_id"] != key.company_id:
                raise problem(409, f"play_id {play_id!r} is taken; choose another", field=("body", "play_id"))
            return Json(known.public(), status_code=200, headers=_location(play_id))
    flow = await backend.stores.flows.get(key.company_id, body.flow, body.flow_version)
    if flow is None:
        version = f" v{body.flow_version}" if body.flow_version else ""
        raise problem(422, f"no flow {body.flow!r}{version} (PUT /v1/flows/{body.flow} first)", field=("body", "flow"))
    flow.check(backend.registry.names(), limits=backend.limits)
    try:
        await backend.start(key.company_id, flow, body.input, play_id)
    except CompanyMismatch:  # taken between the read above and the start
        raise problem(409, f"play_id {play_id!r} is taken; choose another", field=("body", "play_id")) from None
    accepted = {
        "play_id": play_id,
        "company_id": key.company_id,
        "flow": flow.name,
        "flow_version": flow.version,
        "status": "running",
    }
    return Json(accepted, status_code=202, headers=_location(play_id))


def _cursor(play: Play) -> str:
    shown = play.public()
    raw = orjson.dumps([shown["started_at"].isoformat(), shown["play_id"]])
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _after(cursor: str) -> tuple[datetime, str]:
    try:
        if len(cursor) > MAX_CURSOR:
            raise ValueError("too long")
        at, play_id = orjson.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        return datetime.fromisoformat(at), str(play_id)
    except (ValueError, TypeError, binascii.Error, orjson.JSONDecodeError):
        raise problem(422, "not a cursor this API gave (next_cursor)", field=("query", "cursor")) from None


def _utc(at: datetime | None) -> datetime | None:
    return at if at is None or at.tzinfo is not None else at.replace(tzinfo=UTC)


@router.get("", summary="List plays, newest first: {items, next_cursor}")
async def list_plays(
    key: Caller,
    backend: Store,
    status: Literal["running", "succeeded", "failed", "cancelled"] | None = None,
    flow: Annotated[str | None, Query(pattern=NAME_PATTERN)] = None,
    since: Annotated[datetime | None, Query(description="Started at or after (ISO time; UTC if no zone).")] = None,
    until: Annotated[datetime | None, Query(description="Started before (ISO time; UTC if no zone).")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    cursor: Annotated[str | None, Query(max_length=MAX_CURSOR, description="next_cursor of the page before.")] = None,
) -> Response:
    page = PlayPage(flow=flow, since=_utc(since), until=_utc(until), after=_after(cursor) if cursor else None)
    plays = await backend.plays(key.company_id, status, limit, page)
    next_cursor = _cursor(plays[-1]) if len(plays) == limit else None
    return Json({"items": [p.public() for p in plays], "next_cursor": next_cursor})


@router.get("/{play_id}", summary="A play (the JSON of flow8 run --json)")
async def get_play(play_id: PlayIdPath, key: Caller, backend: Store) -> Response:
    return Json((await _play(backend, key.company_id, play_id)).public())


@router.get("/{play_id}/events", summary="A play's events in seq order: {items}")
async def play_events(
    play_id: PlayIdPath, key: Caller, backend: Store, after_seq: Annotated[int, Query(ge=0)] = 0
) -> Response:
    state = await _play(backend, key.company_id, play_id)
    events = await backend.events(key.company_id, state, after_seq)
    return Json({"play_id": play_id, "items": [e.model_dump(mode="json") for e in events]})


@router.post("/{play_id}/cancel", status_code=202, summary="Cancel a running play (409 if it has finished)")
async def cancel(play_id: PlayIdPath, key: Caller, backend: Store) -> Response:
    state = await _play(backend, key.company_id, play_id)
    if state.finished:
        raise problem(409, f"play {play_id} has already finished: {state.public()['status']}")
    await backend.cancel(key.company_id, play_id)
    return Json({"play_id": play_id, "status": "cancelling"}, status_code=202, headers=_location(play_id))


@router.get("/{play_id}/wait", summary="The play once it ends; 408 (with the play as it stands) on timeout")
async def wait(
    request: Request,
    play_id: PlayIdPath,
    key: Caller,
    backend: Store,
    settings: Config,
    timeout: Annotated[float, Query(gt=0, description="Seconds, at most http.max_wait_seconds.")] = 30,
) -> Response:
    bound = settings.http.max_wait_seconds
    if timeout > bound:
        raise problem(422, f"at most {bound:g} seconds (http.max_wait_seconds)", field=("query", "timeout"))
    slots: WaitSlots = request.app.state.waits
    with slots.hold(key.key_id):
        state = await backend.wait(key.company_id, play_id, timeout)
    if state is None:
        raise NotFound(f"no play {play_id}")
    if not state.finished:
        return Json({"detail": f"play {play_id} is still running after {timeout:g}s", "play": state.public()}, 408)
    return Json(state.public())


@router.get("/{play_id}/audit", summary="The audit verdict of a play (flow8 audit verify --json)")
async def audit(request: Request, play_id: PlayIdPath, key: Caller, backend: Store) -> Response:
    from flow8_streams.http.audits import play_verdict

    state = await _play(backend, key.company_id, play_id)
    verdict = await play_verdict(request.app.state.audits, key.company_id, state)
    if verdict is None:
        raise NotFound(f"no play {play_id}")
    return Json(verdict)
