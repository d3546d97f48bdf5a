"""``/v1/keys``: the company's API keys, listed and revoked by its admins (a member's key: 403);
another company's key is a 404."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, cast

from fastapi import APIRouter, Path, Request, Response

from flow8_streams.errors import NotFound
from flow8_streams.http.common import BoundedRoute, Caller, Json, Store, problem
from flow8_streams.http.keys import KeyCache
from flow8_streams.stores.ports import ApiKey

router = APIRouter(prefix="/v1/keys", tags=["keys"], route_class=BoundedRoute)
KeyIdPath = Annotated[str, Path(pattern=r"^[0-9a-f]{16}$", description="A key's id (f8k_<id>_...).")]


def public(key: ApiKey) -> dict[str, Any]:
    """A key as it is shown: never its digest."""
    return {
        "key_id": key.key_id,
        "company_id": key.company_id,
        "role": key.role,
        "created_at": key.created_at,
        "revoked_at": key.revoked_at,
    }


def _admin(caller: ApiKey) -> None:
    if caller.role != "admin":
        raise problem(403, "an admin key of the company is needed (flow8 keys create --role admin)")


@router.get("", summary="The company's keys: {items}")
async def list_keys(caller: Caller, backend: Store) -> Response:
    _admin(caller)
    return Json({"items": [public(k) for k in await backend.stores.keys.list(caller.company_id)]})


@router.post("/{key_id}/revoke", summary="Revoke one of the company's keys")
async def revoke(key_id: KeyIdPath, caller: Caller, backend: Store, request: Request) -> Response:
    _admin(caller)
    revoked = await backend.stores.keys.revoke(key_id, datetime.now(UTC), caller.company_id)
    if revoked is None:
        raise NotFound(f"no key {key_id}")
    cast(KeyCache, request.app.state.keys).forget(key_id)  # refused here at once, elsewhere within the cache's time
    return Json(public(revoked))
