"""Helpers of the streams runtime's own tests (real ``flow8 worker`` processes)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

from flow8_streams.domain.events import TERMINAL_EVENT_TYPES, verify_chain
from flow8_streams.domain.flow import FlowDefinition
from flow8_streams.domain.results import PlayResult
from flow8_streams.domain.state import PlayStatus
from flow8_streams.engine import fold
from flow8_streams.modules import builtin
from flow8_streams.runtimes.streams.client import tail_results
from flow8_streams.settings import Settings
from flow8_streams.stores.mongo import MongoStore
from tests.conformance.streams_harness import EventTap, WorkerGroup
from tests.services import require_service


def make_flow(name: str, *flowlets: dict[str, Any]) -> FlowDefinition:
    """A validated flow of built-in modules."""
    return FlowDefinition.model_validate({"name": name, "flowlets": list(flowlets)}).check(builtin.MODULES)


def fl(name: str, module: str, *depends_on: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "module_ref": module, "depends_on": list(depends_on), **extra}


COUNTER = "plays_done"

# The fault tests' flow: an async step (plays are in flight over time) and a KV counter.
FLOW = make_flow(
    "faulty",
    fl("start", "echo", input={"n": "${input.n}"}),
    fl("wait", "sleep", "start", input={"seconds": 0.05}),
    # FerretDB answers "database is locked" now and then under this load: a store error is
    # retryable, and a retried increment counts once (its op id names the play and flowlet)
    fl("count", "kv.incr", "start", input={"key": COUNTER, "by": 1}, retry={"max_attempts": 5, "backoff_ms": 100}),
    fl("done", "echo", "wait", "count", input={"n": "${flowlets.start.output.n}", "count": "${flowlets.count.output}"}),
)


async def assert_each_play_once(
    tap: EventTap, results: ResultCollector, plays: dict[str, str], number: dict[str, int], store: MongoStore
) -> None:
    """Exactly once, for plays of ``FLOW`` (play id -> company; ``number``: its input n): every
    play completed once, no event written twice, every history chains, one result per play,
    and each company's counter counted each of its plays once."""
    outcomes = Counter(tap.terminal.get(p) for p in plays)
    assert outcomes == {"PlayCompleted": len(plays)}, outcomes
    assert tap.duplicates == [], f"(play_id, seq) written twice to flow8.events: {tap.duplicates[:10]}"

    # every history chains from genesis and folds to a succeeded play with one start and one end
    for play_id, company in plays.items():
        history = tap.history(play_id)
        assert verify_chain(history) == [], (play_id, verify_chain(history))
        types = [e.type for e in history]
        assert types.count("PlayStarted") == 1 and sum(t in TERMINAL_EVENT_TYPES for t in types) == 1, types
        state = fold(history)
        assert state is not None and state.status is PlayStatus.SUCCEEDED, (play_id, types)
        assert state.company_id == company

    # one result per play, all succeeded, nothing else on the topic
    assert results.duplicates == [], f"play results delivered twice: {results.duplicates[:10]}"
    assert results.results.keys() == plays.keys()
    statuses = Counter(r.status for r in results.results.values())
    assert statuses == {"succeeded": len(plays)}, statuses
    for play_id, result in results.results.items():
        assert result.company_id == plays[play_id]
        assert result.output["done"]["n"] == number[play_id], result.output

    # the counters: each company counted each of its plays exactly once
    expected = Counter(plays.values())
    counted: dict[str, float] = {}
    for company in expected:
        entry = await store.kv.get(company, COUNTER)
        counted[company] = 0 if entry is None else entry.value
    wrong = {c: (counted[c], n) for c, n in expected.items() if counted[c] != n}
    assert wrong == {}, f"kv counters (got, expected) that are off: {wrong}"


