"""How fast retention archives and prunes: plays and events per second, on the embedded runtime.

    .venv/bin/python scripts/bench_archive.py [--plays 5000] [--batch 10000] [--dir DIR]

Records PLAYS signed plays of a 4-flowlet diamond (10 events each) on the embedded runtime, then
times, in this one process, what ``flow8 archive --prune`` does: the archive written and read back
against its manifest, then every play deleted (one transaction each); then ``flow8 audit verify``
across the archive and the (now empty) db with the public key. Each rate is given per second of
wall time and per second of this process's CPU time (what it gets on a shared machine).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import tempfile
import time
from pathlib import Path

from flow8_streams import FlowDefinition, LocalRuntime
from flow8_streams.audit import Filter, SqliteSource
from flow8_streams.audit.across import Across
from flow8_streams.audit.checkpoints import keygen, load_public_key
from flow8_streams.retention import job
from flow8_streams.settings import Retention, Settings

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


def timed(what: str, units: dict[str, int], fn: object) -> None:
    wall, cpu = time.perf_counter(), time.process_time()
    fn()  # type: ignore[operator]
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    rates = ", ".join(f"{n / wall:,.0f} {name}/s ({n / cpu:,.0f} per CPU-second)" for name, n in units.items())
    print(f"{what}: {wall:.2f} s wall, {cpu:.2f} s CPU: {rates}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--plays", type=int, default=5000)
    parser.add_argument("--batch", type=int, default=10_000, help="retention.batch_plays")
    parser.add_argument("--dir", type=Path, default=None, help="work here (default: a temporary directory)")
    args = parser.parse_args()
    work = args.dir or Path(tempfile.mkdtemp(prefix="flow8-bench-archive-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        private, public, _ = keygen(work / "keys")
        db = work / "flow8.db"
        t = time.perf_counter()
        asyncio.run(record(db, private, args.plays))
        print(f"recorded {args.plays} plays in {time.perf_counter() - t:.1f} s; load average {os.getloadavg()[0]:.1f}")
        events = args.plays * 10
        retention = Retention(archive=str(work / "arch"), batch_plays=args.batch)

        async def archive_and_prune() -> None:
            async with job.open_sqlite(db) as store:
                outcomes = await job.run(
                    store, retention, companies=["acme"], older="0s", to=None, prune=True, dry_run=False
                )
            (o,) = outcomes
            assert o.plays == o.pruned == args.plays and o.events == events, o.as_json()

        timed("archive + prune", {"plays": args.plays, "events": events}, lambda: asyncio.run(archive_and_prune()))
        archives = sorted((work / "arch" / "acme").glob("*.jsonl.gz"))
        size = sum(a.stat().st_size for a in archives)
        print(f"{len(archives)} archive(s), {size / 2**20:.1f} MiB ({size / events:.0f} bytes per event)")

        def verify() -> None:
            source = SqliteSource(db)
            try:
                flt = Filter("acme")
                across = Across(
                    flt, archives, list(source.checkpoints()), live_label="db", public_key=load_public_key(public)
                )

                async def live() -> None:
                    async def stream():  # type: ignore[no-untyped-def]
                        for h in source.histories(flt):
                            yield h

                    await across.live(stream(), lambda v: None)

                asyncio.run(live())
                across.archived(lambda v: None)
                summary = across.finish()
                assert summary.clean and summary.plays == args.plays, summary.as_json()
            finally:
                source.close()

        timed("verify across archive and db", {"events": events}, verify)
        print(f"load average after: {os.getloadavg()[0]:.1f}")
    finally:
        if args.dir is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
