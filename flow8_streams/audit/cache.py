"""Answers of audit filter queries, cached per instance (the seed's "audit filter queries, TTL
3 minutes, refreshed by a background job"): what a long-running face (the HTTP API) puts in
front of an audit run so a dashboard asking the same question again is answered from memory.

Rules: an answer is served for at most ``ttl_seconds`` after it was computed; a query asked
again since the last refresh is run again by ``refresh`` (the background job, every
``refresh_seconds``, less than the TTL), so a hot query never waits and is never older than the
TTL; a query nobody asks again expires. One query runs at a time per filter: callers asking
while it runs wait for its answer. A caller that knows an answer is outdated (a play's verdict
computed while it ran, asked for once it has ended) says so with ``stale``: it is run again.
Hits and misses are counted in ``flow8_cache_hits_total`` and ``flow8_cache_misses_total`` with
``cache="audit"``. The cache is not needed for correctness: losing it costs one query.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Generic, TypeVar

from flow8_streams.audit.sources import Filter

if TYPE_CHECKING:
    from flow8_streams.metrics import Metrics
    from flow8_streams.settings import Caches

log = logging.getLogger(__name__)
T = TypeVar("T")
CACHE = "audit"  # the ``cache`` label of the hit and miss counters


class AuditQueryCache(Generic[T]):
    """``get(filter)`` answered by ``query(filter)`` at most once per TTL, refreshed while hot."""

    @classmethod
    def of(
        cls, query: Callable[[Filter], Awaitable[T]], settings: Caches, metrics: Metrics | None = None
    ) -> AuditQueryCache[T]:
        """The cache as the settings' ``cache.audit`` block sizes it."""
        block = settings.audit
        return cls(query, ttl_seconds=block.ttl_seconds, max_entries=block.max_entries, metrics=metrics)

    def __init__(
        self,
        query: Callable[[Filter], Awaitable[T]],
        *,
        ttl_seconds: float = 180,
        max_entries: int = 1000,
        refresh_seconds: float | None = None,
        metrics: Metrics | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        from cachetools import TTLCache  # the [streams] extra: imported only where an instance runs

        self.query = query
        self.ttl_seconds = ttl_seconds
        self.refresh_seconds = refresh_seconds if refresh_seconds is not None else ttl_seconds * 2 / 3
        if not 0 < self.refresh_seconds < ttl_seconds:
            raise ValueError(f"refresh_seconds {self.refresh_seconds} must be more than 0 and less than the TTL")
        self.metrics = metrics
        self._answers: TTLCache[Filter, T] = TTLCache(maxsize=max_entries, ttl=ttl_seconds, timer=clock)
        self._asked: set[Filter] = set()  # asked since the last refresh: kept fresh by it
        self._running: dict[Filter, asyncio.Future[T]] = {}

    def _count(self, hit: bool) -> None:
        if self.metrics is not None:
            (self.metrics.cache_hits if hit else self.metrics.cache_misses).labels(cache=CACHE).inc()

    async def get(self, flt: Filter, stale: Callable[[T], bool] | None = None) -> T:
        """The answer held for ``flt`` unless ``stale`` says it is outdated, else ``query(flt)``."""
        self._asked.add(flt)
        try:
            answer = self._answers[flt]
        except KeyError:
            self._count(hit=False)
            return await self._run(flt)
        if stale is not None and stale(answer):
            self._count(hit=False)
            return await self._run(flt)
        self._count(hit=True)
        return answer

    async def _run(self, flt: Filter) -> T:
        running = self._running.get(flt)
        if running is not None:
            return await asyncio.shield(running)
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._running[flt] = future
        try:
            answer = await self.query(flt)
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: a query nobody else waited for is not logged as lost
            raise
        finally:
            del self._running[flt]
        self._answers[flt] = answer
        future.set_result(answer)
        return answer

    async def refresh(self) -> int:
        """Run again each query asked since the last refresh; returns how many. A query that
        fails keeps its previous answer until the TTL ends it."""
        hot, self._asked = self._asked, set()
        done = 0
        for flt in hot:
            try:
                await self._run(flt)
            except Exception as exc:  # the store is down: the answer held stays until its TTL
                log.warning("refreshing an audit query of company %s failed: %s", flt.company, exc)
                continue
            done += 1
        return done

    async def run(self) -> None:
        """The background job: ``refresh`` every ``refresh_seconds``, until cancelled."""
        while True:
            await asyncio.sleep(self.refresh_seconds)  # a period, not a wait for an event
            await self.refresh()
