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

With a ``shared`` cache (Redis, ``cache.backend: redis``) the instances share their answers: a
miss here asks the shared cache before running the query, an answer computed here is put there,
and a refresh takes the shared answer instead of running the query when another instance
refreshed it within the last half refresh period. Each shared answer carries the (wall clock)
time it was computed, so it is still never served more than ``ttl_seconds`` after that. What
comes back from the shared cache is outside input: ``decode`` checks it is an answer to this
very filter, and anything else is counted as rejected and ignored.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import astuple
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import orjson

from flow8_streams.audit.sources import Filter

if TYPE_CHECKING:
    from flow8_streams.cache import SharedCache
    from flow8_streams.metrics import Metrics
    from flow8_streams.settings import Caches

log = logging.getLogger(__name__)
T = TypeVar("T")
CACHE = "audit"  # the ``cache`` label of the hit and miss counters
CLOCK_SKEW_S = 5.0  # a shared answer computed later than this into the future is refused


def shared_key(flt: Filter) -> str:
    """The shared cache's key of ``flt``: its company's namespace, then a digest of the whole filter."""
    from flow8_streams.cache import key

    fields = [v.isoformat() if hasattr(v, "isoformat") else v for v in astuple(flt)]
    return key("audit", flt.company or "*", hashlib.sha256(orjson.dumps(fields)).hexdigest()[:32])


class Shared(Generic[T]):
    """The shared tier: the cache, and how an answer is written to it and checked when read back
    (``decode`` answers ``None`` for bytes that are not an answer to the filter)."""

    def __init__(
        self,
        cache: SharedCache,
        encode: Callable[[T], Any],
        decode: Callable[[Filter, Any], tuple[T] | None],
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.cache, self.encode, self.decode, self.wall = cache, encode, decode, wall

    async def get(self, flt: Filter, ttl: float) -> tuple[T, float] | None:
        """The answer held for ``flt`` and its age in seconds, if one younger than ``ttl`` is there."""
        raw = await self.cache.get(CACHE, shared_key(flt))
        if raw is None:
            return None
        try:
            doc = orjson.loads(raw)
            age = self.wall() - float(doc["at"])
            answer = self.decode(flt, doc["answer"])
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            answer = None
            age = 0.0
        if answer is None or age < -CLOCK_SKEW_S:
            self.cache.rejected(CACHE)
            return None
        if age >= ttl:
            return None
        return answer[0], max(age, 0.0)

    async def put(self, flt: Filter, answer: T, ttl: float) -> None:
        doc = {"at": self.wall(), "answer": self.encode(answer)}
        await self.cache.set(CACHE, shared_key(flt), orjson.dumps(doc), ttl)


class AuditQueryCache(Generic[T]):
    """``get(filter)`` answered by ``query(filter)`` at most once per TTL, refreshed while hot."""

    @classmethod
    def of(
        cls,
        query: Callable[[Filter], Awaitable[T]],
        settings: Caches,
        metrics: Metrics | None = None,
        shared: Shared[T] | None = None,
    ) -> AuditQueryCache[T]:
        """The cache as the settings' ``cache.audit`` block sizes it."""
        block = settings.audit
        return cls(query, ttl_seconds=block.ttl_seconds, max_entries=block.max_entries, metrics=metrics, shared=shared)

    def __init__(
        self,
        query: Callable[[Filter], Awaitable[T]],
        *,
        ttl_seconds: float = 180,
        max_entries: int = 1000,
        refresh_seconds: float | None = None,
        metrics: Metrics | None = None,
        clock: Callable[[], float] = time.monotonic,
        shared: Shared[T] | None = None,
    ) -> None:
        from cachetools import TLRUCache  # the [streams] extra: imported only where an instance runs

        self.query = query
        self.ttl_seconds = ttl_seconds
        self.refresh_seconds = refresh_seconds if refresh_seconds is not None else ttl_seconds * 2 / 3
        if not 0 < self.refresh_seconds < ttl_seconds:
            raise ValueError(f"refresh_seconds {self.refresh_seconds} must be more than 0 and less than the TTL")
        self.metrics = metrics
        self.shared = shared
        # each answer with the clock reading it expires at: one from the shared cache is already aged
        self._answers: TLRUCache[Filter, tuple[T, float]] = TLRUCache(
            maxsize=max_entries, ttu=lambda _flt, held, _now: held[1], timer=clock
        )
        self._clock = clock
        self._asked: set[Filter] = set()  # asked since the last refresh: kept fresh by it
        self._running: dict[Filter, asyncio.Future[T]] = {}

    def _count(self, hit: bool) -> None:
        if self.metrics is not None:
            (self.metrics.cache_hits if hit else self.metrics.cache_misses).labels(cache=CACHE).inc()

    async def get(self, flt: Filter, stale: Callable[[T], bool] | None = None) -> T:
        """The answer held for ``flt`` unless ``stale`` says it is outdated, else ``query(flt)``."""
        self._asked.add(flt)
        held = self._answers.get(flt)
        if held is None or (stale is not None and stale(held[0])):
            self._count(hit=False)
            return await self._run(flt, stale=stale, within=self.ttl_seconds)
        self._count(hit=True)
        return held[0]

    async def _run(self, flt: Filter, *, stale: Callable[[T], bool] | None = None, within: float = 0) -> T:
        """``flt``'s answer from the shared cache if one younger than ``within`` seconds is
        there (and not ``stale``), else from the query (then shared); one at a time per filter."""
        running = self._running.get(flt)
        if running is not None:
            return await asyncio.shield(running)
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._running[flt] = future
        try:
            answer, age = await self._ask(flt, stale, within)
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: a query nobody else waited for is not logged as lost
            raise
        finally:
            del self._running[flt]
        self._answers[flt] = (answer, self._clock() + self.ttl_seconds - age)
        future.set_result(answer)
        return answer

    async def _ask(self, flt: Filter, stale: Callable[[T], bool] | None, within: float) -> tuple[T, float]:
        if self.shared is not None and within > 0:
            found = await self.shared.get(flt, within)
            if found is not None and (stale is None or not stale(found[0])):
                return found
        answer = await self.query(flt)
        if self.shared is not None:
            await self.shared.put(flt, answer, self.ttl_seconds)
        return answer, 0.0

    async def refresh(self) -> int:
        """Run again each query asked since the last refresh; returns how many. A query that
        fails keeps its previous answer until the TTL ends it."""
        hot, self._asked = self._asked, set()
        done = 0
        for flt in hot:
            try:  # another instance's refresh of the last half period is as good as this one's
                await self._run(flt, within=self.refresh_seconds / 2)
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
