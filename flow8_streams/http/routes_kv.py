"""``/v1/kv/{key}``: the company's KV store, read and written (last write wins; ``expected_version``
makes a write conditional)."""

from __future__ import annotations

from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Path, Query, Response
from pydantic import BaseModel, ConfigDict, Field

from flow8_streams.domain.bounded import check_size
from flow8_streams.errors import NotFound
from flow8_streams.http.common import BoundedRoute, Caller, Json, Store, problem
from flow8_streams.stores.ports import KVEntry

router = APIRouter(prefix="/v1/kv", tags=["kv"], route_class=BoundedRoute)
MAX_KEY = 512
KeyPath = Annotated[str, Path(min_length=1, max_length=MAX_KEY, description="The key (any text; / allowed).")]


class KVWrite(BaseModel):
    model_config = ConfigDict(extra="forbid")

    value: Any = Field(description="Any JSON value, at most limits.max_output_bytes.")


def _entry(entry: KVEntry) -> dict[str, Any]:
    return {"key": entry.key, "value": entry.value, "version": entry.version}


@router.get("/{key:path}", summary="A value: {key, value, version}")
async def get_value(key: KeyPath, caller: Caller, backend: Store) -> Response:
    entry = await backend.stores.kv.get(caller.company_id, key)
    if entry is None:
        raise NotFound(f"no key {key!r}")
    return Json(_entry(entry))


@router.put("/{key:path}", summary="Write a value: {key, value, version}; 409 if expected_version differs")
async def put_value(
    key: KeyPath,
    body: KVWrite,
    caller: Caller,
    backend: Store,
    expected_version: Annotated[int | None, Query(ge=0, description="Write only at this version (0: absent).")] = None,
) -> Response:
    check_size(orjson.dumps(body.value), backend.limits.max_output_bytes, "the value (limits.max_output_bytes)")
    if expected_version is None:
        return Json(_entry(await backend.stores.kv.set(caller.company_id, key, body.value)))
    entry = await backend.stores.kv.cas(caller.company_id, key, body.value, expected_version)
    if entry is None:
        raise problem(409, f"key {key!r} is not at version {expected_version}", field=("query", "expected_version"))
    return Json(_entry(entry))
