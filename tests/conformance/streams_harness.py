"""The conformance ``Harness`` over the streams runtime: real ``flow8 worker`` processes
on the Kafka broker and the MongoDB wire-protocol server that scripts/services starts.

A test talks to the runtime only as its users do: StartPlay / CancelPlay on
``flow8.commands``, the event log read from ``flow8.events`` (read_committed),
the projection and KV store read from MongoDB. ``restart`` is ``kill -9``.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import urllib.request
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition
from prometheus_client.parser import text_string_to_metric_families

from flow8_streams.domain.events import TERMINAL_EVENT_TYPES, Event, event_adapter
from flow8_streams.domain.flow import FlowDefinition
from flow8_streams.domain.messages import CancelPlay, StartPlay
from flow8_streams.domain.state import PlayState
from flow8_streams.engine import fold
from flow8_streams.runtimes.streams import launcher
from flow8_streams.runtimes.streams.client import CommandProducer
from flow8_streams.settings import Settings
from flow8_streams.stores.mongo import MongoStore

from .harness import EVENT_TIMEOUT_S, EventPredicate

Sample = tuple[str, frozenset[tuple[str, str]]]


def parse_metrics(text: str) -> dict[Sample, float]:
    """Prometheus text as ``{(sample name, frozenset(labels)): value}``."""
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def metric(samples: dict[Sample, float], name: str, **labels: str) -> float:
    """The sum of ``name``'s samples whose labels include ``labels`` (0 when there is none)."""
    want = set(labels.items())
    return sum(value for (n, have), value in samples.items() if n == name and want <= have)


class WorkerGroup(launcher.WorkerGroup):
    """The launcher's group, for tests: it waits until the group settled, and reads a
    worker's /healthz and /metrics. Channels are off (FLOW8_CHANNELS=0: many workers on one
    machine) unless ``extra_env`` or ``worker_env`` turn them on."""

    ready_timeout_s = 90.0

    def port(self, index: int = 0) -> int:
        """The HTTP port (/healthz, /metrics) of the index-th running worker."""
        return self.processes[index][1]

    def pid(self, index: int = 0) -> int:
        return self.processes[index][0].pid

    def get(self, index: int, path: str) -> tuple[str, bytes]:
        """GET ``path`` on a worker's HTTP port: (content type, body)."""
        url = f"http://127.0.0.1:{self.port(index)}{path}"
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.headers.get("Content-Type", ""), response.read()

    def healthz(self, index: int = 0) -> Any:
        return orjson.loads(self.get(index, "/healthz")[1])

    def metrics(self, index: int = 0) -> dict[Sample, float]:
        """A worker's /metrics, parsed (see ``metric`` to read one)."""
        return parse_metrics(self.get(index, "/metrics")[1].decode())

    async def discard(self) -> None:
        """Delete the group's topics (its own and faust's): after ``stop``.

        Its database stays: dropping a database on FerretDB (SQLite) right after the
        workers stopped crashed the server (SIGBUS in the WAL) while one of their last
        queries still ran there."""
        from aiokafka.admin import AIOKafkaAdminClient

        admin = AIOKafkaAdminClient(**self.settings.kafka_client_options())
        await admin.start()
        try:
            ours = [t for t in await admin.list_topics() if t.startswith((f"{self.name}.", f"{self.name}-"))]
            if ours:
                await admin.delete_topics(ours)
        finally:
            await admin.close()


