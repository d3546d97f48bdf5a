"""``/v1/flows``: put a version, get one (the latest by default), list versions, validate."""

from __future__ import annotations

from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Body, Path, Query, Response

from flow8_streams.domain.bounded import check_size
from flow8_streams.domain.flow import NAME_PATTERN, FlowDefinition
from flow8_streams.errors import InvalidFlow, InvalidInput, NotFound
from flow8_streams.flowfile import flow_from_data
from flow8_streams.http.backends import Backend
from flow8_streams.http.common import BoundedRoute, Caller, Json, Store, problem

router = APIRouter(prefix="/v1/flows", tags=["flows"], route_class=BoundedRoute)
NamePath = Annotated[str, Path(pattern=NAME_PATTERN, description="The flow's name.")]
FLOW_BODY = {
    "requestBody": {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/FlowDefinition"}}}}
}
FlowDocument = Annotated[
    dict[str, Any],
    Body(description="A flow definition (schemas/flow.schema.json); version: the next one when absent."),
]


def _checked(backend: Backend, document: dict[str, Any], source: str) -> FlowDefinition:
    """The flow, validated against the limits and the backend's modules; ``InvalidFlow`` lists why not."""
    check_size(orjson.dumps(document), backend.limits.max_flow_bytes, "the flow document (limits.max_flow_bytes)")
    return flow_from_data(document, source).check(backend.registry.names(), limits=backend.limits)


@router.put("/{name}", summary="Store a version of a flow: {name, version}", openapi_extra=FLOW_BODY)
async def put_flow(name: NamePath, document: FlowDocument, key: Caller, backend: Store) -> Response:
    if document.get("name", name) != name:
        raise problem(422, f"the document names flow {document.get('name')!r}, not {name!r}", field=("body", "name"))
    versions = await backend.stores.flows.versions(key.company_id, name)
    document = {**document, "name": name, "version": document.get("version") or (max(versions, default=0) + 1)}
    flow = _checked(backend, document, name)
    if flow.version in versions:
        stored = await backend.stores.flows.get(key.company_id, name, flow.version)
        if stored is not None and stored.model_dump(mode="json") != flow.model_dump(mode="json"):
            raise problem(
                409, f"flow {name} v{flow.version} exists with another definition; bump the version",
                field=("body", "version"),
            )  # fmt: skip
        return Json({"name": name, "version": flow.version}, status_code=200)
    await backend.stores.flows.put(key.company_id, flow)
    return Json({"name": name, "version": flow.version}, status_code=201, headers={"Location": f"/v1/flows/{name}"})


@router.post("/validate", summary="Check a flow document: {valid, errors}", openapi_extra=FLOW_BODY)
async def validate(document: FlowDocument, key: Caller, backend: Store) -> Response:
    try:
        flow = _checked(backend, document, "the flow document")
    except InvalidFlow as exc:
        return Json({"valid": False, "errors": exc.errors})
    except InvalidInput as exc:  # a module no worker has; too large
        return Json({"valid": False, "errors": [str(exc)]})
    return Json({"valid": True, "errors": [], "name": flow.name, "version": flow.version})


@router.get("/{name}", summary="A flow: the latest version, or ?version=")
async def get_flow(
    name: NamePath, key: Caller, backend: Store, version: Annotated[int | None, Query(ge=1)] = None
) -> Response:
    flow = await backend.stores.flows.get(key.company_id, name, version)
    if flow is None:
        raise NotFound(f"no flow {name!r}" + (f" v{version}" if version else ""))
    return Json(flow.model_dump(mode="json", exclude_none=True))


@router.get("/{name}/versions", summary="The versions of a flow, ascending: {name, versions}")
async def versions(name: NamePath, key: Caller, backend: Store) -> Response:
    found = await backend.stores.flows.versions(key.company_id, name)
    if not found:
        raise NotFound(f"no flow {name!r}")
    return Json({"name": name, "versions": found})
