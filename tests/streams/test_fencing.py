"""Zombie fencing by the consumer group's generation (exactly-once v2, KIP-447), on the real broker."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from flow8_streams.domain.events import verify_chain
from flow8_streams.domain.messages import StartPlay
from flow8_streams.runtimes.streams.client import CommandProducer
from flow8_streams.runtimes.streams.kafka.producer import GroupFenced, GroupMember, GroupProducer, group_member
from flow8_streams.settings import Settings
from flow8_streams.stores.mongo import MongoStore
from tests.conformance.streams_harness import EventTap, WorkerGroup, metric
from tests.services import require_service

from .support import collecting_results, fl, make_flow, running_group

DEADLINE_S = 60.0


async def until(what: str, check: Callable[[], Awaitable[bool]], timeout: float = DEADLINE_S) -> None:
    """Poll ``check`` (a broker's or another member's state: no event to await) until true."""
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout:.0f} s: {what}")
        await asyncio.sleep(0.1)


@pytest.fixture
async def kafka() -> AsyncIterator[tuple[str, str, str]]:
    """(bootstrap servers, an input topic, an output topic), one partition each, deleted after."""
    bootstrap = require_service("KAFKA_BOOTSTRAP_SERVERS")
    name = f"fence{uuid.uuid4().hex[:10]}"
    topics = [f"{name}.in", f"{name}.out"]
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(t, 1, 1) for t in topics])
        yield bootstrap, *topics  # type: ignore[misc]
    finally:
        with contextlib.suppress(Exception):
            await admin.delete_topics(topics)
        await admin.close()


def member(bootstrap: str, topic: str, group: str) -> AIOKafkaConsumer:
    return AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        isolation_level="read_committed",
        session_timeout_ms=10_000,
        heartbeat_interval_ms=500,
    )


async def committed_values(bootstrap: str, topic: str, expect: bytes) -> list[bytes]:
    """Every value a read_committed reader sees on ``topic``, read until ``expect`` came."""
    reader = AIOKafkaConsumer(bootstrap_servers=bootstrap, isolation_level="read_committed")
    await reader.start()
    try:
        tp = TopicPartition(topic, 0)
        reader.assign([tp])
        await reader.seek_to_beginning(tp)
        seen: list[bytes] = []
        async with asyncio.timeout(DEADLINE_S):
            while expect not in seen:
                batch = await reader.getmany(tp, timeout_ms=500)
                seen += [record.value for record in batch.get(tp, [])]
        return seen
    finally:
        await reader.stop()


async def group_offset(bootstrap: str, group: str, tp: TopicPartition) -> int | None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        offsets: dict[Any, Any] = await admin.list_consumer_group_offsets(group)
        found = offsets.get(tp)
        return None if found is None else int(found.offset)
    finally:
        await admin.close()


@pytest.mark.parametrize("superseded_by", ["rebalance", "leaving"])
async def test_offsets_of_a_superseded_generation_are_refused_and_their_records_never_visible(
    kafka: tuple[str, str, str], superseded_by: str
) -> None:
    """A member's generation is superseded (a second member joins and the group rebalances,
    or the member leaves): a transaction sending offsets with the old generation is refused
    as fenced, aborted, and neither its records nor its offsets are ever visible; the same
    producer then commits with the current generation."""
    bootstrap, source, sink = kafka
    group = f"{source}-group"
    tp = TopicPartition(source, 0)
    first, second = member(bootstrap, source, group), member(bootstrap, source, group)
    producer = GroupProducer(bootstrap_servers=bootstrap, transactional_id=f"{group}-worker")
    await first.start()
    started = [first]
    try:
        await until("the first member owns the partition", lambda: _owns(first, tp))
        old = group_member(first)
        assert old.generation_id >= 1 and old.member_id
        await second.start()
        started.append(second)
        if superseded_by == "leaving":
            await first.stop()
            started.remove(first)
            current = second
        else:
            current = first
        await until(
            "a new generation formed",
            lambda: _in_generation_after(old, [first, second] if current is first else [second]),
        )
        new = group_member(current)
        await producer.start()

        await producer.begin_transaction()
        await producer.send_and_wait(sink, b"zombie", partition=0)
        with pytest.raises(GroupFenced):
            await producer.send_offsets_to_transaction({tp: 5}, old)
        await producer.abort_transaction()

        await producer.begin_transaction()
        await producer.send_and_wait(sink, b"live", partition=0)
        await producer.send_offsets_to_transaction({tp: 7}, new)
        await producer.commit_transaction()

        assert await committed_values(bootstrap, sink, expect=b"live") == [b"live"]
        assert await group_offset(bootstrap, group, tp) == 7
    finally:
        await producer.stop()
        for consumer in started:
            await consumer.stop()


async def test_offsets_without_group_metadata_are_refused_by_the_producer(kafka: tuple[str, str, str]) -> None:
    """Only a ``GroupMember`` commits offsets: a bare group id (aiokafka's v0, unfenced) is refused."""
    bootstrap, source, _ = kafka
    producer = GroupProducer(bootstrap_servers=bootstrap, transactional_id=f"{source}-bare")
    await producer.start()
    try:
        await producer.begin_transaction()
        with pytest.raises(TypeError, match="GroupMember"):
            await producer.send_offsets_to_transaction({TopicPartition(source, 0): 1}, f"{source}-group")
        await producer.abort_transaction()
    finally:
        await producer.stop()


async def test_the_plain_aiokafka_producer_is_not_fenced_by_the_generation(kafka: tuple[str, str, str]) -> None:
    """Why ``GroupProducer`` exists: aiokafka's own producer commits the offsets of a member
    that left the group (v0 carries no generation), and the zombie's record becomes visible."""
    bootstrap, source, sink = kafka
    group = f"{source}-group"
    tp = TopicPartition(source, 0)
    first = member(bootstrap, source, group)
    await first.start()
    try:
        await until("the member owns the partition", lambda: _owns(first, tp))
    finally:
        await first.stop()
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, transactional_id=f"{group}-plain")
    await producer.start()
    try:
        await producer.begin_transaction()
        await producer.send_and_wait(sink, b"zombie", partition=0)
        await producer.send_offsets_to_transaction({tp: 5}, group)
        await producer.commit_transaction()
    finally:
        await producer.stop()
    assert await committed_values(bootstrap, sink, expect=b"zombie") == [b"zombie"]


