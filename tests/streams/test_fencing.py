"""Zombie fencing by the consumer group's generation (exactly-once v2, KIP-447), on the real broker."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from flow8_streams.runtimes.streams.kafka.producer import GroupFenced, GroupMember, GroupProducer, group_member
from tests.services import require_service

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
