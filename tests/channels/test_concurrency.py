"""A pool of N channels runs at most N tasks at once; more wait, none is dropped."""

from __future__ import annotations

import asyncio
import time
from datetime import datetime

from flow8_streams.domain.messages import FlowletResult
from flow8_streams.metrics import Metrics

from .conftest import PoolFactory, make_task


def max_overlap(spans: list[tuple[datetime, datetime]]) -> int:
    """The most spans running at one instant (an end at t comes before a start at t)."""
    edges = sorted([(s, 1) for s, _ in spans] + [(e, -1) for _, e in spans], key=lambda x: (x[0], x[1]))
    running = peak = 0
    for _, step in edges:
        running += step
        peak = max(peak, running)
    return peak


def waves(spans: list[tuple[datetime, datetime]]) -> int:
    """The longest chain of spans each starting after the previous one ended."""
    level: list[int] = []
    ordered = sorted(spans)
    for i, (start, _) in enumerate(ordered):
        before = [level[j] for j in range(i) if ordered[j][1] <= start]
        level.append(1 + max(before, default=0))
    return max(level)


async def run_sleepers(
    pool_size: int, make_pool: PoolFactory, *, warm: int = 2
) -> tuple[list[FlowletResult], float, Metrics]:
    metrics = Metrics()
    pool = await make_pool(pool_size, metrics=metrics, warm=warm)
    tasks = [make_task("sleep", {"seconds": 2}, play_id=f"sleeper-{i}") for i in range(20)]
    began = time.monotonic()
    results = await asyncio.gather(*(pool.submit(t) for t in tasks))
    elapsed = time.monotonic() - began
    assert all(r.ok for r in results), [r.error for r in results if not r.ok]
    assert sorted(r.play_id for r in results) == sorted(t.play_id for t in tasks)
    return results, elapsed, metrics


async def test_twenty_sleeps_on_five_channels_run_in_four_waves(make_pool: PoolFactory) -> None:
    """Two channels warm, three started for the waiting tasks: the first wave still runs five together."""
    results, elapsed, metrics = await run_sleepers(5, make_pool)
    spans = [(r.started_at, r.ended_at) for r in results]
    print(f"\n20 x sleep 2 s on 5 channels: {elapsed:.2f} s")
    assert max_overlap(spans) == 5
    first_wave = sorted(spans)[:5]
    for start, _ in sorted(spans)[5:]:  # every later task waited for a channel to free
        assert any(end <= start for _, end in spans), start
    assert waves(spans) == 4
    assert first_wave[-1][0] < min(end for _, end in first_wave)  # the first five ran together
    assert metrics.channel_task_duration.labels("succeeded")._sum.get() >= 20 * 2
    assert metrics.channels_busy._value.get() == 0
    assert metrics.channel_tasks_waiting._value.get() == 0


async def test_twenty_sleeps_on_twenty_channels_all_run_at_once(make_pool: PoolFactory) -> None:
    """All twenty warm: starting 18 processes at once can take longer than the 2 s sleeps."""
    results, elapsed, _ = await run_sleepers(20, make_pool, warm=20)
    spans = [(r.started_at, r.ended_at) for r in results]
    print(f"\n20 x sleep 2 s on 20 channels: {elapsed:.2f} s")
    assert max(s for s, _ in spans) < min(e for _, e in spans)  # all twenty overlapped
    assert len({r.play_id for r in results}) == 20


async def test_waiting_tasks_are_counted_and_none_is_dropped(make_pool: PoolFactory) -> None:
    metrics = Metrics()
    pool = await make_pool(2, metrics=metrics)
    futures = [pool.submit_nowait(make_task("sleep", {"seconds": 0.1})) for _ in range(12)]
    assert pool.busy == 2 and pool.waiting == 10
    assert metrics.channel_tasks_waiting._value.get() == 10
    assert metrics.channels_busy._value.get() == 2
    results = await asyncio.gather(*futures)
    assert all(r.ok for r in results)
    assert pool.waiting == 0


async def test_cpu_bound_module_keeps_its_channel_alive(make_pool: PoolFactory) -> None:
    """A plain module that burns CPU runs on a thread of the worker: the heartbeats go on."""
    pool = await make_pool(1, heartbeat_timeout_s=0.8)
    result = await pool.submit(make_task("burn", {"seconds": 2}))
    assert result.ok, result.error