async def _owns(consumer: AIOKafkaConsumer, tp: TopicPartition) -> bool:
    await consumer.getmany(timeout_ms=100)  # drives nothing but lets the assignment land
    return tp in consumer.assignment()


async def _in_generation_after(old: GroupMember, consumers: list[AIOKafkaConsumer]) -> bool:
    members = [group_member(c) for c in consumers]
    return all(m.generation_id > old.generation_id for m in members) and len({m.generation_id for m in members}) == 1


# ------------------------------------------------------------------ the SIGSTOP test (real workers)

SESSION_TIMEOUT_MS = 6_000  # the least the broker allows (group.min.session.timeout.ms): a short wait
STOPPED_PLAYS = 300
STOPPED_COMPANIES = 20
STOP_AFTER = 60  # plays finished before the SIGSTOP
AFTER_PLAYS = 40  # plays sent once the continued worker rejoined
# how long the worker stays stopped: past its transaction's timeout (6 s) and the broker's next
# look for timed-out transactions (transaction.abort.timed.out.transaction.cleanup.interval.ms,
# 10 s), so the broker aborts its open transaction and fences its producer, as a long freeze does
FROZEN_S = 20.0
SLOW_FLOW = make_flow(
    "zombie",
    fl("start", "echo", input={"n": "${input.n}"}),
    fl("wait", "sleep", "start", input={"seconds": 0.05}),
    fl("done", "echo", "wait", input={"n": "${flowlets.start.output.n}"}),
)


@pytest.fixture(scope="module")
def two_workers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WorkerGroup]:
    env = {"FLOW8_SESSION_TIMEOUT_MS": str(SESSION_TIMEOUT_MS), "FLOW8_TRANSACTIONS": "worker"}
    with running_group(tmp_path_factory.mktemp("zombie"), count=2, extra_env=env) as group:
        yield group


