"""How fast retention archives and prunes on the streams runtime: plays and events per second when
each play's events are read off the events topic (Kafka) and its projection is in MongoDB.

    export $(scripts/services up | grep = | xargs)
    .venv/bin/python scripts/bench_archive_kafka.py [--plays 2000] [--others 2000] [--batch 10000]

Writes PLAYS finished plays of a 4-flowlet diamond (10 events each, a second apart, three days
ago) of company ``acme`` to the events topic of a prefix of its own (records stamped with their
events' time, as a worker stamps them, keyed by company) and their projections to a database of
its own, plus OTHERS plays of other companies' events (what a read of a shared partition goes
through); then times what ``flow8 archive --mongodb --prune`` does for ``acme``: the company's
partition read once per batch, every play checked whole against its projection, the archive
written, read back and checked, the projections deleted. Topics and database are deleted at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient

from flow8_streams.domain.flow import FlowDefinition
from flow8_streams.domain.messages import FlowletResult, Start
from flow8_streams.engine import decide, fold
from flow8_streams.modules import builtin
from flow8_streams.retention import job
from flow8_streams.runtimes.streams.admin import ensure_topics
from flow8_streams.runtimes.streams.codec import encode
from flow8_streams.settings import Settings
from flow8_streams.stores.mongo import MongoStore

FLOW = FlowDefinition.model_validate(
    {
        "name": "diamond",
        "flowlets": [
            {"name": "a", "module_ref": "echo"},
            {"name": "b", "module_ref": "echo", "depends_on": ["a"]},
            {"name": "c", "module_ref": "echo", "depends_on": ["a"]},
            {"name": "d", "module_ref": "echo", "depends_on": ["b", "c"]},
        ],
    }
).check(builtin.MODULES)


def play(play_id: str, company: str, start: datetime) -> tuple[list, object]:  # type: ignore[type-arg]
    events = decide(None, Start(play_id=play_id, company_id=company, flow=FLOW, input={}), start)
    state = fold(events)
    for i, name in enumerate("abcd", start=1):
        at = start + timedelta(milliseconds=10 * i)
        result = FlowletResult(
            play_id=play_id, company_id=company, flowlet=name, attempt=1, ok=True, output={}, started_at=at, ended_at=at
        )
        more = decide(state, result, at)  # type: ignore[arg-type]
        events += more
        state = fold(more, state)
    return events, state


async def fill(settings: Settings, plays: int, others: int) -> int:
    await ensure_topics(settings)
    producer = AIOKafkaProducer(**settings.kafka_client_options(), linger_ms=20)
    store = MongoStore(settings.mongodb_uri, settings.mongodb_database)
    await producer.start()
    await store.open()
    t0 = datetime.now(UTC) - timedelta(days=3)
    events_of_acme = 0
    try:
        states = []
        for n in range(plays + others):
            company = "acme" if n < plays else f"other{n % 7}"
            events, state = play(f"p{n}", company, t0 + timedelta(seconds=n % plays if plays else n))
            for event in events:
                stamp = int(event.at.timestamp() * 1000)
                await producer.send(settings.topics.events, encode(event), key=company.encode(), timestamp_ms=stamp)
            if company == "acme":
                states.append(state)
                events_of_acme += len(events)
            if len(states) == 500:
                await store.plays.save(states)
                states = []
        await store.plays.save(states)
        await producer.flush()
    finally:
        await producer.stop()
        await store.close()
    return events_of_acme


async def discard(settings: Settings) -> None:
    admin = AIOKafkaAdminClient(**settings.kafka_client_options())
    await admin.start()
    try:
        ours = [t for t in await admin.list_topics() if t.startswith(f"{settings.topics.prefix}.")]
        if ours:
            await admin.delete_topics(ours)
    finally:
        await admin.close()
    from pymongo import MongoClient

    client: MongoClient[dict[str, object]] = MongoClient(settings.mongodb_uri)
    client.drop_database(settings.mongodb_database)
    client.close()


SPENT = {"kafka": 0.0}  # wall seconds in the Kafka reads (the rest: MongoDB, the archive, the deletes)


async def archive(settings: Settings, to: Path) -> list[job.Outcome]:
    from flow8_streams.retention.kafka_log import KafkaLog

    fill = KafkaLog.fill

    async def timed(self: KafkaLog, *args: object) -> dict[str, str]:
        began = time.perf_counter()
        try:
            return await fill(self, *args)  # type: ignore[arg-type]
        finally:
            SPENT["kafka"] += time.perf_counter() - began

    KafkaLog.fill = timed  # type: ignore[method-assign]
    async with job.open_mongodb(settings) as store:
        return await job.run(
            store, settings.retention, companies=["acme"], older=None, to=str(to), prune=True, dry_run=False
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--plays", type=int, default=2000)
    parser.add_argument("--others", type=int, default=2000)
    parser.add_argument("--batch", type=int, default=10_000)
    args = parser.parse_args()
    name = f"benchretention{uuid.uuid4().hex[:8]}"
    settings = Settings.model_validate(
        {
            "mongodb_database": name,
            "topics": {"prefix": name},
            "retention": {"days": 1, "batch_plays": args.batch},
        }
    )
    try:
        events = asyncio.run(fill(settings, args.plays, args.others))
        print(f"{args.plays} plays ({events} events) of acme, {args.others} of other companies", flush=True)
        with tempfile.TemporaryDirectory() as to:
            wall, cpu = time.perf_counter(), time.process_time()
            (outcome,) = asyncio.run(archive(settings, Path(to)))
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        assert outcome.pruned == args.plays and not outcome.kept, outcome.as_json()
        print(
            f"archive --prune: {wall:.2f} s wall, {cpu:.2f} s CPU: {outcome.plays / wall:,.0f} plays/s, "
            f"{outcome.events / wall:,.0f} events/s ({outcome.events / cpu:,.0f} per CPU-second); "
            f"{len(outcome.archives)} archives",
            flush=True,
        )
        print(
            f"  of which reading the events off Kafka: {SPENT['kafka']:.2f} s "
            f"({outcome.events / SPENT['kafka']:,.0f} events/s); the rest is MongoDB, the archive and the deletes",
            flush=True,
        )
    finally:
        asyncio.run(discard(settings))


if __name__ == "__main__":
    main()
