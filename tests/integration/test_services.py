"""The servers scripts/services starts are the real thing and behave as the design needs."""

from __future__ import annotations

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from pymongo import AsyncMongoClient, ReturnDocument

pytestmark = [pytest.mark.kafka, pytest.mark.mongo]


@pytest.mark.kafka
async def test_kafka_transactional_produce_is_read_committed(kafka_bootstrap: str, unique: str) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(unique, num_partitions=3, replication_factor=1)])
        producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, transactional_id=unique)
        await producer.start()
        try:
            async with producer.transaction():
                await producer.send_and_wait(unique, b"kept", key=b"acme")
            await producer.begin_transaction()
            await producer.send_and_wait(unique, b"aborted", key=b"acme")
            await producer.abort_transaction()
            async with producer.transaction():
                await producer.send_and_wait(unique, b"end", key=b"acme")
        finally:
            await producer.stop()
        consumer = AIOKafkaConsumer(
            unique,
            bootstrap_servers=kafka_bootstrap,
            group_id=unique,
            auto_offset_reset="earliest",
            isolation_level="read_committed",
        )
        await consumer.start()
        try:
            seen: list[bytes] = []
            while b"end" not in seen:
                batch = await consumer.getmany(timeout_ms=5000)
                assert batch, "no message within 5 s"
                seen += [m.value for msgs in batch.values() for m in msgs if m.value is not None]
        finally:
            await consumer.stop()
        assert seen == [b"kept", b"end"]
    finally:
        await admin.delete_topics([unique])
        await admin.close()


@pytest.mark.mongo
async def test_mongo_atomic_increment_and_guarded_write(mongodb_uri: str, unique: str) -> None:
    client: AsyncMongoClient = AsyncMongoClient(mongodb_uri)
    try:
        coll = client[unique]["kv"]
        for _ in range(3):
            doc = await coll.find_one_and_update(
                {"_id": "acme/total"}, {"$inc": {"value": 2}}, upsert=True, return_document=ReturnDocument.AFTER
            )
        assert doc is not None and doc["value"] == 6
        plays = client[unique]["plays"]
        await plays.insert_one({"_id": "p1", "seq": 5})
        stale = await plays.update_one({"_id": "p1", "seq": {"$lt": 3}}, {"$set": {"seq": 3}})
        assert stale.modified_count == 0
        fresh = await plays.update_one({"_id": "p1", "seq": {"$lt": 7}}, {"$set": {"seq": 7}})
        assert fresh.modified_count == 1
    finally:
        await client.drop_database(unique)
        await client.close()