async def result_counts(settings: Settings) -> Counter[str]:
    """How many results each play has on flow8.play-results now (read_committed, to the end)."""
    topic = settings.topics.play_results
    reader = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap_servers, isolation_level="read_committed")
    await reader.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(settings.topics.partitions)]
        reader.assign(tps)
        await reader.seek_to_beginning(*tps)
        end = await reader.end_offsets(tps)
        counts: Counter[str] = Counter()
        async with asyncio.timeout(DEADLINE_S):
            while [tp for tp in tps if await reader.position(tp) < end[tp]]:
                for records in (await reader.getmany(timeout_ms=200)).values():
                    counts.update(orjson.loads(record.value)["play_id"] for record in records)
        return counts
    finally:
        await reader.stop()


def command_partitions_of(group: WorkerGroup, index: int) -> set[int]:
    commands = group.settings.topics.commands
    assigned = group.healthz(index)["assigned"]
    return {int(tp[len(commands) + 1 : -1]) for tp in assigned if tp.startswith(f"{commands}[")}


def company_on(partitions: set[int], count: int, every: int) -> list[str]:
    """``count`` company ids whose commands Kafka's default partitioner puts on ``partitions``."""
    from aiokafka.partitioner import DefaultPartitioner

    spread = list(range(every))
    found: list[str] = []
    for i in range(10_000):
        company = f"co-after-{i:04d}"
        if DefaultPartitioner()(company.encode(), spread, spread) in partitions:
            found.append(company)
            if len(found) == count:
                return found
    raise AssertionError(f"no {count} companies found on partitions {sorted(partitions)}")


async def send_plays(settings: Settings, plays: dict[str, str], first: int) -> None:
    async with CommandProducer(settings) as producer:
        for n, (play_id, company) in enumerate(plays.items(), start=first):
            await producer.send(StartPlay(company_id=company, flow=SLOW_FLOW.name, play_id=play_id, input={"n": n}))
        await producer.flush()


