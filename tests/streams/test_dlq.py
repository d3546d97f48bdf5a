"""Bad input on ``flow8.commands`` goes to ``<prefix>.dlq`` with the original bytes and
headers that say why, and never stops its partition."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition

from flow8_streams.domain.messages import StartPlay
from flow8_streams.settings import Settings
from tests.conformance.streams_harness import StreamsHarness, WorkerGroup, metric

from .support import fl, make_flow

pytestmark = [pytest.mark.kafka, pytest.mark.mongo, pytest.mark.slow]

COMPANY = "dlq-co"
FLOW = make_flow("after-the-bad-ones", fl("a", "echo", input={"ok": True}))

# (original value, flow8-reason, fragments flow8-error must name)
BAD: list[tuple[bytes, str, list[str]]] = [
    (b"\x00\xffnot json at all", "not_json", ["command", "JSON"]),
    (b"[1, 2, 3]", "not_object", ["JSON object", "list"]),
    (b'{"type": "Nope", "company_id": "dlq-co"}', "unknown_type", ["unknown message type", "'Nope'"]),
    (b'{"type": "StartPlay", "company_id": "dlq-co", "play_id": "p-no-flow"}', "invalid", ["flow", "Field required"]),
    (
        b'{"type": "StartPlay", "company_id": "dlq-co", "flow": "ghost", "play_id": "p-ghost"}',
        "rejected",
        ["'dlq-co'", "'ghost'", "catalog"],
    ),
]


async def read_dlq(
    settings: Settings, count: int, timeout: float = 60, *, key: bytes | None = None
) -> list[ConsumerRecord[Any, Any]]:
    """The first ``count`` committed messages of the DLQ topic (with ``key`` only, if given), in
    offset order per partition."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap_servers, isolation_level="read_committed", enable_auto_commit=False
    )
    await consumer.start()
    try:
        tps = [TopicPartition(settings.topics.dlq, p) for p in range(settings.topics.partitions)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        got: list[ConsumerRecord[Any, Any]] = []
        async with asyncio.timeout(timeout):
            while len(got) < count:
                batch = await consumer.getmany(timeout_ms=500)
                for messages in batch.values():
                    got.extend(m for m in messages if key is None or m.key == key)
        return sorted(got, key=lambda m: (m.partition, m.offset))
    except TimeoutError:
        raise AssertionError(f"{len(got)} of {count} messages on {settings.topics.dlq} after {timeout} s") from None
    finally:
        await consumer.stop()


async def test_bad_commands_are_dead_lettered_and_the_partition_goes_on(
    harness: StreamsHarness, worker_group: WorkerGroup
) -> None:
    settings = worker_group.settings
    await harness.store.flows.put(COMPANY, FLOW)
    key = COMPANY.encode()
    for value, _, _ in BAD:
        await harness.producer.send_raw(key, value)
    # the same key, so the same partition, after all the bad ones
    good = str(uuid.uuid4())
    await harness.producer.send(StartPlay(company_id=COMPANY, flow=FLOW.name, play_id=good))
    await harness.producer.flush()

    final = await harness.wait(good)
    assert final.status.value == "succeeded"
    assert final.output == {"a": {"ok": True}}

    dead = await read_dlq(settings, len(BAD))
    assert len(dead) == len(BAD), [m.value for m in dead]
    partitions = {m.partition for m in dead}
    assert len(partitions) == 1, "messages of one key were dead-lettered to several partitions"
    offsets = []
    for message, (value, reason, fragments) in zip(dead, BAD, strict=True):
        assert message.value == value  # byte for byte
        assert message.key == key
        headers = {k: v.decode() for k, v in message.headers}
        assert headers["flow8-reason"] == reason, headers
        for fragment in fragments:
            assert fragment in headers["flow8-error"], (fragment, headers["flow8-error"])
        assert headers["flow8-source-topic"] == settings.topics.commands
        assert headers["flow8-source-partition"] == str(message.partition)
        offsets.append(int(headers["flow8-source-offset"]))
    assert offsets == list(range(offsets[0], offsets[0] + len(BAD))), offsets

    # nothing of the bad ones started a play; the good one is the only play of the company
    assert await harness.store.plays.get(COMPANY, "p-no-flow") is None
    assert await harness.store.plays.get(COMPANY, "p-ghost") is None
    assert set(harness.tap.events) == {good}

    samples = worker_group.metrics(0)
    assert metric(samples, "flow8_dlq_messages_total", topic=settings.topics.commands) == len(BAD)
    for reason in {r for _, r, _ in BAD}:
        expected = sum(1 for _, r, _ in BAD if r == reason)
        assert metric(samples, "flow8_dlq_messages_total", topic=settings.topics.commands, reason=reason) == expected
