#!/usr/bin/env python3
"""What the play projection costs on the MongoDB server at $MONGODB_URI (FerretDB here).

    scripts/bench_projection.py fill --database D --plays 100000   # bulk-insert final diamond plays
    scripts/bench_projection.py ops --database D                  # time the projector's calls there
    scripts/bench_projection.py run --database D --plays 1000      # a worker, c=50, then the lag
    scripts/bench_projection.py reads --database D --live 2000     # what reading one play costs (the API's GET)

``ops`` times each call shape the projector could use, on 20 plays, against a collection
of whatever size ``fill`` left: a cost that grows with the collection is a full scan.
``reads`` puts ``--live`` tombstones and one running play in ``plays_live`` (the tombstones kept
after the run: a second run reuses them), then times each query shape a GET of one play could send, and
``MongoPlays.get`` itself, for a finished play and a running one.
``run`` starts one ``flow8 worker`` on topics of its own and the database ``D`` (filled
first), drives ``--plays`` diamond plays at ``--concurrency``, waits until every play's
document is final and prints the projection lag of each play's last event (``updated_at``
of its document minus its ``ended_at``) and the projector's plays/s. Use a database of
your own: nothing here touches another.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pymongo import AsyncMongoClient, InsertOne, UpdateOne

from flow8_streams.bench import DIAMOND
from flow8_streams.domain.messages import FlowletResult, Start
from flow8_streams.domain.state import PlayState
from flow8_streams.engine import decide, fold

COMPANIES = [f"bench-{i}" for i in range(16)]
MAX_SCANNED = 20_000  # plays in the collection above which ``ops`` times inserts only


def diamond_history(play_id: str, company_id: str, at: datetime) -> list[Any]:
    events = decide(None, Start(play_id=play_id, company_id=company_id, flow=DIAMOND, input={"i": 1}), at)
    for name in ("a", "b", "c", "d"):
        result = FlowletResult(
            play_id=play_id,
            company_id=company_id,
            flowlet=name,
            attempt=1,
            ok=True,
            output=None,
            started_at=at,
            ended_at=at,
        )
        events += decide(fold(events), result, at)
    return events


def document(state: PlayState, now: datetime) -> dict[str, Any]:
    """The projection's document of a play (the shape ``stores.mongo`` writes)."""
    return {
        "_id": state.play_id,
        "company_id": state.company_id,
        "flow": state.flow.name,
        "flow_id": state.flow.name,
        "flow_version": state.flow.version,
        "created_at": state.started_at,
        "seq": state.seq,
        "status": state.status.value,
        "updated_at": now,
        "state": state.model_dump(mode="json"),
        "state_json": None,
    }


def client() -> AsyncMongoClient[dict[str, Any]]:
    uri = os.environ.get("MONGODB_URI")
    if not uri:
        sys.exit("MONGODB_URI is not set (export $(scripts/services env))")
    return AsyncMongoClient(uri, tz_aware=True)