@pytest.mark.kafka
@pytest.mark.mongo
@pytest.mark.slow
@pytest.mark.timeout(360)
async def test_a_worker_stopped_past_its_session_is_fenced_then_rejoins_and_works(
    two_workers: WorkerGroup, no_leaked_tasks: None
) -> None:
    """SIGSTOP one of two workers mid-load, past the session and transaction timeouts: the
    other takes its partitions and finishes every play. Then SIGCONT: the zombie, fenced by the group's
    generation (and its producer by the broker's abort of its open transaction), commits
    nothing; it rejoins the group as a new member, gets partitions again and works: a second
    batch of plays, some of them on its partitions, all complete. Through both: no
    (play_id, seq) twice in flow8.events, every play's result once on flow8.play-results."""
    group = two_workers
    settings = group.settings
    partitions = set(range(settings.topics.partitions))
    zombie, survivor = 0, 1
    assert command_partitions_of(group, zombie), "the worker to stop owns no partition: it would prove nothing"
    companies = [f"co-{i:02d}" for i in range(STOPPED_COMPANIES)]
    plays = {str(uuid.uuid4()): companies[i % STOPPED_COMPANIES] for i in range(STOPPED_PLAYS)}
    proc = group.processes[zombie][0]
    store = await MongoStore(settings.mongodb_uri, settings.mongodb_database).open()
    tap = EventTap(settings)
    stopped = False
    try:
        for company in companies:
            await store.flows.put(company, SLOW_FLOW)
        await tap.open(from_beginning=True)
        async with collecting_results(settings) as results:
            await send_plays(settings, plays, 0)
            await tap.wait_until(lambda: len(tap.terminal) >= STOP_AFTER, 120, f"{STOP_AFTER} plays finished")
            proc.send_signal(signal.SIGSTOP)
            stopped = True
            stopped_at = time.monotonic()
            assert len(tap.terminal) < STOPPED_PLAYS, "every play finished before the SIGSTOP: nothing was in flight"

            async def survivor_owns_all() -> bool:
                return await asyncio.to_thread(command_partitions_of, group, survivor) == partitions

            def running_by_partition() -> dict[int | None, int]:
                return dict(Counter(tap.partition.get(p) for p in plays.keys() - tap.terminal.keys()))

            await until("the survivor owns every partition", survivor_owns_all, timeout=120)
            taken_over = time.monotonic() - stopped_at
            # the session runs from the worker's last heartbeat (every second), before the stop
            assert taken_over >= SESSION_TIMEOUT_MS / 1000 - 2
            await tap.wait_until(
                lambda: plays.keys() <= tap.terminal.keys(),
                180,
                lambda: f"all plays finished; still running, by events partition: {running_by_partition()}",
            )
            await results.wait_for(set(plays), 60)
            await asyncio.sleep(max(0.0, FROZEN_S - (time.monotonic() - stopped_at)))  # the fault's length
            frozen_s = time.monotonic() - stopped_at

            proc.send_signal(signal.SIGCONT)
            stopped = False
            continued_at = time.monotonic()

            async def zombie_rejoined() -> bool:
                assert proc.poll() is None, f"the continued worker exited ({proc.returncode}); its log: {group.workdir}"
                shares = await asyncio.to_thread(group.assigned_by_worker)
                return len(shares) == 2 and all(shares) and await asyncio.to_thread(group.ready)

            await until("the continued worker rejoins the group with partitions of its own", zombie_rejoined, 120)
            rejoined_s = time.monotonic() - continued_at
            assert group.healthz(zombie)["status"] == "ok"
            # its producer was replaced if the broker had aborted its open transaction and fenced it
            # (a transaction holding records at the SIGSTOP; one still empty is not the broker's to abort)
            renewed = metric(group.metrics(zombie), "flow8_producers_renewed_total")
            assert renewed in (0, 1), renewed
            owned = command_partitions_of(group, zombie)
            assert owned and owned < partitions, owned

            # the rejoined worker works: a second batch, half of it on its partitions
            ours = company_on(owned, 5, settings.topics.partitions)
            others = company_on(partitions - owned, 5, settings.topics.partitions)
            after = {str(uuid.uuid4()): (ours + others)[i % 10] for i in range(AFTER_PLAYS)}
            for company in ours + others:
                await store.flows.put(company, SLOW_FLOW)
            started_before = metric(group.metrics(zombie), "flow8_plays_started_total")
            await send_plays(settings, after, STOPPED_PLAYS)
            await tap.wait_until(lambda: after.keys() <= tap.terminal.keys(), 120, "the second batch finished")
            await results.wait_for(set(after), 60)
            started_by_zombie = metric(group.metrics(zombie), "flow8_plays_started_total") - started_before
            await tap.sync()
            print(
                f"\nfrozen {frozen_s:.1f} s; its partitions taken over {taken_over:.1f} s after the SIGSTOP; "
                f"rejoined {rejoined_s:.1f} s after the SIGCONT with partitions {sorted(owned)}; "
                f"it started {started_by_zombie:.0f} of the second batch's {AFTER_PLAYS} plays; "
                f"its producer was {'fenced and replaced' if renewed else 'not fenced (its transaction was empty)'}"
            )
        results_once = await result_counts(settings)

        every = plays | after
        assert tap.duplicates == [], f"(play_id, seq) written twice to flow8.events: {tap.duplicates[:10]}"
        assert Counter(tap.terminal[p] for p in every) == {"PlayCompleted": len(every)}
        for play_id in every:
            assert verify_chain(tap.history(play_id)) == [], play_id
        assert results.duplicates == [], f"play results delivered twice: {results.duplicates[:10]}"
        assert results_once == dict.fromkeys(every, 1), "a play result missing or delivered twice"
        assert results.results.keys() == every.keys()
        assert Counter(r.status for r in results.results.values()) == {"succeeded": len(every)}
        on_zombie = [p for p, company in after.items() if company in ours]
        assert {tap.partition[p] for p in on_zombie} <= owned
        assert started_by_zombie >= len(on_zombie), (started_by_zombie, len(on_zombie))
    finally:
        if stopped:
            proc.send_signal(signal.SIGCONT)
        await tap.close()
        await store.close()