class EventTap:
    """Reads ``flow8.events`` (read_committed) in the background; counts any (play_id, seq) seen twice."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.events: dict[str, dict[int, Event]] = defaultdict(dict)
        self.duplicates: list[tuple[str, int]] = []
        self.terminal: dict[str, str] = {}  # play_id -> type of its terminal event
        self.partition: dict[str, int] = {}  # play_id -> the events partition its events are on
        self.offset: dict[tuple[str, int], int] = {}  # (play_id, seq) -> its record's offset
        self.first_since_mark: dict[int, float] = {}  # partition -> when the tap first read from it since mark()
        self._changed = asyncio.Condition()
        self._task: asyncio.Task[None] | None = None
        self._consumer: AIOKafkaConsumer | None = None

    async def open(self, *, from_beginning: bool = False) -> None:
        topic = self.settings.topics.events
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.settings.kafka_bootstrap_servers,
            isolation_level="read_committed",
            enable_auto_commit=False,
        )
        await consumer.start()
        tps = [TopicPartition(topic, p) for p in range(self.settings.topics.partitions)]
        consumer.assign(tps)
        if from_beginning:
            await consumer.seek_to_beginning(*tps)
        else:
            await consumer.seek_to_end(*tps)
            for tp in tps:
                await consumer.position(tp)
        self._consumer = consumer
        self._task = asyncio.create_task(self._run(), name="event-tap")

    async def _run(self) -> None:
        assert self._consumer is not None
        while True:
            batch = await self._consumer.getmany(timeout_ms=200)
            if not batch:
                continue
            now = time.monotonic()
            for messages in batch.values():
                for m in messages:
                    self.first_since_mark.setdefault(m.partition, now)
                    event = event_adapter.validate_json(m.value or b"")
                    seen = self.events[event.play_id]
                    if event.seq in seen:
                        self.duplicates.append((event.play_id, event.seq))
                    seen[event.seq] = event
                    self.partition[event.play_id] = m.partition
                    self.offset[(event.play_id, event.seq)] = m.offset
                    if event.type in TERMINAL_EVENT_TYPES:
                        self.terminal[event.play_id] = event.type
            async with self._changed:
                self._changed.notify_all()

    def mark(self) -> float:
        """From now on, ``first_since_mark`` notes when each partition next yields an event."""
        self.first_since_mark = {}
        return time.monotonic()

    def history(self, play_id: str) -> list[Event]:
        return [e for _, e in sorted(self.events.get(play_id, {}).items())]

    async def wait_for(self, play_id: str, predicate: EventPredicate, timeout: float = EVENT_TIMEOUT_S) -> Event:
        async def first() -> Event:
            async with self._changed:
                while True:
                    for event in self.history(play_id):
                        if predicate(event):
                            return event
                    await self._changed.wait()

        try:
            async with asyncio.timeout(timeout):
                return await first()
        except TimeoutError:
            raise AssertionError(f"play {play_id}: no matching event within {timeout} s") from None

    async def sync(self, timeout: float = 30) -> None:
        """Until the tap has read every event committed by now (after a kill: all the victim wrote)."""
        consumer = self._consumer
        assert consumer is not None
        tps = sorted(consumer.assignment())
        end = await consumer.end_offsets(tps)
        async with asyncio.timeout(timeout):
            while [tp for tp in tps if await consumer.position(tp) < end[tp]]:
                await asyncio.sleep(0.05)  # the reader's position has no event of its own

    async def wait_until(self, condition: Callable[[], bool], timeout: float, what: str | Callable[[], str]) -> None:
        """Until ``condition()`` holds, re-checked after each batch of events read."""

        async def until() -> None:
            async with self._changed:
                while not condition():
                    if self._task is not None and self._task.done():
                        self._task.result()  # the reader died: say why
                    await self._changed.wait()

        try:
            async with asyncio.timeout(timeout):
                await until()
        except TimeoutError:
            raise AssertionError(f"not within {timeout} s: {what if isinstance(what, str) else what()}") from None

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._consumer is not None:
            await self._consumer.stop()


class StreamsHarness:
    def __init__(self, group: WorkerGroup) -> None:
        self.group = group
        self.settings = group.settings
        self.tap = EventTap(self.settings)
        self.store = MongoStore(self.settings.mongodb_uri, self.settings.mongodb_database)
        self.producer = CommandProducer(self.settings)
        self.wait_timeout = EVENT_TIMEOUT_S

    async def open(self) -> StreamsHarness:
        await self.store.open()
        await self.producer.__aenter__()
        await self.tap.open()
        return self

    async def close(self) -> None:
        await self.tap.close()
        await self.producer.__aexit__()
        await self.store.close()

    async def __aenter__(self) -> StreamsHarness:
        return await self.open()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def start(self, flow: FlowDefinition, input: Any = None, *, company_id: str, play_id: str) -> None:
        await self.store.flows.put(company_id, flow)
        command = StartPlay(
            company_id=company_id, flow=flow.name, flow_version=flow.version, play_id=play_id, input=input
        )
        await self.producer.send(command)
        await self.producer.flush()

    async def run(self, flow: FlowDefinition, input: Any = None, *, company_id: str, play_id: str) -> PlayState:
        await self.start(flow, input, company_id=company_id, play_id=play_id)
        return await self.wait(play_id)

    async def cancel(self, play_id: str, company_id: str) -> None:
        await self.producer.send(CancelPlay(company_id=company_id, play_id=play_id))
        await self.producer.flush()

    async def wait(self, play_id: str) -> PlayState:
        await self.tap.wait_for(play_id, lambda e: e.type in TERMINAL_EVENT_TYPES, self.wait_timeout)
        state = fold(self.tap.history(play_id))
        assert state is not None
        return state

    async def events(self, play_id: str) -> list[Event]:
        return self.tap.history(play_id)

    async def wait_for_event(self, play_id: str, predicate: EventPredicate) -> Event:
        return await self.tap.wait_for(play_id, predicate, self.wait_timeout)

    async def projection(self, company_id: str, play_id: str) -> PlayState | None:
        """The projector writes in batches after the events: wait until it caught up."""
        want = len(self.tap.history(play_id))
        deadline = time.monotonic() + EVENT_TIMEOUT_S
        while True:
            state = await self.store.plays.get(company_id, play_id)
            if (state is not None and state.seq >= want) or time.monotonic() > deadline:
                return state
            await asyncio.sleep(0.05)  # the projection has no event of its own to await

    async def kv_get(self, company_id: str, key: str) -> Any:
        entry = await self.store.kv.get(company_id, key)
        return None if entry is None else entry.value

    async def restart(self) -> None:
        self.group.kill()
        await self.group.start()
