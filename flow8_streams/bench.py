"""``flow8 bench``: plays/s and play latency of a 4-flowlet diamond of no-op modules."""

from __future__ import annotations

import asyncio
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from flow8_streams.domain.flow import FlowDefinition
from flow8_streams.domain.state import PlayStatus
from flow8_streams.modules.registry import ModuleRegistry
from flow8_streams.runtimes.local import LocalRuntime
from flow8_streams.stores.sqlite import SqliteStore

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
        return {
            "plays_per_s": round(self.plays_per_s, 1),
            "p50_ms": round(self.percentile(50), 2),
            "p95_ms": round(self.percentile(95), 2),
            "p99_ms": round(self.percentile(99), 2),
            "plays": self.plays,
            "concurrency": self.concurrency,
            "seconds": round(self.seconds, 3),
            "failed": self.failed,
        }


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

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(max(1, min(concurrency, plays)))))
    return BenchResult(plays, concurrency, time.perf_counter() - t0, latencies, failed)