async def projected_within(store: MongoStore, results: dict[str, PlayResult], within: float) -> dict[str, str]:
    """Polls the projection until every play's document is final and agrees with its result, or
    ``within`` seconds pass; returns what still differs, by play. One listing a round: the group's
    database holds only this test's plays, and a read by id scans the collection on FerretDB."""
    deadline = time.monotonic() + within
    while True:
        projected = {s.play_id: s for s in await store.plays.list(None, None, limit=2 * len(results))}
        unsettled: dict[str, str] = {}
        for play_id, result in results.items():
            doc = projected.get(play_id)
            if doc is None:
                unsettled[play_id] = "no document"
            elif doc.company_id != result.company_id:
                unsettled[play_id] = f"document of company {doc.company_id}, result of {result.company_id}"
            elif doc.status.value != result.status or doc.output != result.output:
                unsettled[play_id] = f"document {doc.status.value} (seq {doc.seq}), result {result.status}"
        if not unsettled or time.monotonic() > deadline:
            return unsettled
        await asyncio.sleep(0.5)  # the projection has no event a reader can await


@contextlib.contextmanager
def running_group(
    workdir: Path,
    count: int = 1,
    *,
    kafka: str | None = None,
    mongodb_uri: str | None = None,
    discard: bool = True,
    **options: Any,
) -> Iterator[WorkerGroup]:
    """``count`` workers on topics, a group and a database of their own; all stopped at the end,
    and their topics deleted (unless FLOW8_TEST_KEEP=1 or not ``discard``). ``options`` go to
    ``WorkerGroup``; ``kafka`` and ``mongodb_uri`` name servers of the test's own instead of the
    shared ones (a private broker goes with its topics: nothing to discard)."""
    kafka = kafka or require_service("KAFKA_BOOTSTRAP_SERVERS")
    mongodb_uri = mongodb_uri or require_service("MONGODB_URI")
    # FLOW8_TEST_WORKER_LOG_LEVEL=info makes the workers' logs (in ``workdir``) tell more when a test fails
    log_level = os.environ.get("FLOW8_TEST_WORKER_LOG_LEVEL", "warning")
    # FLOW8_TEST_TRANSACTIONS=worker runs them with one transaction per worker (FLOW8_TRANSACTIONS)
    mode = os.environ.get("FLOW8_TEST_TRANSACTIONS")
    if mode:
        options["extra_env"] = {"FLOW8_TRANSACTIONS": mode, **options.get("extra_env", {})}
    group = WorkerGroup(kafka, mongodb_uri, workdir, count=count, log_level=log_level, **options)
    try:
        asyncio.run(group.start())
        yield group
    finally:
        group.stop()
        assert group.processes == []
        if discard and os.environ.get("FLOW8_TEST_KEEP") != "1":  # keep the topics to look at after a failure
            asyncio.run(group.discard())


