"""The ``/v1`` routes the web UI draws with (any client may use them): a play's timeline and a
flow's DAG as SVG, the company's flows, and its KV keys by prefix. Company-scoped like the rest:
another company's play or flow is a 404.

The SVGs are built by ``audit.timeline_svg`` and ``audit.dag_svg`` (names and errors escaped by
the XML writer) and served under a CSP that runs nothing, should one be opened on its own.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from typing import Annotated

from fastapi import APIRouter, Query, Response

from flow8_streams.domain.flow import NAME_PATTERN
from flow8_streams.errors import NotFound
from flow8_streams.http.common import BoundedRoute, Caller, Json, Store
from flow8_streams.http.routes_flows import NamePath
from flow8_streams.http.routes_kv import MAX_KEY
from flow8_streams.http.routes_plays import PlayIdPath, _play

router = APIRouter(route_class=BoundedRoute)
SVG_HEADERS = {"Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'", "Cache-Control": "no-store"}


def _svg(svg: ET.Element) -> Response:
    svg.set("xmlns", "http://www.w3.org/2000/svg")
    return Response(ET.tostring(svg, encoding="unicode"), media_type="image/svg+xml", headers=SVG_HEADERS)


@router.get(
    "/v1/plays/{play_id}/timeline",
    tags=["plays"],
    summary="A play's timeline as SVG: a row per flowlet, a bar per attempt, and its legend",
    response_class=Response,
    responses={200: {"content": {"image/svg+xml": {}}}},
)
async def timeline(play_id: PlayIdPath, key: Caller, backend: Store) -> Response:
    from flow8_streams.audit import timeline, timeline_svg

    state = await _play(backend, key.company_id, play_id)
    events = await backend.events(key.company_id, state)
    if not events:  # a streams play whose events the read did not find (its audit says why)
        raise NotFound(f"play {play_id} has no events to draw")
    chart, legend = timeline_svg.render(timeline.build(events)), timeline_svg.legend()
    height = int(chart.get("height", "0")) + 8 + int(legend.get("height", "0"))
    width = max(int(chart.get("width", "0")), int(legend.get("width", "0")))
    legend.set("y", str(height - int(legend.get("height", "0"))))
    both = ET.Element("svg", {"class": "timeline-with-legend", "width": str(width), "height": str(height)})
    both.set("viewBox", f"0 0 {width} {height}")
    both.extend([chart, legend])
    return _svg(both)


@router.get(
    "/v1/flows", tags=["flows"], summary="The company's flows by name: {items: [{name, versions}], next_cursor}"
)
async def list_flows(
    key: Caller,
    backend: Store,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    cursor: Annotated[str | None, Query(pattern=NAME_PATTERN, description="next_cursor of the page before.")] = None,
) -> Response:
    names = await backend.stores.flows.names(key.company_id, limit, cursor)
    items = [{"name": name, "versions": await backend.stores.flows.versions(key.company_id, name)} for name in names]
    return Json({"items": items, "next_cursor": names[-1] if len(names) == limit else None})


@router.get(
    "/v1/flows/{name}/dag",
    tags=["flows"],
    summary="A flow's DAG as SVG (the latest version, or ?version=)",
    response_class=Response,
    responses={200: {"content": {"image/svg+xml": {}}}},
)
async def dag(
    name: NamePath, key: Caller, backend: Store, version: Annotated[int | None, Query(ge=1)] = None
) -> Response:
    from flow8_streams.audit import dag_svg

    flow = await backend.stores.flows.get(key.company_id, name, version)
    if flow is None:
        raise NotFound(f"no flow {name!r}" + (f" v{version}" if version else ""))
    return _svg(dag_svg.render(flow))


@router.get("/v1/kv", tags=["kv"], summary="The company's KV keys by prefix, ascending: {items: [{key}], next_cursor}")
async def list_keys(
    key: Caller,
    backend: Store,
    prefix: Annotated[str, Query(max_length=MAX_KEY)] = "",
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    cursor: Annotated[str | None, Query(min_length=1, max_length=MAX_KEY, description="next_cursor.")] = None,
) -> Response:
    keys = await backend.stores.kv.keys(key.company_id, prefix, limit, cursor)
    return Json({"items": [{"key": k} for k in keys], "next_cursor": keys[-1] if len(keys) == limit else None})
