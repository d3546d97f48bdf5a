"""Lost channels, hung modules, cancels: the worker is killed, the slot restarted on the
same port, and the task comes back failed (retryable) instead of never."""

from __future__ import annotations

import asyncio
import glob
import os
import signal
import sys
import tempfile
from pathlib import Path

from flow8_streams.channels import client
from flow8_streams.channels.ports import port_is_free
from flow8_streams.metrics import Metrics
from flow8_streams.stores.sqlite import SqliteStore

from .conftest import (
    GUARD_S,
    Dispatches,
    PoolFactory,
    closed_by_peer,
    free_port_block,
    make_task,
    port_of,
    process_alive,
)


async def test_kill_9_mid_task_loses_the_channel_and_the_slot_serves_again(make_pool: PoolFactory) -> None:
    metrics = Metrics()
    dispatches = Dispatches()
    pool = await make_pool(1, heartbeat_timeout_s=1.0, metrics=metrics, on_dispatch=dispatches.hook)
    task = make_task("sleep", {"seconds": 60})
    running = pool.submit_nowait(task)
    port = port_of(await dispatches.for_play(task.play_id))
    status = await client.status(port)
    assert status.state == "busy" and status.play_id == task.play_id
    loop = asyncio.get_running_loop()
    killed_at = loop.time()
    os.kill(status.pid, signal.SIGKILL)
    result = await running
    took = loop.time() - killed_at
    print(f"\nchannel_lost {took:.3f} s after kill -9")
    assert not result.ok and result.retryable
    assert result.error is not None and result.error.startswith("channel_lost"), result.error
    assert took < 10  # a guard: well under the task's 60 s
    assert metrics.channels_lost._value.get() == 1

    again = await pool.submit(make_task("pid"))  # waits for the restarted slot
    assert again.ok and again.output != status.pid
    assert (await client.status(port)).pid == again.output
    assert not process_alive(status.pid)
    assert pool.slots[0].restarts == 1


async def test_missing_heartbeats_lose_the_channel(make_pool: PoolFactory) -> None:
    """A worker that stops answering (SIGSTOP) but keeps its connection open."""
    dispatches = Dispatches()
    pool = await make_pool(1, heartbeat_timeout_s=1.0, on_dispatch=dispatches.hook)
    task = make_task("sleep", {"seconds": 60})
    running = pool.submit_nowait(task)
    port = port_of(await dispatches.for_play(task.play_id))
    stopped = (await client.status(port)).pid
    os.kill(stopped, signal.SIGSTOP)
    try:
        result = await running
    finally:
        if process_alive(stopped):
            os.kill(stopped, signal.SIGCONT)
    assert result.error is not None and result.error.startswith("channel_lost: no heartbeat"), result.error
    assert result.retryable
    again = await pool.submit(make_task("pid"))
    assert again.ok and again.output != stopped


async def test_hanging_module_is_killed_at_its_timeout_and_the_port_serves_the_next(make_pool: PoolFactory) -> None:
    metrics = Metrics()
    dispatches = Dispatches()
    pool = await make_pool(1, metrics=metrics, on_dispatch=dispatches.hook, deadline_grace_s=0.2)
    task = make_task("hang", timeout_s=1)
    running = pool.submit_nowait(task)
    port = port_of(await dispatches.for_play(task.play_id))
    hung = (await client.status(port)).pid
    result = await running
    assert not result.ok and result.retryable
    assert result.error == "timed out after 1000 ms"
    assert metrics.channel_timeouts._value.get() == 1

    follow = make_task("pid")
    again = await pool.submit(follow)
    assert again.ok and again.output != hung
    assert dispatches.seen[(follow.play_id, 1)][0] == f"127.0.0.1:{port}"  # the same port
    assert not process_alive(hung)


async def test_channel_execution_timeout_bounds_a_long_flowlet_timeout(make_pool: PoolFactory) -> None:
    pool = await make_pool(1, execution_timeout_s=0.5)
    result = await pool.submit(make_task("hang", timeout_s=600))
    assert result.error == "timed out after 500 ms (the channel execution timeout)"
    assert (await pool.submit(make_task("echo", {"x": 1}))).output == {"x": 1}


