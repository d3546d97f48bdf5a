"""Kafka topic retention: the events and checkpoints topics kept forever unless the operator sets
an events retention, the topics a play passes through given ``topics.transient_retention_ms``;
checked on the specs and on Apache Kafka's own description of the topics created."""

from __future__ import annotations

import asyncio
import os
import uuid

import pytest

from flow8_streams.runtimes.streams.admin import ensure_topics, topic_specs
from flow8_streams.settings import Settings

DAY = 86_400_000


def _configs(settings: Settings) -> dict[str, dict[str, str]]:
    return {spec.name.split(".", 1)[1]: dict(spec.topic_configs) for spec in topic_specs(settings)}


def test_by_default_only_the_audited_topics_are_kept_forever_the_others_the_broker_s() -> None:
    configs = _configs(Settings())
    assert configs["events"] == configs["checkpoints"] == {"retention.ms": "-1"}
    assert all(configs[t] == {} for t in ("commands", "tasks", "completions", "play-results", "dlq"))


def test_transient_and_events_retention_are_the_operator_s_choice() -> None:
    configs = _configs(Settings.model_validate({"topics": {"transient_retention_ms": DAY}}))
    assert all(configs[t] == {"retention.ms": str(DAY)} for t in ("commands", "tasks", "completions", "dlq"))
    assert configs["events"] == configs["checkpoints"] == {"retention.ms": "-1"}
    configs = _configs(Settings.model_validate({"topics": {"events_retention_ms": 30 * DAY}}))
    assert configs["events"] == {"retention.ms": str(30 * DAY)} and configs["checkpoints"] == {"retention.ms": "-1"}


def test_a_retention_too_short_to_be_deliberate_is_refused() -> None:
    with pytest.raises(ValueError, match="transient_retention_ms"):
        Settings.model_validate({"topics": {"transient_retention_ms": 1000}})


@pytest.mark.kafka
async def test_kafka_creates_the_topics_with_their_retention() -> None:
    servers = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if not servers:
        pytest.skip("KAFKA_BOOTSTRAP_SERVERS is not set; start the servers with `export $(scripts/services up)`")
    from aiokafka.admin import AIOKafkaAdminClient
    from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

    prefix = f"ret{uuid.uuid4().hex[:10]}"
    topics = {"prefix": prefix, "partitions": 1, "transient_retention_ms": DAY}
    settings = Settings.model_validate({"kafka_bootstrap_servers": servers, "topics": topics})
    await ensure_topics(settings)
    admin = AIOKafkaAdminClient(bootstrap_servers=servers)
    await admin.start()
    try:
        names = [settings.topics.tasks, settings.topics.events]
        found: dict[str, str] = {}
        deadline = asyncio.get_running_loop().time() + 30
        while len(found) < len(names):  # a new topic reaches every broker's metadata a moment after it is made
            described = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, n) for n in names])
            for response in described:
                for code, _message, _kind, name, entries in response.resources:  # DescribeConfigs v0/v1
                    for entry in entries if code == 0 else ():
                        if entry[0] == "retention.ms":
                            found[name] = entry[1]
            assert asyncio.get_running_loop().time() < deadline, described
            await asyncio.sleep(0.2)  # a poll period: Kafka gives no signal when the metadata has spread
        assert found == {settings.topics.tasks: str(DAY), settings.topics.events: "-1"}
    finally:
        await admin.delete_topics(list(settings.topics.all))
        await admin.close()
