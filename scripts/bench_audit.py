"""How fast ``flow8 audit verify`` checks histories: events/s from the db and from an export.

    .venv/bin/python scripts/bench_audit.py [--plays 10000] [--dir DIR] [--kafka]

Records PLAYS plays of a 4-flowlet diamond (10 events each) on the embedded runtime with a
signing key, then, in this one process, times: verify from the db (chain, projection fold,
signed checkpoints), the export, and verify from the export (chain and checkpoints); and, when
``node`` is installed, the JavaScript verifier on the same export. With ``--kafka`` (and
``$KAFKA_BOOTSTRAP_SERVERS``) it also produces the same events, as they are stored, to an events
topic of its own (12 partitions, keyed by company, as the streams runtime writes them) and times
verify from Kafka (read_committed, no group: what ``flow8 audit verify --kafka`` does); the topic
is deleted afterwards. Each rate is given per second of wall time and per second of this
process's CPU time (what it gets on a shared machine).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import orjson

from flow8_streams import FlowDefinition, LocalRuntime
from flow8_streams.audit import ArchiveSource, Audit, Filter, SqliteSource, export
from flow8_streams.audit.checkpoints import keygen, load_public_key
from flow8_streams.audit.kafka import KafkaSource
from flow8_streams.audit.verify import Summary
from flow8_streams.settings import Settings, load_settings

FLOW = FlowDefinition.model_validate(
    {
        "name": "diamond",
        "flowlets": [
            {"name": "a", "module_ref": "echo", "input": {"amount": "${input.amount}"}},
            {"name": "b", "module_ref": "echo", "depends_on": ["a"]},
            {"name": "c", "module_ref": "echo", "depends_on": ["a"], "input": {"rate": 0.2}},
            {"name": "d", "module_ref": "echo", "depends_on": ["b", "c"]},
        ],
    }
)


async def record(db: Path, key: Path, plays: int) -> None:
    async with LocalRuntime.open(db, settings=Settings(audit_signing_key=key)) as runtime:
        for start in range(0, plays, 500):
            ids = [f"play-{i}" for i in range(start, min(plays, start + 500))]
            for play_id in ids:
                await runtime.start(FLOW, {"amount": 100}, company_id="acme", play_id=play_id)
            for play_id in ids:
                await runtime.wait(play_id)


class Timer:
    def __enter__(self) -> Timer:
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall, self.cpu = time.perf_counter() - self.wall, time.process_time() - self.cpu

    def rate(self, events: int) -> str:
        return f"{self.wall:6.2f} s  {events / self.wall:>9,.0f} events/s  ({events / self.cpu:>9,.0f} per CPU-second)"


async def to_kafka(settings: Settings, source: SqliteSource, flt: Filter) -> int:
    """The events of ``source`` as stored, to a fresh events topic; returns how many."""
    from aiokafka import AIOKafkaProducer

    from flow8_streams.runtimes.streams.admin import ensure_topics

    await ensure_topics(settings)
    producer = AIOKafkaProducer(**settings.kafka_client_options(), linger_ms=20, max_batch_size=1 << 20)
    await producer.start()
    sent = 0
    try:
        for history in source.histories(flt):
            for doc in history.documents:
                await producer.send(settings.topics.events, orjson.dumps(doc), key=history.company_id.encode())
                sent += 1
        await producer.flush()
    finally:
        await producer.stop()
    return sent


async def verify_kafka(settings: Settings, flt: Filter) -> Summary:
    reader = KafkaSource(settings)
    audit = Audit(flt)
    async for history in reader.histories(flt):
        audit.play(history)
    return audit.finish(reader.problems)


async def drop_topics(settings: Settings) -> None:
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(**settings.kafka_client_options())
    await admin.start()
    try:
        prefix = f"{settings.topics.prefix}."
        await admin.delete_topics([t for t in await admin.list_topics() if t.startswith(prefix)])
    finally:
        await admin.close()


def bench_kafka(db: Path, flt: Filter) -> None:
    if not os.environ.get("KAFKA_BOOTSTRAP_SERVERS"):
        raise SystemExit("--kafka needs $KAFKA_BOOTSTRAP_SERVERS (export $(scripts/services up))")
    settings = load_settings(topics={"prefix": f"bench-audit-{uuid.uuid4().hex[:8]}"})
    source = SqliteSource(db)
    try:
        sent = asyncio.run(to_kafka(settings, source, flt))
        with Timer() as t:
            summary = asyncio.run(verify_kafka(settings, flt))
        assert summary.clean and summary.events == sent, summary.as_json()
        print(f"verify --kafka    {summary.events:>8} events {t.rate(summary.events)}  read, chain")
    finally:
        source.close()
        asyncio.run(drop_topics(settings))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--plays", type=int, default=10_000)
    parser.add_argument("--dir", type=Path, default=None, help="Keep the db and export here (default: a temp dir).")
    parser.add_argument("--kafka", action="store_true", help="Also time verify from Kafka ($KAFKA_BOOTSTRAP_SERVERS).")
    args = parser.parse_args()
    root = args.dir or Path(tempfile.mkdtemp(prefix="flow8-bench-audit-"))
    root.mkdir(parents=True, exist_ok=True)
    db, archive = root / "bench.db", root / "bench.jsonl.gz"
    for stale in (db, archive, root / "bench.db.checkpoints.jsonl", root / "keys"):
        if stale.is_dir():
            shutil.rmtree(stale)
        else:
            stale.unlink(missing_ok=True)
    private, public_path, _ = keygen(root / "keys")
    public = load_public_key(public_path)

    t0 = time.perf_counter()
    asyncio.run(record(db, private, args.plays))
    print(f"recorded {args.plays} plays in {time.perf_counter() - t0:.1f} s")

    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    flt = Filter("acme")
    source = SqliteSource(db)
    with Timer() as t:
        audit = Audit(flt, source.checkpoints(), public_key=public)
        for history in source.histories(flt):
            audit.play(history)
        summary = audit.finish()
    assert summary.clean, summary.as_json()
    print(f"verify --db       {summary.events:>8} events {t.rate(summary.events)}  chain, fold, checkpoints")

    with Timer() as t:
        signed = list(source.checkpoints())
        _, events, _ = export(archive, source.histories(flt), signed, company="acme", public_key=public)
    source.close()
    print(f"export            {events:>8} events {t.rate(events)}  {archive.stat().st_size:,} bytes")

    with Timer() as t:
        packed = ArchiveSource(archive)
        audit = Audit(flt, packed.checkpoints(), public_key=public)
        for history in packed.histories(flt):
            audit.play(history)
        summary = audit.finish(packed.problems)
    assert summary.clean, summary.as_json()
    print(f"verify --archive  {summary.events:>8} events {t.rate(summary.events)}  chain, checkpoints")

    if args.kafka:
        bench_kafka(db, flt)

    node = shutil.which("node")
    if node is not None:
        verifier = Path(__file__).resolve().parents[1] / "tools" / "verify-js" / "verify.mjs"
        t0 = time.perf_counter()
        done = subprocess.run([node, verifier, archive, "--public-key", public_path], capture_output=True, check=False)
        took = time.perf_counter() - t0
        assert done.returncode == 0, done.stderr
        print(f"verify-js         {summary.events:>8} events {took:6.2f} s  {summary.events / took:>9,.0f} events/s")
    print(f"files kept in {root}")


if __name__ == "__main__":
    main()