async def test_cancel_kills_the_running_worker_and_drops_the_waiting_task(make_pool: PoolFactory) -> None:
    dispatches = Dispatches()
    pool = await make_pool(1, on_dispatch=dispatches.hook)
    hung_task, waiting_task = make_task("hang"), make_task("echo")
    hung_future = pool.submit_nowait(hung_task)
    waiting_future = pool.submit_nowait(waiting_task)
    port = port_of(await dispatches.for_play(hung_task.play_id))
    hung = (await client.status(port)).pid

    assert pool.cancel(waiting_task.play_id, "f") == 1
    dropped = await waiting_future
    assert not dropped.ok and not dropped.retryable and "cancelled" in (dropped.error or "")
    assert (waiting_task.play_id, 1) not in dispatches.seen

    assert pool.cancel(hung_task.play_id, "f", attempt=1) == 1
    cancelled = await hung_future
    assert not cancelled.ok and cancelled.error == "cancelled on its channel"
    again = await pool.submit(make_task("pid"))
    assert again.ok and again.output != hung and not process_alive(hung)


async def test_a_cancelled_submit_kills_its_worker(make_pool: PoolFactory) -> None:
    dispatches = Dispatches()
    pool = await make_pool(1, on_dispatch=dispatches.hook)
    task = make_task("hang")
    submitter = asyncio.create_task(pool.submit(task))
    port = port_of(await dispatches.for_play(task.play_id))
    hung = (await client.status(port)).pid
    submitter.cancel()
    await asyncio.gather(submitter, return_exceptions=True)
    again = await pool.submit(make_task("pid"))
    assert again.ok and again.output != hung and not process_alive(hung)


async def test_kv_on_a_channel_uses_the_given_database_or_fails_cleanly(make_pool: PoolFactory, tmp_path: Path) -> None:
    db = tmp_path / "kv.db"
    SqliteStore(db).close()
    with_kv = await make_pool(1, kv_db=db)
    counted = await with_kv.submit(make_task("kv.incr", {"key": "n", "by": 2}, company="acme"))
    assert counted.ok and counted.output == 2
    store = SqliteStore(db)
    try:
        entry = await store.kv.get("acme", "n")
        assert entry is not None and entry.value == 2
    finally:
        store.close()

    without = await make_pool(1)
    failed = await without.submit(make_task("kv.get", {"key": "n"}))
    assert not failed.ok and not failed.retryable
    assert "no KV store" in (failed.error or "")
    assert (await without.submit(make_task("echo", {"still": "serving"}))).ok


async def test_a_dead_idle_worker_costs_no_attempt_and_its_slot_comes_back(make_pool: PoolFactory) -> None:
    pool = await make_pool(1)
    port, dead = pool.slots[0].port, pool.slots[0].pid
    assert dead is not None
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    os.kill(dead, signal.SIGKILL)
    await closed_by_peer(reader, writer)  # it is gone
    # Sent at once: whether it meets the dead worker (refused, back to the queue) or the
    # restarted one, the module runs once, on a live worker, as attempt 1.
    result = await pool.submit(make_task("pid"))
    assert result.ok and result.output != dead and result.attempt == 1


INSTANCE = """
import asyncio, sys
from flow8_streams.channels import ChannelPool

async def main() -> None:
    pool = ChannelPool(sys.argv[1], 2)
    await pool.start()
    print(" ".join(str(slot.port) for slot in pool.slots), flush=True)
    await asyncio.Event().wait()

asyncio.run(main())
"""


async def test_an_instance_killed_with_9_leaves_no_worker_holding_its_ports() -> None:
    ports = free_port_block(2)
    instance = await asyncio.create_subprocess_exec(
        sys.executable, "-c", INSTANCE, f"{ports[0]}-{ports[-1]}", stdout=asyncio.subprocess.PIPE
    )
    try:
        assert instance.stdout is not None
        async with asyncio.timeout(GUARD_S):
            started = (await instance.stdout.readline()).split()
        assert [int(p) for p in started] == list(ports)
        watchers = [await asyncio.open_connection("127.0.0.1", p) for p in ports]
        instance.kill()
        await instance.wait()
        controls = {Path(p).parent for p in glob.glob(f"{tempfile.gettempdir()}/flow8-ch-*/{ports[0]}.sock")}
        for reader, writer in watchers:  # each orphaned worker notices and exits
            await closed_by_peer(reader, writer)
        assert all(port_is_free(p) for p in ports)
        assert len(controls) == 1 and not any(c.exists() for c in controls)  # nor its control sockets' directory
    finally:
        if instance.returncode is None:
            instance.kill()
            await instance.wait()
