"""Read one play's events back from ``flow8.events``: what repairs a projection.

The projector applies events in ``seq`` order and writes nothing past a missing one
(``ApplyResult.gaps``). Events are kept forever on their company's partition, so the
missing ones can always be read again: this reads the partition from its beginning
to its current end (read_committed) and keeps the events of the plays asked for. A
whole partition is read: it is meant for the rare gap (a record a consumer lost
across a rebalance), not for a steady path.
"""

from __future__ import annotations

from collections.abc import Collection

from aiokafka import AIOKafkaConsumer, TopicPartition

from flow8_streams.domain import events as ev
from flow8_streams.settings import Settings

FETCH_TIMEOUT_MS = 1000


async def read_plays(settings: Settings, partition: int, play_ids: Collection[str]) -> list[ev.Event]:
    """The events of ``play_ids`` on ``partition`` of the events topic, in log order."""
    wanted = set(play_ids)
    needles = [p.encode() for p in wanted]
    tp = TopicPartition(settings.topics.events, partition)
    consumer = AIOKafkaConsumer(
        **settings.kafka_client_options(),
        client_id=f"{settings.worker_id}-repair",
        isolation_level="read_committed",
        enable_auto_commit=False,
    )
    await consumer.start()
    try:
        consumer.assign([tp])
        await consumer.seek_to_beginning(tp)
        end = (await consumer.end_offsets([tp]))[tp]
        found: list[ev.Event] = []
        while await consumer.position(tp) < end:
            batches = await consumer.getmany(tp, timeout_ms=FETCH_TIMEOUT_MS)
            for record in batches.get(tp, []):
                value = record.value or b""
                if not any(n in value for n in needles):
                    continue
                try:
                    event = ev.event_adapter.validate_json(value)
                except ValueError:
                    continue  # a foreign record: the projector dead-lettered it already
                if event.play_id in wanted:
                    found.append(event)
        return found
    finally:
        await consumer.stop()
