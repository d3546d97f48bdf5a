"""Kafka topics of a deployment, created before a worker starts (faust does not
create the topics it reads)."""

from __future__ import annotations

import asyncio
import contextlib

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaConnectionError, TopicAlreadyExistsError

from flow8_streams.errors import StoreUnavailable
from flow8_streams.settings import Settings


def topic_specs(settings: Settings) -> list[NewTopic]:
    t = settings.topics
    keep_forever = {"retention.ms": "-1"}
    return [
        NewTopic(name, t.partitions, t.replication_factor, topic_configs=keep_forever if name == t.events else {})
        for name in (t.commands, t.completions, t.tasks, t.events, t.play_results, t.dlq)
    ]


async def ensure_topics(settings: Settings) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap_servers, request_timeout_ms=10_000)
    try:
        await asyncio.wait_for(admin.start(), timeout=30)
    except (KafkaConnectionError, TimeoutError) as exc:
        await admin.close()
        raise StoreUnavailable(
            f"cannot reach Kafka at {settings.kafka_bootstrap_servers} ({exc}); "
            "start it with `scripts/services up` or set KAFKA_BOOTSTRAP_SERVERS"
        ) from None
    try:
        existing = set(await admin.list_topics())
        missing = [spec for spec in topic_specs(settings) if spec.name not in existing]
        if missing:
            with contextlib.suppress(TopicAlreadyExistsError):  # another worker was quicker
                await admin.create_topics(missing)
    finally:
        await admin.close()
