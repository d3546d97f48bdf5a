"""``flow8 bench``: plays/s and play latency of a 4-flowlet diamond of no-op modules."""

from __future__ import annotations

import asyncio
import contextlib
import resource
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flow8_streams.domain.flow import FlowDefinition
from flow8_streams.domain.state import PlayStatus
from flow8_streams.errors import Flow8Error
from flow8_streams.modules.registry import ModuleRegistry
from flow8_streams.runtimes.local import LocalRuntime
from flow8_streams.settings import Settings
from flow8_streams.stores.sqlite import SqliteStore

RESULT_TIMEOUT_S = 120
DIAMOND = FlowDefinition.model_validate(
    {
        "name": "bench-diamond",
        "version": 1,
        "flowlets": [
            {"name": "a", "module_ref": "noop"},
            {"name": "b", "module_ref": "noop", "depends_on": ["a"]},
            {"name": "c", "module_ref": "noop", "depends_on": ["a"]},
            {"name": "d", "module_ref": "noop", "depends_on": ["b", "c"]},
        ],
    }
)


@dataclass(frozen=True)
class BenchResult:
    plays: int
    concurrency: int
    seconds: float
    latencies_ms: list[float]
    failed: int
    # CPU (user + system) this process spent on the plays, when it did all their work (local):
    # a figure other load on the machine moves far less than plays/s
    cpu_seconds: float | None = None

    @property
    def plays_per_s(self) -> float:
        return self.plays / self.seconds if self.seconds else 0.0

    def percentile(self, p: float) -> float:
        if not self.latencies_ms:
            return 0.0
        if len(self.latencies_ms) == 1:
            return self.latencies_ms[0]
        return statistics.quantiles(self.latencies_ms, n=100, method="inclusive")[int(p) - 1]

    def as_dict(self) -> dict[str, float | int]:
        figures: dict[str, float | int] = {
            "plays_per_s": round(self.plays_per_s, 1),
            "p50_ms": round(self.percentile(50), 2),
            "p95_ms": round(self.percentile(95), 2),
            "p99_ms": round(self.percentile(99), 2),
            "plays": self.plays,
            "concurrency": self.concurrency,
            "seconds": round(self.seconds, 3),
            "failed": self.failed,
        }
        if self.cpu_seconds is not None:
            figures["cpu_ms_per_play"] = round(self.cpu_seconds / self.plays * 1000, 3)
        return figures


def _cpu_seconds() -> float:
    """User and system CPU of this process so far, every thread's."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def bench_local(
    plays: int, concurrency: int, db: Path | None = None, progress: Callable[[int], None] | None = None
) -> BenchResult:
    with tempfile.TemporaryDirectory(prefix="flow8-bench-") as tmp:
        store = SqliteStore(db or Path(tmp) / "bench.db")
        try:
            async with LocalRuntime(store, ModuleRegistry.default(entry_points=False)) as runtime:
                return await _drive(runtime, plays, concurrency, progress)
        finally:
            store.close()


async def _drive(
    runtime: LocalRuntime, plays: int, concurrency: int, progress: Callable[[int], None] | None
) -> BenchResult:
    latencies: list[float] = []
    failed = 0
    run_id = uuid.uuid4().hex[:8]
    next_index = 0

    async def worker() -> None:
        nonlocal next_index, failed
        while next_index < plays:
            index = next_index
            next_index += 1
            t0 = time.perf_counter()
            state = await runtime.run(DIAMOND, {"i": index}, company_id=f"c{index % 16}", play_id=f"b-{run_id}-{index}")
            latencies.append((time.perf_counter() - t0) * 1000)
            if state.status is not PlayStatus.SUCCEEDED:
                failed += 1
            if progress is not None:
                progress(1)

    t0, cpu0 = time.perf_counter(), _cpu_seconds()
    await asyncio.gather(*(worker() for _ in range(max(1, min(concurrency, plays)))))
    seconds, cpu = time.perf_counter() - t0, _cpu_seconds() - cpu0
    return BenchResult(plays, concurrency, seconds, latencies, failed, cpu_seconds=cpu)


async def bench_streams(
    settings: Settings,
    plays: int,
    concurrency: int,
    workers: int,
    workdir: Path,
    progress: Callable[[int], None] | None = None,
    warmup: int = 50,
) -> BenchResult:
    """Start ``workers`` real ``flow8 worker`` processes on topics and a database of
    their own, then time plays from the StartPlay's produce to its consumed result."""
    from flow8_streams.extras import require_streams

    require_streams("flow8 bench --runtime streams")
    from flow8_streams.runtimes.streams.client import CommandProducer, tail_results
    from flow8_streams.runtimes.streams.launcher import WorkerGroup
    from flow8_streams.stores.mongo import MongoStore

    group = WorkerGroup(
        settings.kafka_bootstrap_servers, settings.mongodb_uri, workdir, count=workers, inherit_settings=True
    )
    await group.start()
    companies = [f"bench-{i}" for i in range(16)]
    store = MongoStore(group.settings.mongodb_uri, group.settings.mongodb_database)
    try:
        await store.open()
        for company in companies:
            await store.flows.put(company, DIAMOND)
        done: dict[str, asyncio.Future[float]] = {}
        ready = asyncio.Event()

        async def collect() -> None:
            async for result, consumed_at in tail_results(group.settings, on_ready=ready.set):
                fut = done.get(result.play_id)
                if fut is not None and not fut.done():
                    fut.set_result(consumed_at)

        collector = asyncio.create_task(collect())
        try:
            await ready.wait()
            async with CommandProducer(group.settings) as producer:
                await _drive_streams(producer, done, companies, warmup, min(concurrency, warmup), None)
                return await _drive_streams(producer, done, companies, plays, concurrency, progress)
        finally:
            collector.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await collector
    finally:
        await store.close()
        group.stop()


async def _drive_streams(
    producer: Any,
    done: dict[str, asyncio.Future[float]],
    companies: list[str],
    plays: int,
    concurrency: int,
    progress: Callable[[int], None] | None,
) -> BenchResult:
    from flow8_streams.domain.messages import StartPlay

    loop = asyncio.get_running_loop()
    run_id = uuid.uuid4().hex[:8]
    latencies: list[float] = []
    next_index = 0

    async def one_at_a_time() -> None:
        nonlocal next_index
        while next_index < plays:
            index = next_index
            next_index += 1
            play_id = f"b-{run_id}-{index}"
            done[play_id] = loop.create_future()
            command = StartPlay(
                company_id=companies[index % len(companies)], flow=DIAMOND.name, play_id=play_id, input={"i": index}
            )
            sent_at = await producer.send(command)
            await producer.flush()
            try:
                consumed_at = await asyncio.wait_for(done[play_id], timeout=RESULT_TIMEOUT_S)
            except TimeoutError:
                raise Flow8Error(f"play {play_id}: no result within {RESULT_TIMEOUT_S} s") from None
            finally:
                done.pop(play_id, None)
            latencies.append((consumed_at - sent_at) * 1000)
            if progress is not None:
                progress(1)

    t0 = time.perf_counter()
    await asyncio.gather(*(one_at_a_time() for _ in range(max(1, min(concurrency, plays)))))
    return BenchResult(plays, concurrency, time.perf_counter() - t0, latencies, 0)