class ResultCollector:
    """Every play result on ``flow8.play-results`` (read_committed, from the beginning), in the background."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.results: dict[str, Any] = {}
        self.seen: dict[str, int] = {}
        self.arrivals: list[float] = []  # when each result was read (monotonic), in order
        self._changed = asyncio.Condition()
        self._ready = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @property
    def duplicates(self) -> list[str]:
        return sorted(play_id for play_id, n in self.seen.items() if n > 1)

    async def open(self) -> ResultCollector:
        self._task = asyncio.create_task(self._run(), name="result-collector")
        ready = asyncio.create_task(self._ready.wait())
        await asyncio.wait({ready, self._task}, return_when=asyncio.FIRST_COMPLETED)
        if not ready.done():
            ready.cancel()
            self._task.result()  # the consumer failed to start: raise why
        return self

    async def _run(self) -> None:
        async for result, _ in tail_results(self.settings, from_beginning=True, on_ready=self._ready.set):
            self.results[result.play_id] = result
            self.arrivals.append(time.monotonic())
            self.seen[result.play_id] = self.seen.get(result.play_id, 0) + 1
            async with self._changed:
                self._changed.notify_all()

    async def wait_for(self, play_ids: set[str], timeout: float) -> None:
        async def until() -> None:
            async with self._changed:
                while not play_ids <= self.results.keys():
                    assert self._task is not None
                    if self._task.done():
                        self._task.result()
                    await self._changed.wait()

        try:
            async with asyncio.timeout(timeout):
                await until()
        except TimeoutError:
            missing = len(play_ids - self.results.keys())
            raise AssertionError(f"{missing} of {len(play_ids)} play results missing after {timeout} s") from None

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


@contextlib.asynccontextmanager
async def collecting_results(settings: Settings) -> AsyncIterator[ResultCollector]:
    collector = await ResultCollector(settings).open()
    try:
        yield collector
    finally:
        await collector.close()


@contextlib.asynccontextmanager
async def watching(settings: Settings, companies: list[str]) -> AsyncIterator[tuple[MongoStore, EventTap]]:
    """The group's store, with ``FLOW`` in each company's catalog, and a tap on its events from
    the beginning: what a fault test watches its plays through."""
    store = await MongoStore(settings.mongodb_uri, settings.mongodb_database).open()
    tap = EventTap(settings)
    try:
        for company in companies:
            await store.flows.put(company, FLOW)
        await tap.open(from_beginning=True)
        yield store, tap
    finally:
        await tap.close()
        await store.close()


async def all_finished(
    settings: Settings, tap: EventTap, plays: dict[str, str], within: float, unfinished: Callable[[], str]
) -> None:
    """Until every play of ``plays`` (play id -> company) ended, else fails saying ``unfinished()``
    and where three of those still running went (``trails``)."""
    try:
        await tap.wait_until(lambda: plays.keys() <= tap.terminal.keys(), within, unfinished)
    except AssertionError as exc:
        stuck = {p: plays[p] for p in sorted(plays.keys() - tap.terminal.keys())[:3]}
        raise AssertionError(f"{exc}\n{await trails(settings, stuck, tap)}") from None


async def trails(settings: Settings, stuck: dict[str, str], tap: EventTap) -> str:
    """``trail`` of each partition ``stuck`` plays (play id -> company) are on: where the tap saw
    their events, else where Kafka's default partitioner puts their company's commands."""
    from aiokafka.partitioner import DefaultPartitioner

    every = list(range(settings.topics.partitions))
    where: dict[int, list[str]] = {}
    for play_id, company in stuck.items():
        partition = tap.partition.get(play_id)
        if partition is None:
            partition = DefaultPartitioner()(company.encode(), every, every)
        where.setdefault(partition, []).append(play_id)
    return "\n".join([await trail(settings, ids, p) for p, ids in sorted(where.items())])


async def trail(settings: Settings, play_ids: list[str], partition: int) -> str:
    """Where ``play_ids`` went on ``partition`` of the commands, tasks and completions topics and
    the plays table's changelog:
    each record of theirs with its offset, committed or aborted (read uncommitted and committed
    both), and the group's committed offset there; what a play that stopped needs explaining."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    topics = settings.topics
    table = f"{settings.group_id}-plays-changelog"  # faust's name for the plays table's changelog
    tps = [TopicPartition(t, partition) for t in (topics.commands, topics.tasks, topics.completions, table)]
    committed = await group_offsets(settings)
    seen: dict[str, dict[tuple[str, int], str]] = {}
    for isolation in ("read_committed", "read_uncommitted"):
        consumer = AIOKafkaConsumer(
            **settings.kafka_client_options(), isolation_level=isolation, enable_auto_commit=False
        )
        await consumer.start()
        try:
            consumer.assign(tps)
            await consumer.seek_to_beginning(*tps)
            ends = await consumer.end_offsets(tps)
            found = seen.setdefault(isolation, {})
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(20):
                    while [tp for tp in tps if await consumer.position(tp) < ends[tp]]:
                        for tp, records in (await consumer.getmany(timeout_ms=500)).items():
                            for r in records:
                                text = (
                                    (r.key or b"").decode(errors="replace")
                                    + " "
                                    + (r.value or b"").decode(errors="replace")
                                )
                                for play_id in play_ids:
                                    if play_id in text:
                                        found[(tp.topic, r.offset)] = text[:160]
        finally:
            await consumer.stop()
    lines = []
    for tp in tps:
        meta = committed.get(tp)
        lines.append(f"{tp.topic}[{partition}] committed at {None if meta is None else meta.offset}")
    for (topic, offset), text in sorted(seen.get("read_uncommitted", {}).items()):
        state = "committed" if (topic, offset) in seen.get("read_committed", {}) else "ABORTED"
        lines.append(f"  {topic}@{offset} ({state}): {text}")
    return "\n".join(lines)


async def group_offsets(settings: Settings) -> dict[Any, Any]:
    """The worker group's committed offsets (TopicPartition -> OffsetAndMetadata)."""
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(**settings.kafka_client_options())
    await admin.start()
    try:
        return dict(await admin.list_consumer_group_offsets(settings.group_id))
    finally:
        await admin.close()
