"""What upstream and downstream systems do: produce play commands, consume play results."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaConnectionError

from flow8_streams.domain.messages import CancelPlay, StartPlay
from flow8_streams.domain.results import PlayResult
from flow8_streams.runtimes.streams import codec
from flow8_streams.runtimes.streams.admin import kafka_unavailable
from flow8_streams.settings import Settings


class CommandProducer:
    """Sends StartPlay / CancelPlay to ``flow8.commands``, keyed by company_id."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._producer = AIOKafkaProducer(**settings.kafka_client_options(), enable_idempotence=True, linger_ms=2)

    async def __aenter__(self) -> CommandProducer:
        try:
            await self._producer.start()
        except KafkaConnectionError as exc:
            await self._producer.stop()
            raise await kafka_unavailable(self.settings, exc) from None
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._producer.stop()

    async def send(self, command: StartPlay | CancelPlay) -> float:
        """Queue one command; returns the time it was handed to the producer."""
        sent_at = time.time()
        await self._producer.send(self.settings.topics.commands, codec.encode(command), key=command.company_id.encode())
        return sent_at

    async def enqueue(self, command: StartPlay | CancelPlay) -> asyncio.Future[Any]:
        """Queue one command; the future is done when the broker has it (or failed to take it)."""
        return await self._producer.send(  # type: ignore[no-any-return]
            self.settings.topics.commands, codec.encode(command), key=command.company_id.encode()
        )

    async def send_raw(self, key: bytes | None, value: bytes) -> None:
        await self._producer.send(self.settings.topics.commands, value, key=key)

    async def flush(self) -> None:
        await self._producer.flush()


async def tail_results(
    settings: Settings,
    *,
    from_beginning: bool = False,
    group_id: str | None = None,
    idle_timeout: float | None = None,
    on_ready: Callable[[], None] | None = None,
) -> AsyncIterator[tuple[PlayResult, float]]:
    """Each committed play result with the time it was consumed; stops after
    ``idle_timeout`` seconds without one (never, when None)."""
    topic = settings.topics.play_results
    consumer = AIOKafkaConsumer(
        **settings.kafka_client_options(),
        group_id=group_id,
        isolation_level="read_committed",
        auto_offset_reset="earliest" if from_beginning else "latest",
        enable_auto_commit=group_id is not None,
    )
    try:
        await consumer.start()
    except KafkaConnectionError as exc:
        await consumer.stop()
        raise await kafka_unavailable(settings, exc) from None
    try:
        if group_id is None:
            partitions = consumer.partitions_for_topic(topic) or set()
            if not partitions:
                await consumer._client.force_metadata_update()
                partitions = consumer.partitions_for_topic(topic) or set()
            tps = [TopicPartition(topic, p) for p in sorted(partitions)]
            consumer.assign(tps)
            if from_beginning:
                await consumer.seek_to_beginning(*tps)
            else:
                await consumer.seek_to_end(*tps)
                for tp in tps:
                    await consumer.position(tp)  # pin "now" before anyone produces
        else:
            consumer.subscribe([topic])
        if on_ready is not None:
            on_ready()
        last = time.monotonic()
        while True:
            batch = await consumer.getmany(timeout_ms=200, max_records=1000)
            now = time.time()
            got = False
            for messages in batch.values():
                for m in messages:
                    got = True
                    try:
                        yield PlayResult.model_validate_json(m.value or b""), now
                    except ValueError:
                        continue  # not ours
            if got:
                last = time.monotonic()
            elif idle_timeout is not None and time.monotonic() - last > idle_timeout:
                return
    finally:
        await consumer.stop()


def commands_from_jsonl(lines: Iterable[str], source: str) -> Iterable[StartPlay | CancelPlay]:
    """Parse a JSONL file of commands, naming the line of any bad one."""
    from flow8_streams.errors import InvalidCommand

    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            yield codec.decode_command(line.encode())
        except codec.BadMessage as exc:
            raise InvalidCommand(f"{source} line {number}: {exc.detail}") from None


def dumps(value: Any) -> str:
    return orjson.dumps(value, option=orjson.OPT_UTC_Z).decode()
