"""A play's history off Kafka, for ``flow8 serve --streams``: what its events, audit and timeline
routes read (the streams runtime keeps a play's events on the events topic, not in MongoDB).

Where: the play's company's partition, the one its commands went to (every flow8 producer keys
them by company with Kafka's default partitioner, and a worker writes a play's events to the
partition of its commands), read from the play's start less ``START_MARGIN`` (offsets-for-times
on the records' timestamps, written by the same worker clock as the events' ``at``) up to the
play's terminal event or the partition's end as it was when the read began, read_committed,
with no consumer group (``audit.kafka.KafkaSource.play``). A play whose first event is not found
there (an upstream producer with another partitioner, or partitions added to the topic since this
instance counted them) is looked for on every partition, from the same time, and the partitions
are counted again at the next read.

Bounds: each read goes through at most ``http.history_max_records`` records and
``http.history_max_bytes`` bytes and ends within ``http.history_max_seconds``; past one the
request is refused (503, or 504 for the time) naming the setting, never answered with part of a
history. Reads borrow one of ``http.history_consumers`` consumers the instance keeps open. The
company's signed checkpoints (``checkpoints``, for a server given ``audit_public_key``) are read
from its partition of the checkpoints topic within the same bounds.

A finished play's history never changes, so it is kept, up to ``http.history_cache_bytes`` of
its events' JSON (least recently used first out), and answered from memory; hits and misses are
counted with ``cache="history"``. Reads of one play asked for at once are one read.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

import orjson
from cachetools import LRUCache

from flow8_streams.audit.checkpoints import SignedCheckpoint
from flow8_streams.audit.kafka import Budget, Consumers, KafkaSource, commands_partitions, company_partition
from flow8_streams.audit.verify import Finding, PlayHistory
from flow8_streams.domain.events import TERMINAL_EVENT_TYPES
from flow8_streams.errors import ReadTimedOut

if TYPE_CHECKING:
    from flow8_streams.metrics import Metrics
    from flow8_streams.settings import Settings

START_MARGIN = timedelta(seconds=10)
CACHE = "history"  # the ``cache`` label of the hit and miss counters


@dataclass(frozen=True, slots=True)
class _Held:
    documents: list[dict[str, object]]
    problems: list[Finding] = field(default_factory=list)
    size: int = 0

    def history(self, play_id: str, company_id: str) -> PlayHistory:
        """A history of its own for each caller (an audit sets its projection on it)."""
        return PlayHistory(play_id, company_id, list(self.documents), problems=list(self.problems))


def _finished(history: PlayHistory) -> bool:
    docs = history.documents
    return bool(docs) and docs[-1].get("type") in TERMINAL_EVENT_TYPES


class PlayHistories:
    """Histories of plays read off the events topic, bounded, pooled and cached (see the module)."""

    def __init__(self, settings: Settings, consumers: Consumers, metrics: Metrics | None = None) -> None:
        http = settings.http
        self.settings = settings
        self.consumers = consumers
        self.metrics = metrics
        self.budget = Budget(
            http.history_max_records, http.history_max_bytes, ("http.history_max_records", "http.history_max_bytes")
        )
        self.seconds = http.history_max_seconds
        self._held: LRUCache[tuple[str, str], _Held] | None = (
            LRUCache(maxsize=http.history_cache_bytes, getsizeof=lambda held: held.size)
            if http.history_cache_bytes
            else None
        )
        self._reading: dict[tuple[str, str], asyncio.Task[PlayHistory]] = {}
        self._partitions: int | None = None  # of the commands topic: what the company's partition is taken over

    def _count(self, hit: bool) -> None:
        if self.metrics is not None:
            (self.metrics.cache_hits if hit else self.metrics.cache_misses).labels(cache=CACHE).inc()

    async def get(self, company_id: str, play_id: str, started_at: datetime) -> PlayHistory:
        """``company_id``'s play ``play_id``, started at ``started_at``, as the events topic holds it."""
        key = (company_id, play_id)
        held = self._held.get(key) if self._held is not None else None
        if held is not None:
            self._count(hit=True)
            return held.history(play_id, company_id)
        self._count(hit=False)
        reading = self._reading.get(key)
        if reading is None:
            reading = asyncio.create_task(self._read(company_id, play_id, started_at), name=f"flow8-history-{play_id}")
            self._reading[key] = reading
            reading.add_done_callback(lambda done: self._read_done(key, done))
        history = await asyncio.shield(reading)
        return PlayHistory(play_id, company_id, list(history.documents), problems=list(history.problems))

    async def close(self) -> None:
        """Cancel the reads still running (their requests are gone: the server is stopping)."""
        reading = list(self._reading.values())
        for task in reading:
            task.cancel()
        await asyncio.gather(*reading, return_exceptions=True)

    def _read_done(self, key: tuple[str, str], task: asyncio.Task[PlayHistory]) -> None:
        self._reading.pop(key, None)
        if task.cancelled() or task.exception() is not None:  # retrieved: every caller may have gone
            return
        history = task.result()
        if self._held is not None and _finished(history):
            size = len(orjson.dumps(history.documents))
            with contextlib.suppress(ValueError):  # larger than the whole cache: read again when asked
                self._held[key] = _Held(history.documents, history.problems, size)

    async def _read(self, company_id: str, play_id: str, started_at: datetime) -> PlayHistory:
        since = started_at - START_MARGIN
        try:
            async with asyncio.timeout(self.seconds):
                ours = await self._company_partition(company_id)
                history = await self._source(since, [ours]).play(company_id, play_id)
                where = "company"
                if not history.documents or history.documents[0].get("seq") != 1:
                    history, where = await self._source(since, None).play(company_id, play_id), "any"
                    self._partitions = None  # the topic may have grown since it was counted: count again
        except TimeoutError:
            raise ReadTimedOut(
                f"reading play {play_id}'s events off {self.settings.topics.events} took more than "
                f"{self.seconds:g} s (http.history_max_seconds)"
            ) from None
        if self.metrics is not None:
            self.metrics.http_history_reads.labels(partitions=where).inc()
        return history

    async def checkpoints(self, company_id: str) -> list[SignedCheckpoint | Finding]:
        """The signed checkpoints on the company's partition of the checkpoints topic (a worker
        signs a company's heads on the partition of its plays), read within the same bounds."""
        topic = self.settings.topics.checkpoints
        try:
            async with asyncio.timeout(self.seconds):
                ours = await self._company_partition(company_id)
                source = KafkaSource(self.settings, partitions=[ours], budget=self.budget, consumers=self.consumers)
                return await source.checkpoints()
        except TimeoutError:
            raise ReadTimedOut(
                f"reading {topic} took more than {self.seconds:g} s (http.history_max_seconds)"
            ) from None

    def _source(self, since: datetime, partitions: list[int] | None) -> KafkaSource:
        return KafkaSource(
            self.settings, since=since, partitions=partitions, budget=self.budget, consumers=self.consumers
        )

    async def _company_partition(self, company_id: str) -> int:
        """The partition of the commands topic (and so of the events topic) Kafka's default
        partitioner gives the company's key."""
        if self._partitions is None:  # counted again only after a play was not found where this count put it
            self._partitions = await commands_partitions(self.settings, self.consumers)
        return company_partition(company_id, self._partitions)
