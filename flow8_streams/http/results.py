"""Finished plays of ``flow8 serve --streams``, from ``flow8.play-results`` rather than MongoDB.

Each instance reads the topic itself (no consumer group, ``read_committed``, from its end when
the instance starts), so any number of instances answer alike. A result that carries its play
(``PlayResult.flowlets``) is kept in a map bounded by count and age (``http.results_max_entries``,
``http.results_ttl_seconds``) and wakes the waits on that play at once: no wait polls MongoDB.
A finished play never changes, so whatever the map holds is the play's last word. A result
answers only its own company's requests (play ids are global: the map is keyed by the id and
checks the company), and wakes only that company's waits.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

from flow8_streams.domain.results import PlayResult
from flow8_streams.metrics import Metrics
from flow8_streams.stores.ports import PlayPage

if TYPE_CHECKING:
    from cachetools import TTLCache

    from flow8_streams.settings import Settings

log = logging.getLogger("flow8.http")
CACHE = "play_results"  # the label of flow8_cache_hits_total / flow8_cache_misses_total


@dataclass(frozen=True, slots=True)
class Finished:
    """A finished play as its result shows it: what ``GET /v1/plays/{id}`` answers."""

    view: dict[str, Any]

    @property
    def finished(self) -> bool:
        return True

    def public(self) -> dict[str, Any]:
        return self.view

    @classmethod
    def of(cls, result: PlayResult) -> Finished | None:
        view = result.public()
        return None if view is None else cls(view)


class PlayResults:
    """The results read since this instance started, and the waits on plays not ended yet."""

    def __init__(self, max_entries: int, ttl_seconds: float, metrics: Metrics) -> None:
        from cachetools import TTLCache  # the [streams] extra: imported only where --streams runs

        self._ended: TTLCache[str, Finished] = TTLCache(maxsize=max_entries, ttl=ttl_seconds)
        # plays started through this instance whose result is not read yet: it is still to come
        self._coming: TTLCache[tuple[str, str], None] = TTLCache(maxsize=max_entries, ttl=ttl_seconds)
        self._waits: dict[tuple[str, str], set[asyncio.Future[PlayResult]]] = {}
        self._metrics = metrics

    def get(self, company_id: str | None, play_id: str) -> Finished | None:
        """The finished play ``play_id`` of ``company_id`` (None: of any company, the id alone)."""
        found = self._ended.get(play_id)
        if found is not None and company_id is not None and found.view["company_id"] != company_id:
            found = None
        (self._metrics.cache_hits if found is not None else self._metrics.cache_misses).labels(CACHE).inc()
        return found

    def starting(self, company_id: str, play_id: str) -> None:
        """``company_id``'s play ``play_id`` is being started through this instance: its result is still to come."""
        self._coming[(company_id, play_id)] = None

    def coming(self, company_id: str, play_id: str) -> bool:
        """Whether the result of ``company_id``'s play ``play_id`` is known to be still to come
        (so no one need look for it). Per company: another company's id tells nothing."""
        return (company_id, play_id) in self._coming

    def put(self, result: PlayResult) -> None:
        """Keep ``result`` (when it carries its play) and hand it to each wait on its play."""
        self._coming.pop((result.company_id, result.play_id), None)
        key = (result.company_id, result.play_id)
        finished = Finished.of(result)
        if finished is not None:
            self._ended[result.play_id] = finished
        for arrival in self._waits.pop(key, ()):
            if not arrival.done():
                arrival.set_result(result)

    @contextlib.contextmanager
    def awaiting(self, company_id: str, play_id: str) -> Iterator[asyncio.Future[PlayResult]]:
        """A future done when the result of ``company_id``'s play ``play_id`` is read."""
        key = (company_id, play_id)
        arrival: asyncio.Future[PlayResult] = asyncio.get_running_loop().create_future()
        self._waits.setdefault(key, set()).add(arrival)
        try:
            yield arrival
        finally:
            waits = self._waits.get(key)
            if waits is not None:
                waits.discard(arrival)
                if not waits:
                    del self._waits[key]

    def listed(self, company_id: str, status: str | None, page: PlayPage) -> list[Finished]:
        """The finished plays held of ``company_id`` that a page of ``plays.list`` admits."""
        found = []
        for play_id in list(self._ended):
            finished = self._ended.get(play_id)  # None: expired since the list was taken
            if finished is None:
                continue
            view = finished.view
            if view["company_id"] != company_id or (status is not None and view["status"] != status):
                continue
            if page.admits_play(view["flow"], view["started_at"], view["play_id"]):
                found.append(finished)
        return found

    @property
    def waiting(self) -> int:
        """Waits registered now (each awaits one play's result)."""
        return sum(len(w) for w in self._waits.values())


@contextlib.asynccontextmanager
async def reading(settings: Settings, results: PlayResults) -> AsyncIterator[asyncio.Task[None]]:
    """Read ``flow8.play-results`` into ``results`` from its end, until the block ends. Entered
    once the reader holds its position (a play ending after that is seen); a Kafka that cannot
    be reached raises here. The task yielded ends only when the reader fails."""
    from flow8_streams.runtimes.streams.client import tail_results

    ready = asyncio.Event()

    async def read() -> None:
        stream = cast("AsyncGenerator[tuple[PlayResult, float], None]", tail_results(settings, on_ready=ready.set))
        async with contextlib.aclosing(stream):  # its consumer stopped when the reading ends
            async for result, _ in stream:
                results.put(result)

    task = asyncio.create_task(read(), name="flow8-play-results")
    started = asyncio.create_task(ready.wait())
    try:
        await asyncio.wait({task, started}, return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            task.result()  # the reader's error: Kafka unreachable, say
            raise RuntimeError("the play-results reader ended before it started")  # pragma: no cover
        yield task
    finally:
        started.cancel()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):  # a failure was said by ``ready``
            await task
