"""Kafka topics of a deployment, created before a worker starts (faust does not
create the topics it reads)."""

from __future__ import annotations

import asyncio
import contextlib

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.conn import create_conn
from aiokafka.errors import KafkaConnectionError, KafkaError, TopicAlreadyExistsError

from flow8_streams.errors import StoreUnavailable
from flow8_streams.redact import redact_uri, scrub
from flow8_streams.settings import Settings


def topic_specs(settings: Settings) -> list[NewTopic]:
    """The topics as flow8 creates them: the events and checkpoints kept forever (unless
    ``topics.events_retention_ms``), the others with ``topics.transient_retention_ms`` when set.
    A topic that exists is left as it is (its retention is changed with kafka-configs)."""
    t = settings.topics
    specs = []
    for name in t.all:
        ms = t.retention_ms(name)
        configs = {"retention.ms": str(ms)} if ms is not None else {}
        specs.append(NewTopic(name, t.partitions, t.replication_factor, topic_configs=configs))
    return specs


async def kafka_unavailable(settings: Settings, exc: Exception) -> StoreUnavailable:
    """The error for a Kafka client that could not start. aiokafka says only "unable to
    bootstrap"; under SASL one more connection to the first bootstrap server tells a refused
    login from a server that does not answer. No message carries the password."""
    where = f"Kafka at {redact_uri(settings.kafka_bootstrap_servers)}"
    if not settings.kafka_security_protocol.startswith("SASL_"):
        return StoreUnavailable(
            f"cannot reach {where} ({scrub(str(exc), settings.kafka_bootstrap_servers)}); "
            "start it with `scripts/services up` or set KAFKA_BOOTSTRAP_SERVERS"
        )
    options = settings.kafka_client_options()
    host, _, port = options.pop("bootstrap_servers").split(",")[0].strip().rpartition(":")
    who = f"{settings.kafka_sasl_username!r} ({settings.kafka_security_protocol}, {settings.kafka_sasl_mechanism})"
    try:
        async with asyncio.timeout(10):
            conn = await create_conn(host or port, int(port) if host else 9092, request_timeout_ms=10_000, **options)
        conn.close()
        detail = str(exc)
    except KafkaError as probe:  # its text starts with its name
        detail = str(probe)
    except (OSError, TimeoutError, ValueError) as probe:
        detail = f"{type(probe).__name__}: {probe}"
    return StoreUnavailable(
        f"cannot connect to {where} as {who}: {scrub(detail, settings.kafka_bootstrap_servers)}; "
        "check that it runs there and that KAFKA_SASL_USERNAME, KAFKA_SASL_PASSWORD and KAFKA_SASL_MECHANISM "
        "are those of a user of the broker"
    )


async def ensure_topics(settings: Settings) -> None:
    admin = AIOKafkaAdminClient(**settings.kafka_client_options(), request_timeout_ms=10_000)
    try:
        await asyncio.wait_for(admin.start(), timeout=30)
    except (KafkaConnectionError, TimeoutError) as exc:
        await admin.close()
        raise await kafka_unavailable(settings, exc) from None
    try:
        existing = set(await admin.list_topics())
        missing = [spec for spec in topic_specs(settings) if spec.name not in existing]
        if missing:
            with contextlib.suppress(TopicAlreadyExistsError):  # another worker was quicker
                await admin.create_topics(missing)
    finally:
        await admin.close()
