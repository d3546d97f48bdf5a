"""Where a transactional changelog's restore ends (``changelog.last_records``), against Kafka:
committed records, commit and abort markers, aborted records and an open transaction."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from flow8_streams.runtimes.streams.changelog import FIRST_WINDOW, last_records
from tests.services import require_service

pytestmark = [pytest.mark.kafka]


@pytest.fixture
async def kafka() -> AsyncIterator[str]:
    yield require_service("KAFKA_BOOTSTRAP_SERVERS")


async def new_topic(kafka: str, partitions: int) -> str:
    name = f"t-changelog-{uuid.uuid4().hex[:8]}"
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(name, partitions, 1)])
    finally:
        await admin.close()
    return name


async def transaction(kafka: str, topic: str, partition: int, count: int, *, commit: bool = True) -> AIOKafkaProducer:
    """``count`` records to ``topic[partition]`` in one transaction, committed or aborted."""
    producer = AIOKafkaProducer(bootstrap_servers=kafka, transactional_id=f"t-{topic}-{partition}")
    await producer.start()
    await producer.begin_transaction()
    for i in range(count):
        await producer.send_and_wait(topic, f"{i}".encode(), key=b"k", partition=partition)
    if commit:
        await producer.commit_transaction()
    else:
        await producer.abort_transaction()
    return producer


async def ends_of(consumer: AIOKafkaConsumer, topic: str, partitions: int) -> dict[TopicPartition, int]:
    return await consumer.end_offsets([TopicPartition(topic, p) for p in range(partitions)])


async def test_the_last_record_is_found_behind_markers_aborted_records_and_an_open_transaction(kafka: str) -> None:
    topic = await new_topic(kafka, 5)
    producers = [
        # 0: records 0-2, commit marker 3, aborted 4-5, abort marker 6
        await transaction(kafka, topic, 0, 3),
        await transaction(kafka, topic, 0, 2, commit=False),
        # 1: nothing
        # 2: aborted records only
        await transaction(kafka, topic, 2, 3, commit=False),
        # 3: record 0, marker 1, then more aborted records than the first window holds
        await transaction(kafka, topic, 3, 1),
        await transaction(kafka, topic, 3, FIRST_WINDOW * 3, commit=False),
        # 4: record 0, marker 1, then a transaction still open: the last stable offset is 2
        await transaction(kafka, topic, 4, 1),
    ]
    open_one = AIOKafkaProducer(bootstrap_servers=kafka, transactional_id=f"t-{topic}-open")
    await open_one.start()
    producers.append(open_one)
    await open_one.begin_transaction()
    await open_one.send_and_wait(topic, b"pending", key=b"k", partition=4)

    consumer = AIOKafkaConsumer(bootstrap_servers=kafka, isolation_level="read_committed", enable_auto_commit=False)
    await consumer.start()
    try:
        ends = await ends_of(consumer, topic, 5)
        assert ends[TopicPartition(topic, 4)] == 2  # the open transaction holds the last stable offset
        last = await last_records(consumer, ends)
        assert {tp.partition: offset for tp, offset in last.items()} == {0: 2, 1: -1, 2: -1, 3: 0, 4: 0}
        # the same consumer answers again (its assignment was left empty)
        assert await last_records(consumer, ends) == last
    finally:
        await consumer.stop()
        await open_one.abort_transaction()
        for producer in producers:
            await producer.stop()
