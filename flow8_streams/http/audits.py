"""The audit verdicts the API serves, through the instance's ``AuditQueryCache``: a dashboard
asking for the same verdict again is answered from memory for up to ``cache.audit.ttl_seconds``,
and the background job (``refreshing``, for as long as the server runs) runs each verdict asked
for since its last round again, so a verdict asked for often is never older than the TTL.

A verdict computed while its play ran is not served once the play has ended (``stale``): the
play's final verdict is computed then, and held like any other.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from functools import partial
from typing import TYPE_CHECKING, Any

from flow8_streams.audit import Audit, Filter
from flow8_streams.audit.cache import AuditQueryCache

if TYPE_CHECKING:
    from flow8_streams.http.backends import Backend, Play
    from flow8_streams.metrics import Metrics
    from flow8_streams.settings import Settings

Verdict = dict[str, Any] | None  # the verdict's JSON (flow8 audit verify --json); None: no such play


async def verdict(backend: Backend, flt: Filter) -> Verdict:
    """The verdict on ``flt``'s one play of its company, from the backend's history of it."""
    assert flt.company is not None and flt.play is not None
    play = await backend.play(flt.company, flt.play)
    if play is None:
        return None
    history = await backend.history(flt.company, play)
    return Audit(flt).play(history).as_json()


def audit_cache(backend: Backend, settings: Settings, metrics: Metrics) -> AuditQueryCache[Verdict]:
    return AuditQueryCache.of(partial(verdict, backend), settings.cache, metrics)


async def play_verdict(cache: AuditQueryCache[Verdict], company_id: str, play: Play) -> Verdict:
    """``play``'s verdict, from the cache unless it was computed while the play ran and it has ended since."""
    shown = play.public()

    def stale(held: Verdict) -> bool:
        return held is None or (held["status"] == "running" and shown["status"] != "running")

    return await cache.get(Filter(company_id, play=shown["play_id"]), stale)


@contextlib.asynccontextmanager
async def refreshing(cache: AuditQueryCache[Any]) -> AsyncIterator[None]:
    """The cache's background refresh job, running until the block ends."""
    job = asyncio.create_task(cache.run(), name="flow8-audit-cache-refresh")
    try:
        yield
    finally:
        job.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await job
