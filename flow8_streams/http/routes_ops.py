"""``/metrics``, ``/healthz``, ``/readyz``: without a key (what a load balancer and Prometheus call)."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST

from flow8_streams.http.common import Json, Store

router = APIRouter(tags=["operations"])


@router.get("/metrics", summary="Prometheus metrics")
async def metrics(request: Request) -> Response:
    return Response(request.app.state.metrics.render(), media_type=CONTENT_TYPE_LATEST)


@router.get("/healthz", summary="The process answers")
async def healthz() -> Response:
    return Json({"status": "ok"})


@router.get("/readyz", summary="The backend can serve requests (503 if not)")
async def readyz(backend: Store) -> Response:
    why = await backend.ready()
    if why is not None:
        return Json({"status": "unavailable", "backend": backend.name, "detail": why}, status_code=503)
    return Json({"status": "ready", "backend": backend.name})
