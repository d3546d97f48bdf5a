#!/usr/bin/env python3
"""What one read of a play's history off ``flow8.events`` costs ``flow8 serve --streams``: a
consumer started for the read, against one lent by the instance's pool (``audit.kafka.Consumers``),
and a finished play answered from the history cache.

    scripts/bench_history.py                       # $KAFKA_BOOTSTRAP_SERVERS, topics of its own (deleted after)
    scripts/bench_history.py --plays 200 --events 12 --noise 20000 --reads 200 --concurrency 8 --json

It writes ``--plays`` histories of ``--events`` events of one company (one partition) among ``--noise``
records of other companies, then reads play histories ``--reads`` times one after the other and
``--concurrency`` at a time, each way: ``fresh`` (a consumer started and stopped per read, as ``flow8
audit`` does), ``pooled`` (``http.history_consumers`` consumers kept open, 4 by default), ``cached``
(``PlayHistories`` with its cache: a finished play read once, then answered from memory). Prints
reads/s and p50/p95/p99 latency per way. Numbers, not assertions: compare runs on one machine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from flow8_streams.audit.kafka import Budget, Consumers, KafkaSource  # noqa: E402
from flow8_streams.http.history import PlayHistories  # noqa: E402
from flow8_streams.settings import Settings  # noqa: E402

COMPANY = "acme"


def documents(play_id: str, events: int) -> list[bytes]:
    """A play's events as the runtime writes them, in shape (the bench reads, it does not verify)."""
    kinds = ["PlayStarted", *["FlowletCompleted"] * (events - 2), "PlayCompleted"]
    at = datetime.now(UTC).isoformat()
    return [
        orjson.dumps(
            {"play_id": play_id, "company_id": COMPANY, "seq": n, "type": kind, "at": at, "payload": {"pad": "x" * 400}}
        )
        for n, kind in enumerate(kinds, 1)
    ]


async def write(settings: Settings, plays: list[str], events: int, noise: int) -> None:
    from aiokafka import AIOKafkaProducer

    from flow8_streams.runtimes.streams.admin import ensure_topics

    await ensure_topics(settings)
    producer = AIOKafkaProducer(**settings.kafka_client_options(), linger_ms=5)
    await producer.start()
    try:
        sent = []
        for i in range(noise):  # other companies' records, on every partition
            company = f"c{i % 97}"
            doc = {"play_id": f"n{i}", "company_id": company, "seq": 1, "type": "PlayStarted", "payload": {}}
            sent.append(await producer.send(settings.topics.events, orjson.dumps(doc), key=company.encode()))
        for play_id in plays:
            for record in documents(play_id, events):
                sent.append(await producer.send(settings.topics.events, record, key=COMPANY.encode()))
        await asyncio.gather(*sent)
    finally:
        await producer.stop()


async def timed(reads: int, concurrency: int, read: Callable[[int], Awaitable[Any]]) -> dict[str, Any]:
    latencies: list[float] = []
    queue = iter(range(reads))

    async def client() -> None:
        for i in queue:
            began = time.perf_counter()
            await read(i)
            latencies.append(time.perf_counter() - began)

    began = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    seconds = time.perf_counter() - began
    cuts = statistics.quantiles(latencies, n=100, method="inclusive")
    return {
        "reads": reads,
        "concurrency": concurrency,
        "per_second": round(reads / seconds, 1),
        "p50_ms": round(cuts[49] * 1000, 2),
        "p95_ms": round(cuts[94] * 1000, 2),
        "p99_ms": round(cuts[98] * 1000, 2),
    }


async def bench(args: argparse.Namespace) -> list[dict[str, Any]]:
    from aiokafka.partitioner import DefaultPartitioner

    prefix = f"bench{uuid.uuid4().hex[:8]}"
    settings = Settings(topics={"prefix": prefix, "partitions": args.partitions})  # type: ignore[arg-type]
    plays = [f"p-{i}" for i in range(args.plays)]
    await write(settings, plays, args.events, args.noise)
    every = list(range(args.partitions))
    partition = DefaultPartitioner()(COMPANY.encode(), every, every)
    since = datetime.now(UTC) - timedelta(minutes=5)
    budget = Budget(settings.http.history_max_records, settings.http.history_max_bytes)
    pool = Consumers(settings, settings.http.history_consumers)
    histories = PlayHistories(settings, pool)
    rows = []
    try:

        async def fresh(i: int) -> None:
            found = await KafkaSource(settings, since=since, partitions=[partition], budget=budget).play(
                COMPANY, plays[i % len(plays)]
            )
            assert len(found.documents) == args.events

        async def pooled(i: int) -> None:
            source = KafkaSource(settings, since=since, partitions=[partition], budget=budget, consumers=pool)
            found = await source.play(COMPANY, plays[i % len(plays)])
            assert len(found.documents) == args.events

        async def cached(i: int) -> None:
            found = await histories.get(COMPANY, plays[i % len(plays)], since)
            assert len(found.documents) == args.events

        for name, read in (("fresh", fresh), ("pooled", pooled), ("cached", cached)):
            for concurrency in (1, args.concurrency):
                row = {"way": name, **await timed(args.reads, concurrency, read)}
                rows.append(row)
                print(json.dumps(row) if args.json else "  ".join(f"{k}={v}" for k, v in row.items()), flush=True)
        rows.append({"consumers_started_by_the_pool": pool.started})
    finally:
        await pool.close()
        await discard(settings)
    return rows


async def discard(settings: Settings) -> None:
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(**settings.kafka_client_options())
    await admin.start()
    try:
        ours = [t for t in await admin.list_topics() if t.startswith(f"{settings.topics.prefix}.")]
        if ours:
            await admin.delete_topics(ours)
    finally:
        await admin.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--plays", type=int, default=100)
    parser.add_argument("--events", type=int, default=12)
    parser.add_argument("--noise", type=int, default=5000, help="other companies' records")
    parser.add_argument("--partitions", type=int, default=12)
    parser.add_argument("--reads", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    os.environ.setdefault("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092")
    rows = asyncio.run(bench(args))
    if not args.json:
        print(rows[-1])


if __name__ == "__main__":
    main()
