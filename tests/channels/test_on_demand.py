"""A pool starts ``warm`` channels and grows, a channel per waiting task, up to ``size``."""

from __future__ import annotations

import asyncio
import os
import socket
from typing import Any

import pytest

from flow8_streams.channels import ChannelPool, ChannelSettingsInvalid, PortInUse
from flow8_streams.channels.ports import held_not_listening, port_is_free
from flow8_streams.errors import InvalidInput
from flow8_streams.metrics import Metrics
from flow8_streams.settings import load_settings

from .conftest import GUARD_S, Dispatches, PoolFactory, free_port_block, make_task, process_alive
from .test_concurrency import max_overlap


def states(pool: ChannelPool) -> list[str]:
    return [row["state"] for row in pool.snapshot()]


def live_pids(pool: ChannelPool) -> set[int]:
    return {s.pid for s in pool.slots if s.pid is not None and s.process is not None and s.process.returncode is None}


async def test_a_pool_of_ten_with_two_warm_starts_two_processes_and_holds_the_other_ports(
    make_pool: PoolFactory,
) -> None:
    pool = await make_pool(10, warm=2)
    assert states(pool) == ["idle"] * 2 + ["cold"] * 8
    assert pool.workers == 2 and len(live_pids(pool)) == 2
    assert all(row["pid"] is None for row in pool.snapshot()[2:])
    cold = [s.port for s in pool.slots[2:]]
    assert not any(port_is_free(p) for p in cold)  # held: another instance cannot take them
    assert all(held_not_listening(p) for p in cold)  # and a client is refused at once


async def test_five_concurrent_tasks_grow_the_pool_to_five_and_no_further(make_pool: PoolFactory) -> None:
    metrics = Metrics()
    pool = await make_pool(10, warm=2, metrics=metrics)
    assert metrics.channels_started._value.get() == 2
    tasks = [make_task("sleep", {"seconds": 1.5}, play_id=f"grow-{i}") for i in range(5)]
    futures = [pool.submit_nowait(t) for t in tasks]
    assert pool.busy == 2 and pool.waiting == 3
    assert states(pool).count("starting") == 3  # one per waiting task, started in the background
    results = await asyncio.wait_for(asyncio.gather(*futures), GUARD_S)
    assert all(r.ok for r in results), [r.error for r in results]
    assert max_overlap([(r.started_at, r.ended_at) for r in results]) == 5  # all five ran together
    assert pool.workers == 5 and len(live_pids(pool)) == 5
    assert states(pool) == ["idle"] * 5 + ["cold"] * 5
    assert metrics.channels_started._value.get() == 5

    # the next five tasks find five idle channels: nothing more starts
    again = await asyncio.wait_for(asyncio.gather(*(pool.submit(make_task("echo")) for _ in range(5))), GUARD_S)
    assert all(r.ok for r in again) and pool.workers == 5


async def test_never_more_processes_than_the_pool_size(make_pool: PoolFactory) -> None:
    peak = 0

    def count(*_: Any) -> None:
        nonlocal peak
        peak = max(peak, pool.workers, len(live_pids(pool)))

    pool = await make_pool(3, spare=2, warm=0, on_dispatch=count)
    assert pool.workers == 0 and states(pool) == ["cold"] * 3
    futures = [pool.submit_nowait(make_task("sleep", {"seconds": 0.3})) for _ in range(12)]
    assert pool.workers == 3 and pool.waiting == 12  # three starting, none more
    results = await asyncio.wait_for(asyncio.gather(*futures), GUARD_S)
    assert all(r.ok for r in results)
    assert peak == 3 and pool.workers == 3
    assert max_overlap([(r.started_at, r.ended_at) for r in results]) == 3
    assert all(port_is_free(p) for p in pool.ports[3:])  # the spare ports are not the pool's


