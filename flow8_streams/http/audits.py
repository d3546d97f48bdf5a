"""The audit verdicts the API serves, through the instance's ``AuditQueryCache``: a dashboard
asking for the same verdict again is answered from memory for up to ``cache.audit.ttl_seconds``,
and the background job (``refreshing``, for as long as the server runs) runs each verdict asked
for since its last round again, so a verdict asked for often is never older than the TTL.

A verdict computed while its play ran is not served once the play has ended (``stale``): the
play's final verdict is computed then, and held like any other. With ``audit_public_key`` each
verdict is checked against the checkpoints that key signed; a finished play signed after its
verdict was taken shows ``anchored`` once the TTL has passed (or the refresh came first).

With ``cache.backend: redis`` and ``cache.redis.signing_key`` the API instances share their
verdicts through Redis (``AuditQueryCache``'s shared tier). A verdict is a statement an auditor
relies on, so without the signing key (Redis trusted as it is) they are not shared: whoever can
write to Redis could otherwise make every instance call a rewritten history clean.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from functools import partial
from typing import TYPE_CHECKING, Any

from flow8_streams.audit import Audit, Filter
from flow8_streams.audit.cache import AuditQueryCache, Shared

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    from flow8_streams.http.backends import Backend, Play
    from flow8_streams.metrics import Metrics
    from flow8_streams.settings import Settings

log = logging.getLogger("flow8.cache")

Verdict = dict[str, Any] | None  # the verdict's JSON (flow8 audit verify --json); None: no such play
VERDICT_FIELDS = {"play_id", "company_id", "status", "verdict", "findings", "last_seq", "head_hash"}


async def verdict(backend: Backend, key: Ed25519PublicKey | None, flt: Filter) -> Verdict:
    """The verdict on ``flt``'s one play of its company, from the backend's history of it, and
    with ``key`` against the checkpoints it signed (``anchored``, ``unanchored``, a rewritten or
    cut history), as ``flow8 audit verify --public-key`` gives it."""
    assert flt.company is not None and flt.play is not None
    play = await backend.play(flt.company, flt.play)
    if play is None:
        return None
    signed = await backend.checkpoints(flt.company) if key is not None else []
    history = await backend.history(flt.company, play)
    return Audit(flt, signed, public_key=key).play(history).as_json()


def audit_cache(backend: Backend, settings: Settings, metrics: Metrics) -> AuditQueryCache[Verdict]:
    """The cache of ``backend``'s verdicts; ``settings.audit_public_key`` read now (a bad key stops
    the server from starting, exit 2)."""
    from flow8_streams.audit import checkpoints as cp

    path = settings.audit_public_key
    key = cp.load_public_key(path, "audit_public_key (FLOW8_AUDIT_PUBLIC_KEY)") if path is not None else None
    shared: Shared[Verdict] | None = None
    if backend.shared_cache is not None:
        if settings.cache.redis.signing_key is not None:
            shared = Shared(backend.shared_cache, encode=lambda v: v, decode=held_verdict)
        else:
            log.info("audit verdicts are kept per instance: sharing them through Redis needs cache.redis.signing_key")
    return AuditQueryCache.of(partial(verdict, backend, key), settings.cache, metrics, shared)


def held_verdict(flt: Filter, doc: Any) -> tuple[Verdict] | None:
    """A verdict read back from the shared cache, if it is one of ``flt``'s play (else None: ignored).
    The cache's HMAC already binds it to its key; this is the shape check of outside input."""
    if doc is None:
        return (None,)
    if not isinstance(doc, dict) or not doc.keys() >= VERDICT_FIELDS:
        return None
    if doc["play_id"] != flt.play or doc["company_id"] != flt.company or not isinstance(doc["findings"], list):
        return None
    return (doc,)


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
