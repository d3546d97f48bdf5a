"""The scheduled job of ``flow8 serve --streams`` (``retaining`` with no db) against real Kafka and
FerretDB: a play past ``retention.days`` whose projection is in MongoDB and whose events are on
the events topic is archived with its events and deleted; one whose events the topic does not
hold is archived by its head and kept."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from pymongo import MongoClient

from flow8_streams.http.serve import retaining
from flow8_streams.metrics import Metrics
from flow8_streams.retention import manifest as mf
from flow8_streams.runtimes.streams.admin import ensure_topics
from flow8_streams.runtimes.streams.codec import encode
from flow8_streams.settings import Settings
from flow8_streams.stores.mongo import MongoStore
from tests.retention.test_archive_mongo import _uri
from tests.retention.test_retention_job_mongo import finished_play
from tests.services import require_service

pytestmark = [pytest.mark.kafka, pytest.mark.mongo]
COMPANY = "acme"


async def _fill(settings: Settings) -> int:
    """``old`` (events on the topic, projection in MongoDB) and ``lost`` (projection only), both
    three days old; returns ``old``'s event count."""
    await ensure_topics(settings)
    start = datetime.now(UTC) - timedelta(days=3)
    events, state = finished_play("old", COMPANY, start)
    _, lost = finished_play("lost", COMPANY, start)
    producer = AIOKafkaProducer(**settings.kafka_client_options())
    await producer.start()
    try:
        for event in events:  # stamped now, long after the play's end (as a copied topic may be): found by
            # the read of every partition to the topic's end, after the company's partition's read up to its end
            await producer.send_and_wait(settings.topics.events, encode(event), key=COMPANY.encode())
    finally:
        await producer.stop()
    store = MongoStore(settings.mongodb_uri, settings.mongodb_database)
    try:
        await store.open()
        await store.plays.save([state, lost])
    finally:
        await store.close()
    return len(events)


async def _discard(settings: Settings) -> None:
    admin = AIOKafkaAdminClient(**settings.kafka_client_options())
    await admin.start()
    try:
        ours = [t for t in await admin.list_topics() if t.startswith(f"{settings.topics.prefix}.")]
        if ours:
            await admin.delete_topics(ours)
    finally:
        await admin.close()


@pytest.fixture
def streams(tmp_path: Path) -> Iterator[Settings]:
    name = f"retkafka{uuid.uuid4().hex[:10]}"
    settings = Settings.model_validate(
        {
            "kafka_bootstrap_servers": require_service("KAFKA_BOOTSTRAP_SERVERS"),
            "mongodb_uri": _uri(),
            "mongodb_database": name,
            "topics": {"prefix": name, "partitions": 3},
            "retention": {"days": 1, "archive": str(tmp_path / "arch")},
        }
    )
    try:
        yield settings
    finally:
        asyncio.run(_discard(settings))
        client: MongoClient[dict[str, Any]] = MongoClient(settings.mongodb_uri)
        client.drop_database(name)
        client.close()


async def test_the_streams_job_archives_the_events_off_kafka(streams: Settings, tmp_path: Path) -> None:
    events = await _fill(streams)
    metrics = Metrics()

    def runs(outcome: str) -> float:
        return metrics.registry.get_sample_value("flow8_retention_runs_total", {"outcome": outcome}) or 0.0

    async with retaining(streams, None, metrics):
        async with asyncio.timeout(60):
            while runs("ok") + runs("failed") < 1:  # the job's first run starts with the block
                await asyncio.sleep(0.05)  # a poll period: the run reports only through its counters
    assert runs("ok") == 1 and runs("failed") == 0
    assert metrics.registry.get_sample_value("flow8_pruned_plays_total") == 1
    assert metrics.registry.get_sample_value("flow8_pruned_events_total") == events
    client: MongoClient[dict[str, Any]] = MongoClient(streams.mongodb_uri)
    try:
        assert {d["_id"] for d in client[streams.mongodb_database].plays.find({}, {"_id": 1})} == {"lost"}
    finally:
        client.close()
    (manifest_file,) = (tmp_path / "arch" / COMPANY).glob("*.manifest.json")
    heads = json.loads(manifest_file.read_text())["heads"]
    assert (heads["old"]["log"], heads["old"]["events"]) == ("kafka", events)
    assert heads["lost"]["log"] == mf.ABSENT
