"""The embedded runtime with a channel pool: flowlets with ``defer_after_ms`` (or a
channel module) run on channel workers, and their faults go through the engine."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from flow8_streams.channels import ChannelPool, client
from flow8_streams.channels.tokens import completion_token
from flow8_streams.domain.events import Event
from flow8_streams.domain.state import PlayStatus
from flow8_streams.modules.registry import ModuleRegistry
from flow8_streams.runtimes.local import LocalRuntime
from flow8_streams.stores.sqlite import SqliteStore

from .conftest import (
    DEFERRED_FLOW,
    GUARD_S,
    TEST_MODULES,
    TOKEN_KEY,
    PoolFactory,
    flow,
    is_,
    new_play,
    port_of,
    process_alive,
)

COMPANY = "acme"


@dataclass
class Setup:
    runtime: LocalRuntime
    pool: ChannelPool
    store: SqliteStore

    async def events(self, play_id: str) -> list[Event]:
        return await self.store.log.read(play_id)

    async def event(self, play_id: str, predicate: Callable[[Event], bool]) -> Event:
        """The first event of the play matching ``predicate``: recorded already, or awaited."""
        found: asyncio.Future[Event] = asyncio.get_running_loop().create_future()

        def listener(batch: Any) -> None:
            for e in batch:
                if not found.done() and e.play_id == play_id and predicate(e):
                    found.set_result(e)

        unsubscribe = self.runtime.subscribe(listener)
        try:
            for e in await self.events(play_id):
                if predicate(e):
                    return e
            async with asyncio.timeout(GUARD_S):
                return await found
        finally:
            unsubscribe()


@pytest.fixture
async def setup_for(tmp_path: Path, make_pool: PoolFactory) -> AsyncIterator[Callable[..., Any]]:
    opened: list[tuple[LocalRuntime, SqliteStore]] = []

    async def make(size: int = 2, **pool_kwargs: Any) -> Setup:
        store = SqliteStore(tmp_path / f"flow8-{len(opened)}.db")
        pool = await make_pool(size, kv_db=store.path, **pool_kwargs)
        runtime = LocalRuntime(store, ModuleRegistry.default([TEST_MODULES], entry_points=False), channels=pool)
        await runtime.__aenter__()
        opened.append((runtime, store))
        return Setup(runtime, pool, store)

    try:
        yield make
    finally:
        for runtime, store in opened:
            await runtime.close()
            store.close()


async def test_deferred_and_channel_flowlets_run_on_channels_and_are_dispatched_first(
    setup_for: Callable[..., Any],
) -> None:
    s: Setup = await setup_for(2)
    play_id = new_play()
    final = await s.runtime.run(
        DEFERRED_FLOW,
        company_id=COMPANY,
        play_id=play_id,
    )
    assert final.status is PlayStatus.SUCCEEDED, final.error
    history = await s.events(play_id)
    dispatched = {e.payload.flowlet: e for e in history if e.type == "FlowletDispatched"}
    assert set(dispatched) == {"later", "declared", "count"}
    ports = {f"127.0.0.1:{slot.port}" for slot in s.pool.slots}
    assert all(e.payload.channel in ports for e in dispatched.values())
    for name in dispatched:  # each: scheduled, then dispatched, then completed
        kinds = [x.type for x in history if getattr(x.payload, "flowlet", None) == name]
        assert kinds == ["FlowletScheduled", "FlowletDispatched", "FlowletCompleted"], (name, kinds)
    scheduled = next(e for e in history if is_("FlowletScheduled", "later")(e))
    assert (dispatched["later"].at - scheduled.at).total_seconds() >= 0.3  # the defer was waited
    outputs = {name: f.output for name, f in final.flowlets.items()}
    assert outputs["inline"] == os.getpid()  # no channel: in this process
    assert outputs["later"] != os.getpid() and outputs["declared"] != os.getpid()
    assert outputs["count"] == 1 and (await s.store.kv.get(COMPANY, "hits")).value == 1  # type: ignore[union-attr]


async def test_kill_9_of_a_channel_worker_retries_on_another_channel_and_the_play_completes(
    setup_for: Callable[..., Any],
) -> None:
    s: Setup = await setup_for(2, heartbeat_timeout_s=1.0)
    play_id = new_play()
    retry = {"max_attempts": 2, "backoff_ms": 0}
    definition = flow(
        "killed",
        {"name": "work", "module_ref": "slow_first", "input": {"first": 60, "then": 0.1}, "defer_after_ms": 0,
         "retry": retry},
    )  # fmt: skip
    await s.runtime.start(definition, company_id=COMPANY, play_id=play_id)
    first = await s.event(play_id, is_("FlowletDispatched", "work", 1))
    first_port = port_of(first.payload.channel)  # type: ignore[union-attr]
    victim = (await client.status(first_port)).pid
    os.kill(victim, signal.SIGKILL)

    final = await asyncio.wait_for(s.runtime.wait(play_id), GUARD_S)
    assert final.status is PlayStatus.SUCCEEDED, final.error
    failed = await s.event(play_id, is_("FlowletFailed", "work", 1))
    assert failed.payload.error.startswith("channel_lost"), failed.payload.error  # type: ignore[union-attr]
    second = await s.event(play_id, is_("FlowletDispatched", "work", 2))
    assert second.payload.channel != first.payload.channel  # type: ignore[union-attr]
    assert final.flowlets["work"].output["attempt"] == 2

    # the killed slot was restarted, and serves again: a play that needs both channels at once
    again = new_play()
    await s.runtime.start(
        flow("after", {"name": "hold", "module_ref": "hang", "defer_after_ms": 0},
             {"name": "probe", "module_ref": "pid", "defer_after_ms": 0}),
        company_id=COMPANY, play_id=again,
    )  # fmt: skip
    await s.event(again, is_("FlowletCompleted", "probe"))
    hold = await s.event(again, is_("FlowletDispatched", "hold"))
    probe = await s.event(again, is_("FlowletDispatched", "probe"))
    used = {port_of(e.payload.channel) for e in (hold, probe)}  # type: ignore[union-attr]
    assert used == {slot.port for slot in s.pool.slots}
    assert (await client.status(first_port)).pid != victim
    assert not process_alive(victim)
    await s.runtime.cancel(again, COMPANY)
    await s.runtime.wait(again)


async def test_a_pending_flowlet_completed_from_outside_completes_the_play(setup_for: Callable[..., Any]) -> None:
    s: Setup = await setup_for(1)
    play_id = new_play()
    token = completion_token(TOKEN_KEY, COMPANY, play_id, "ocr", 1)
    definition = flow(
        "outside",
        {"name": "ocr", "module_ref": "handoff", "defer_after_ms": 0},
        {"name": "after", "module_ref": "echo", "depends_on": ["ocr"]},
    )
    await s.runtime.start(definition, company_id=COMPANY, play_id=play_id)
    dispatched = await s.event(play_id, is_("FlowletDispatched", "ocr"))
    port = port_of(dispatched.payload.channel)  # type: ignore[union-attr]
    reply = await client.complete(port, token, output={"text": "hello"})
    assert reply.type == "ok", reply
    final = await asyncio.wait_for(s.runtime.wait(play_id), GUARD_S)
    assert final.status is PlayStatus.SUCCEEDED, final.error
    assert final.flowlets["ocr"].output == {"text": "hello"}


async def test_a_hanging_channel_flowlet_times_out_its_worker_is_killed_and_the_retry_reuses_the_port(
    setup_for: Callable[..., Any],
) -> None:
    s: Setup = await setup_for(1)
    play_id = new_play()
    definition = flow(
        "hung",
        {"name": "h", "module_ref": "hang_first", "timeout": "1s", "defer_after_ms": 0,
         "retry": {"max_attempts": 2, "backoff_ms": 0}},
    )  # fmt: skip
    await s.runtime.start(definition, company_id=COMPANY, play_id=play_id)
    first = await s.event(play_id, is_("FlowletDispatched", "h", 1))
    port = port_of(first.payload.channel)  # type: ignore[union-attr]
    hung = (await client.status(port)).pid
    final = await asyncio.wait_for(s.runtime.wait(play_id), GUARD_S)
    assert final.status is PlayStatus.SUCCEEDED, final.error
    history = await s.events(play_id)
    kinds = [e.type for e in history if getattr(e.payload, "flowlet", None) == "h"]
    assert kinds == [
        "FlowletScheduled", "FlowletDispatched", "FlowletTimedOut", "FlowletRetryScheduled",
        "FlowletScheduled", "FlowletDispatched", "FlowletCompleted",
    ], kinds  # fmt: skip
    second = await s.event(play_id, is_("FlowletDispatched", "h", 2))
    assert second.payload.channel == first.payload.channel  # type: ignore[union-attr]
    assert not process_alive(hung)


async def test_cancelling_a_play_kills_its_channel_worker(setup_for: Callable[..., Any]) -> None:
    s: Setup = await setup_for(1)
    play_id = new_play()
    await s.runtime.start(
        flow("cancelled", {"name": "h", "module_ref": "hang", "defer_after_ms": 0}), company_id=COMPANY, play_id=play_id
    )
    dispatched = await s.event(play_id, is_("FlowletDispatched", "h"))
    hung = (await client.status(port_of(dispatched.payload.channel))).pid  # type: ignore[union-attr]
    await s.runtime.cancel(play_id, COMPANY)
    final = await asyncio.wait_for(s.runtime.wait(play_id), GUARD_S)
    assert final.status is PlayStatus.CANCELLED
    after = await s.runtime.run(
        flow("next", {"name": "p", "module_ref": "pid", "defer_after_ms": 0}), company_id=COMPANY, play_id=new_play()
    )
    assert after.status is PlayStatus.SUCCEEDED and after.flowlets["p"].output != hung
    assert not process_alive(hung)


async def test_without_a_pool_deferred_flowlets_run_in_place(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "inline.db")
    try:
        async with LocalRuntime(store, ModuleRegistry.default([TEST_MODULES], entry_points=False)) as runtime:
            play_id = new_play()
            final = await runtime.run(
                flow("inline", {"name": "p", "module_ref": "channel_pid", "defer_after_ms": 0}),
                company_id=COMPANY,
                play_id=play_id,
            )
        assert final.status is PlayStatus.SUCCEEDED and final.flowlets["p"].output == os.getpid()
        assert "FlowletDispatched" not in [e.type for e in await store.log.read(play_id)]
    finally:
        store.close()


async def test_pending_without_a_channel_fails_the_flowlet_clearly(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "no-pool.db")
    try:
        async with LocalRuntime(store, ModuleRegistry.default([TEST_MODULES], entry_points=False)) as runtime:
            final = await runtime.run(
                flow("no-pool", {"name": "o", "module_ref": "handoff"}),
                company_id=COMPANY,
                play_id=new_play(),
            )
        assert final.status is PlayStatus.FAILED
        assert "returned Pending, which needs a channel" in (final.flowlets["o"].error or "")
    finally:
        store.close()