async def test_a_growing_pool_keeps_the_fair_order(make_pool: PoolFactory) -> None:
    """The channels that come up take the head of the queue, whichever comes first."""
    dispatches = Dispatches()
    pool = await make_pool(2, warm=0, on_dispatch=dispatches.hook)
    tasks = [make_task("sleep", {"seconds": 0.3}, company="a", play_id=f"a-{i}") for i in range(3)]
    tasks.append(make_task("sleep", {"seconds": 0.3}, company="b", play_id="b-0"))
    futures = [pool.submit_nowait(t) for t in tasks]
    assert all(r.ok for r in await asyncio.wait_for(asyncio.gather(*futures), GUARD_S))
    order = [play for (play, _), _ in sorted(dispatches.seen.items(), key=lambda kv: kv[1][1])]
    assert set(order[:2]) == {"a-0", "b-0"}, order  # round-robin, not a-0, a-1


async def test_a_port_taken_at_start_is_named_even_when_its_channel_would_start_cold() -> None:
    ports = free_port_block(10)
    taken = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        taken.bind(("127.0.0.1", ports[9]))
        taken.listen()
        pool = ChannelPool(ports, 10, warm=2)
        try:
            with pytest.raises(PortInUse) as caught:
                await pool.start()
        finally:
            await pool.close()
    finally:
        taken.close()
    assert caught.value.ports == [ports[9]] and f"channel port {ports[9]} " in str(caught.value)
    assert all(port_is_free(p) for p in ports)  # no worker started, no port left held


async def test_a_cold_port_taken_after_the_start_fails_that_channel_and_no_task_is_lost(
    make_pool: PoolFactory,
) -> None:
    pool = await make_pool(3, warm=1)
    stolen = pool.slots[1].port
    pool._held.pop(stolen).close()  # what a port that could not be held (TIME_WAIT) allows
    thief = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        thief.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        thief.bind(("127.0.0.1", stolen))
        thief.listen()
        futures = [pool.submit_nowait(make_task("sleep", {"seconds": 0.5}, play_id=f"t-{i}")) for i in range(3)]
        results = await asyncio.wait_for(asyncio.gather(*futures), GUARD_S)
        assert all(r.ok for r in results), [r.error for r in results]
        row = pool.snapshot()[1]
        assert [r["state"] for r in pool.snapshot()] == ["idle", "down", "idle"]
        assert f"channel port {stolen} " in row["error"] and "already in use" in row["error"]
        assert not process_alive(pool.slots[1].pid or 0) and pool.workers == 2
    finally:
        thief.close()
    # once the port is free again, a task that waits tries that channel again (its back-off
    # cut short here, not waited for)
    pool.slots[1].retry_at = 0.0
    futures = [pool.submit_nowait(make_task("sleep", {"seconds": 1.5}, play_id=f"u-{i}")) for i in range(3)]
    results = await asyncio.wait_for(asyncio.gather(*futures), GUARD_S)
    assert all(r.ok for r in results) and max_overlap([(r.started_at, r.ended_at) for r in results]) == 3
    assert [r["state"] for r in pool.snapshot()] == ["idle"] * 3 and pool.snapshot()[1]["error"] is None


def test_warm_is_capped_at_the_size_and_validated_with_its_value(monkeypatch: pytest.MonkeyPatch) -> None:
    assert ChannelPool("7701-7710", 3, warm=8).warm == 3
    assert ChannelPool("7701-7710", 3).warm == 2
    assert ChannelPool("7701-7710", 1).warm == 1
    with pytest.raises(ChannelSettingsInvalid, match="CHANNEL_POOL_WARM -1"):
        ChannelPool("7701-7710", 3, warm=-1)
    for name in list(os.environ):
        if name.startswith(("FLOW8_", "CHANNEL_", "SERVER_")):
            monkeypatch.delenv(name)
    monkeypatch.setenv("CHANNEL_PORT_RANGE", "7701-7720")
    monkeypatch.setenv("CHANNEL_POOL_WARM", "5")
    assert load_settings().channel_pool_warm == 5
    pool = ChannelPool.from_settings(load_settings())
    assert pool.size == 20 and pool.warm == 5
    assert ChannelPool.from_settings(load_settings(), warm=0).warm == 0
    monkeypatch.setenv("CHANNEL_POOL_WARM", "-3")
    with pytest.raises(InvalidInput) as caught:
        load_settings()
    assert "CHANNEL_POOL_WARM -3" in str(caught.value)
    monkeypatch.delenv("CHANNEL_POOL_WARM")
    assert ChannelPool.from_settings(load_settings()).warm == 2