async def fill(database: str, plays: int, chunk: int = 1000) -> None:
    mongo = client()
    coll = mongo[database]["plays"]
    have = await coll.estimated_document_count()
    template = fold(diamond_history("template", COMPANIES[0], datetime.now(UTC)))
    assert template is not None
    t0 = time.perf_counter()
    for start in range(have, plays, chunk):
        now = datetime.now(UTC)
        docs = []
        for i in range(start, min(start + chunk, plays)):
            state = template.model_copy(update={"play_id": f"fill-{i}", "company_id": COMPANIES[i % len(COMPANIES)]})
            docs.append(document(state, now))
        await coll.insert_many(docs, ordered=False)
        if (start // chunk) % 10 == 0:
            print(f"{start + len(docs)} plays, {time.perf_counter() - t0:.1f} s", flush=True)
    print(f"{database}.plays holds {await coll.estimated_document_count()} plays ({time.perf_counter() - t0:.1f} s)")
    await mongo.close()


async def timed(what: str, call: Callable[[], Awaitable[Any]], rounds: int = 3) -> float:
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        await call()
        times.append(time.perf_counter() - t0)
    best = min(times)
    print(f"  {what:<66} {best * 1000:9.1f} ms (best of {rounds})", flush=True)
    return best


async def ops(database: str, n: int = 20) -> None:
    """Time each call shape on ``n`` plays against the collection as ``fill`` left it."""
    mongo = client()
    info = await mongo.server_info()
    coll = mongo[database]["plays"]
    size = await coll.estimated_document_count()
    print(
        f"{info.get('ferretdbVersion', 'MongoDB ' + info['version'])}: "
        f"{database}.plays holds {size} plays; {n} plays per call"
    )
    history = diamond_history("x", COMPANIES[0], datetime.now(UTC))
    mid, last = fold(history[:5]), fold(history)
    assert mid is not None and last is not None
    now = datetime.now(UTC)

    def ids(tag: str) -> list[str]:
        run = uuid.uuid4().hex[:8]
        return [f"ops-{tag}-{run}-{i}" for i in range(n)]

    def states(play_ids: list[str], state: PlayState) -> list[PlayState]:
        return [state.model_copy(update={"play_id": p, "company_id": COMPANIES[0]}) for p in play_ids]

    def old_pair(s: PlayState) -> list[UpdateOne[Any]]:  # what MongoPlays._write_bulk sent
        key = {"_id": s.play_id, "company_id": s.company_id}
        doc = document(s, now)
        insert = {k: doc[k] for k in ("flow", "flow_id", "flow_version", "created_at")} | {"seq": 0}
        update = {k: doc[k] for k in ("status", "seq", "updated_at", "state", "state_json")}
        return [
            UpdateOne(key, {"$setOnInsert": insert}, upsert=True),
            UpdateOne({**key, "seq": {"$lt": s.seq}}, {"$set": update}),
        ]

    existing = ids("existing")
    await coll.insert_many([document(s, now) for s in states(existing, mid)])

    async def old_bulk_new() -> None:
        await coll.bulk_write([op for s in states(ids("new"), last) for op in old_pair(s)], ordered=True)

    async def old_bulk_existing() -> None:
        await coll.bulk_write([op for s in states(existing, last) for op in old_pair(s)], ordered=True)

    if size > MAX_SCANNED:
        # every call but an insert scans the collection on FerretDB (minutes each at 100,000
        # plays, and the server goes on after the client gives up): on a shared server, no
        print(f"  (the calls that scan the collection are skipped above {MAX_SCANNED} plays)")
    else:
        await timed("bulk_write, 2 upserting UpdateOnes per play, NEW plays (before)", old_bulk_new, rounds=1)
        await timed("bulk_write, 2 upserting UpdateOnes per play, EXISTING plays (before)", old_bulk_existing, rounds=1)
        await timed(
            "find({_id: {$in: ids}, company_id: {$in: [c]}})",
            lambda: coll.find({"_id": {"$in": existing}, "company_id": {"$in": [COMPANIES[0]]}}).to_list(),
            rounds=1,
        )
        await timed("find({_id: {$in: ids}})", lambda: coll.find({"_id": {"$in": existing}}).to_list(), rounds=1)
        await timed(
            "find_one({_id, company_id}) x n, concurrently",
            lambda: asyncio.gather(*(coll.find_one({"_id": p, "company_id": COMPANIES[0]}) for p in existing)),
            rounds=1,
        )
        await timed(
            "find_one({_id}) x n, concurrently", lambda: asyncio.gather(*(coll.find_one({"_id": p}) for p in existing))
        )
        await timed(
            "bulk_write UpdateOne({_id, seq: {$lt: n}}, $set) (no upsert)",
            lambda: coll.bulk_write(
                [
                    UpdateOne({"_id": s.play_id, "seq": {"$lt": s.seq + 1}}, {"$set": {"seq": s.seq}})
                    for s in states(existing, last)
                ]
            ),
            rounds=1,
        )
        await timed(
            "bulk_write UpdateOne({_id}, $set) (no upsert)",
            lambda: coll.bulk_write(
                [UpdateOne({"_id": s.play_id}, {"$set": {"seq": s.seq}}) for s in states(existing, last)]
            ),
        )
        await timed(
            "bulk_write UpdateOne({_id}, $set, upsert) of NEW plays",
            lambda: coll.bulk_write(
                [
                    UpdateOne({"_id": s.play_id}, {"$set": document(s, now)}, upsert=True)
                    for s in states(ids("up"), last)
                ]
            ),
        )
    await timed(
        "insert_many(ordered=False) of NEW plays",
        lambda: coll.insert_many([document(s, now) for s in states(ids("ins"), last)], ordered=False),
    )
    await timed(
        "bulk_write InsertOne of NEW plays",
        lambda: coll.bulk_write([InsertOne(document(s, now)) for s in states(ids("bins"), last)], ordered=False),
    )
    if size <= MAX_SCANNED:  # a delete by filter scans too
        await coll.delete_many({"_id": {"$regex": "^ops-"}})
    await mongo.close()


async def run(database: str, plays: int, concurrency: int, deadline_s: float) -> None:
    """One worker on topics of its own and the database ``database``; plays, then the projection."""
    from flow8_streams.bench import _drive_streams
    from flow8_streams.runtimes.streams.client import CommandProducer, tail_results
    from flow8_streams.runtimes.streams.launcher import WorkerGroup
    from flow8_streams.stores.mongo import MongoStore

    kafka = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    uri = os.environ.get("MONGODB_URI")
    if not kafka or not uri:
        sys.exit("KAFKA_BOOTSTRAP_SERVERS and MONGODB_URI must be set (export $(scripts/services env))")
    with tempfile.TemporaryDirectory(prefix="flow8-bench-projection-") as tmp:
        group = WorkerGroup(kafka, uri, Path(tmp), count=1, extra_env={"MONGODB_DATABASE": database})
        await group.start()
        store = MongoStore(uri, database)
        try:
            await store.open()
            coll = store.coll("plays")
            print(f"{database}.plays holds {await coll.estimated_document_count()} plays before the run")
            for company in COMPANIES:
                await store.flows.put(company, DIAMOND)
            done: dict[str, asyncio.Future[float]] = {}
            ready = asyncio.Event()

            async def collect() -> None:
                async for result, consumed_at in tail_results(group.settings, on_ready=ready.set):
                    fut = done.get(result.play_id)
                    if fut is not None and not fut.done():
                        fut.set_result(consumed_at)

            collector = asyncio.create_task(collect())
            await ready.wait()
            async with CommandProducer(group.settings) as producer:
                sent: list[str] = []
                real_send = producer.send

                async def send(command: Any) -> Any:
                    sent.append(command.play_id)
                    return await real_send(command)

                producer.send = send
                result = await _drive_streams(producer, done, COMPANIES, plays, concurrency, None)
            collector.cancel()
            last_result = datetime.now(UTC)
            print(f"engine: {result.as_dict()}")
            pending = set(sent)
            tombstones: dict[str, datetime] = {}
            t0 = time.monotonic()
            live = store.coll("plays_live")  # a finished play leaves a tombstone there (plays: a full scan)
            while pending and time.monotonic() - t0 < deadline_s:
                query = {"play_id": {"$in": sorted(pending)}, "final": True}
                async for doc in live.find(query, {"play_id": 1, "updated_at": 1}):
                    tombstones[doc["play_id"]] = doc["updated_at"]
                    pending.discard(doc["play_id"])
                await asyncio.sleep(0.5)
            waited = time.monotonic() - t0
            print(f"{len(tombstones)} of {len(sent)} plays final in MongoDB {waited:.1f} s after the last result")
            with urllib.request.urlopen(f"http://127.0.0.1:{group.processes[0][1]}/metrics", timeout=10) as page:
                lag = histogram(page.read().decode(), "flow8_projection_lag_seconds")
            print(
                f"projection lag (flow8_projection_lag_seconds, {lag['count']:.0f} events): "
                f"p50 {lag['p50']:.3f} s, p99 {lag['p99']:.3f} s, mean {lag['mean']:.3f} s"
            )
            if len(tombstones) > 1:
                times = sorted(tombstones.values())
                span = (times[-1] - times[0]).total_seconds()
                print(
                    f"projector: {len(times) / span:.1f} plays/s finished in MongoDB "
                    f"(last {(times[-1] - last_result).total_seconds():+.1f} s from the last result)"
                )
        finally:
            await store.close()
            group.stop()
            await delete_topics(group)


async def delete_topics(group: Any) -> None:
    """The run's topics (its own and faust's); the database stays (it is the filled one)."""
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(**group.settings.kafka_client_options())
    await admin.start()
    try:
        ours = [t for t in await admin.list_topics() if t.startswith((f"{group.name}.", f"{group.name}-"))]
        if ours:
            await admin.delete_topics(ours)
    finally:
        await admin.close()


def histogram(text: str, name: str) -> dict[str, float]:
    """p50, p99 (linear within a bucket), mean and count of a Prometheus histogram."""
    from prometheus_client.parser import text_string_to_metric_families

    buckets: list[tuple[float, float]] = []
    total = count = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == f"{name}_bucket":
                buckets.append((float(sample.labels["le"]), sample.value))
            elif sample.name == f"{name}_sum":
                total = sample.value
            elif sample.name == f"{name}_count":
                count = sample.value
    buckets.sort()

    def quantile(q: float) -> float:
        want, low, below = q * count, 0.0, 0.0
        for le, cumulative in buckets:
            if cumulative >= want:
                if le == float("inf"):
                    return low
                return low + (le - low) * ((want - below) / max(cumulative - below, 1e-9))
            low, below = le, cumulative
        return low

    return {"p50": quantile(0.5), "p99": quantile(0.99), "mean": total / count if count else 0.0, "count": count}


async def reads(database: str, live: int) -> None:
    """Time the reads of one play against ``plays`` as ``fill`` left it and ``live`` tombstones."""
    from flow8_streams.stores.mongo import MongoStore
    from flow8_streams.stores.mongo.plays import _LIVE_FIELDS, _tombstone, _version

    mongo = client()
    db = mongo[database]
    history = diamond_history("reads-running", COMPANIES[0], datetime.now(UTC))
    running, ended = fold(history[:5]), fold(history)
    assert running is not None and ended is not None
    now = datetime.now(UTC)
    have = await db["plays_live"].count_documents({"final": True})
    tombs = [_tombstone(ended.model_copy(update={"play_id": f"reads-ended-{i}"}), now) for i in range(have, live)]
    if tombs:
        await db["plays_live"].insert_many(tombs, ordered=False)
    await db["plays_live"].delete_many({"play_id": running.play_id})  # a recent version, as a live play has
    await db["plays_live"].insert_one(_version(running, now))
    size = await db["plays"].estimated_document_count()
    print(f"{database}: plays {size}, plays_live {await db['plays_live'].estimated_document_count()}")
    done, company = f"fill-{size // 2}", COMPANIES[(size // 2) % len(COMPANIES)]
    live_coll, plays = db["plays_live"], db["plays"]
    shapes: dict[str, Callable[[], Awaitable[Any]]] = {
        "plays_live find {play_id: {$in: [id]}}": lambda: live_coll.find(
            {"play_id": {"$in": [done]}}, _LIVE_FIELDS
        ).to_list(),
        "plays_live find {play_id: id}": lambda: live_coll.find({"play_id": done}, _LIVE_FIELDS).to_list(),
        "plays find_one {_id, company_id}": lambda: plays.find_one({"_id": done, "company_id": company}),
        "plays find_one {_id}": lambda: plays.find_one({"_id": done}),
        "plays find_one {_id} {state}": lambda: plays.find_one({"_id": done}, {"state": 1, "state_json": 1}),
    }
    for what, call in shapes.items():
        await timed(what, call, rounds=5)
    store = MongoStore(os.environ["MONGODB_URI"], database)
    await store.open()
    try:
        await timed("MongoPlays.get of a finished play", lambda: store.plays.get(company, done), rounds=5)
        await timed("MongoPlays.get of a running play", lambda: store.plays.get(COMPANIES[0], running.play_id), 5)
        await timed("MongoPlays.get of no play", lambda: store.plays.get(company, "reads-none"), rounds=5)
    finally:
        await store.close()
        await mongo.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("fill")
    p.add_argument("--database", required=True)
    p.add_argument("--plays", type=int, default=100_000)
    p = sub.add_parser("ops")
    p.add_argument("--database", required=True)
    p.add_argument("--n", type=int, default=20)
    p = sub.add_parser("reads")
    p.add_argument("--database", required=True)
    p.add_argument("--live", type=int, default=2000, help="tombstones in plays_live")
    p = sub.add_parser("run")
    p.add_argument("--database", required=True)
    p.add_argument("--plays", type=int, default=1000)
    p.add_argument("--concurrency", type=int, default=50)
    p.add_argument(
        "--deadline", type=float, default=300, help="seconds to wait for the projection after the last result"
    )
    args = parser.parse_args()
    if args.command == "fill":
        asyncio.run(fill(args.database, args.plays))
    elif args.command == "reads":
        asyncio.run(reads(args.database, args.live))
    elif args.command == "ops":
        asyncio.run(ops(args.database, args.n))
    else:
        asyncio.run(run(args.database, args.plays, args.concurrency, args.deadline))


if __name__ == "__main__":
    main()
