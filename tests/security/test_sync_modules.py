"""Plain (not async) modules run on threads, never on the event loop: a module that
blocks past its timeout is the flowlet timed out (not its neighbours), its late result
and late KV writes are dropped, and the stuck thread is logged and counted."""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from flow8_streams.channels import ChannelPool, PortInUse
from flow8_streams.domain.flow import FlowDefinition
from flow8_streams.domain.state import FlowletStatus, PlayStatus
from flow8_streams.errors import InvalidInput
from flow8_streams.metrics import Metrics
from flow8_streams.modules.registry import ModuleRegistry
from flow8_streams.modules.threads import ModuleThreads
from flow8_streams.runtimes.local import LocalRuntime
from flow8_streams.settings import load_settings
from flow8_streams.stores.sqlite import SqliteStore
from tests.channels.conftest import free_port_block
from tests.conformance.streams_harness import StreamsHarness, WorkerGroup
from tests.security import sync_modules
from tests.streams.support import running_group

MODULES_FILE = Path(sync_modules.__file__)


def flow(name: str, *flowlets: dict[str, Any]) -> FlowDefinition:
    return FlowDefinition.model_validate({"name": name, "flowlets": list(flowlets)})


def new_play() -> str:
    return f"play-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def released() -> Iterator[asyncio.Event]:
    """Set once ``blocks`` returned; its thread is released when the test ends, whatever happened."""
    loop = asyncio.get_event_loop()
    done = asyncio.Event()
    sync_modules.RELEASE.clear()
    sync_modules.LATE.clear()
    sync_modules.ON_RETURN[:] = [lambda: loop.call_soon_threadsafe(done.set)]
    try:
        yield done
    finally:
        sync_modules.RELEASE.set()
        sync_modules.ON_RETURN.clear()


@pytest.fixture
async def local(tmp_path: Path, no_leaked_tasks: None) -> AsyncIterator[LocalRuntime]:
    store = SqliteStore(tmp_path / "sync.db")
    registry = ModuleRegistry.default(entry_points=False)
    registry.update(sync_modules.MODULES)
    try:
        async with LocalRuntime(store, registry) as runtime:
            yield runtime
    finally:
        store.close()


async def test_a_plain_module_past_its_timeout_is_timed_out_and_its_neighbour_succeeds(
    local: LocalRuntime, released: asyncio.Event, caplog: pytest.LogCaptureFixture
) -> None:
    play_id = new_play()
    t0 = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="flow8.executor"):
        final = await local.run(
            flow(
                "blame",
                {"name": "slow", "module_ref": "blocks", "timeout": "1s"},
                {"name": "quick", "module_ref": "sleeps", "input": {"seconds": 0.1}, "timeout": "1s"},
            ),
            company_id="acme",
            play_id=play_id,
        )
    took = time.monotonic() - t0
    assert final.flowlets["slow"].status is FlowletStatus.TIMED_OUT
    assert final.flowlets["quick"].status is FlowletStatus.SUCCEEDED
    assert final.status is PlayStatus.FAILED and took < 5, took
    assert local.threads.stuck == 1
    stuck_logs = [r.getMessage() for r in caplog.records if "still runs on its thread" in r.getMessage()]
    assert len(stuck_logs) == 1 and f"flowlet {play_id}/slow" in stuck_logs[0]

    sync_modules.RELEASE.set()  # the stuck module returns now, long after its timeout
    async with asyncio.timeout(10):
        await released.wait()
    assert sync_modules.LATE and "the attempt is over" in sync_modules.LATE[0]  # its KV write was refused
    assert await local.store.kv.get("acme", "late") is None
    types = [(e.type, getattr(e.payload, "flowlet", None)) for e in await local.store.log.read(play_id)]
    assert ("FlowletCompleted", "slow") not in types  # the late result is never recorded
    state = await local.store.plays.get("acme", play_id)
    assert state is not None and state.flowlets["slow"].status is FlowletStatus.TIMED_OUT


async def test_a_plain_module_uses_the_kv_without_await(local: LocalRuntime) -> None:
    play_id = new_play()
    final = await local.run(flow("kv", {"name": "c", "module_ref": "counts"}), company_id="acme", play_id=play_id)
    assert final.status is PlayStatus.SUCCEEDED, final.error
    assert final.flowlets["c"].output == {"first": 1, "second": 3, "note": {"seen": 3}}
    assert (await local.store.kv.get("acme", "hits")).value == 3  # type: ignore[union-attr]


async def test_a_plain_module_on_a_channel_uses_the_kv_without_await(tmp_path: Path, no_leaked_tasks: None) -> None:
    db = tmp_path / "channel.db"
    store = SqliteStore(db)
    registry = ModuleRegistry.default(entry_points=False)
    registry.update(sync_modules.MODULES)
    pool: ChannelPool | None = None
    try:
        for _ in range(3):  # a port taken between the check and the start: another block
            pool = ChannelPool(free_port_block(1), 1, module_sources=[str(MODULES_FILE)], kv_db=db)
            try:
                await pool.start()
                break
            except PortInUse:
                await pool.close()
        assert pool is not None
        async with LocalRuntime(store, registry, channels=pool) as runtime:
            play_id = new_play()
            final = await runtime.run(
                flow("kv-channel", {"name": "c", "module_ref": "counts", "defer_after_ms": 0}),
                company_id="acme",
                play_id=play_id,
            )
        assert final.status is PlayStatus.SUCCEEDED, final.error
        assert "FlowletDispatched" in [e.type for e in await store.log.read(play_id)]  # on the channel's process
        assert final.flowlets["c"].output == {"first": 1, "second": 3, "note": {"seen": 3}}
    finally:
        if pool is not None:
            await pool.close()
        store.close()


async def test_an_inline_module_that_calls_the_kv_fails_instead_of_blocking_the_loop(local: LocalRuntime) -> None:
    final = await local.run(flow("inline", {"name": "i", "module_ref": "inline_kv"}), company_id="a", play_id="p-i")
    assert final.flowlets["i"].status is FlowletStatus.FAILED
    assert "runs on the event loop (inline) cannot use the KV" in (final.flowlets["i"].error or "")


async def test_stuck_threads_are_counted_replaced_and_never_exhaust_the_pool_silently(
    caplog: pytest.LogCaptureFixture,
) -> None:
    loop = asyncio.get_running_loop()
    metrics = Metrics()
    counts: asyncio.Queue[int] = asyncio.Queue()

    def on_stuck(n: int) -> None:
        metrics.module_threads_stuck.set(n)
        loop.call_soon_threadsafe(counts.put_nowait, n)

    threads = ModuleThreads(1, on_stuck=on_stuck)
    gate, started = threading.Event(), asyncio.Queue[str]()

    def hangs(name: str) -> str:
        loop.call_soon_threadsafe(started.put_nowait, name)
        gate.wait(timeout=60)
        return "late"

    async def stick(name: str) -> None:
        call = asyncio.create_task(threads.call(hangs, name, what=f"flowlet p/{name}"))
        assert await started.get() == name  # the thread runs the module: it cannot be stopped now
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call

    def logged(text: str) -> list[str]:
        return [r.getMessage() for r in caplog.records if text in r.getMessage()]

    try:
        with caplog.at_level(logging.WARNING, logger="flow8.executor"):
            await stick("hung")
            assert await counts.get() == 1 and threads.stuck == 1
            assert metrics.registry.get_sample_value("flow8_module_threads_stuck") == 1
            assert [m.split(":")[0] for m in logged("still runs on its thread")] == ["flowlet p/hung"]
            # the only thread is stuck: another one takes the next call
            assert await threads.call(lambda x: x * 2, 21, what="flowlet p/next") == 42
            assert threads.threads == 2
            # as many stuck as the size again: a call waits, and says why
            await stick("hung-too")
            assert await counts.get() == 2
            waiting = asyncio.create_task(threads.call(lambda x: x, 7, what="flowlet p/waits"))
            await asyncio.sleep(0)  # let it be submitted
            assert not waiting.done() and threads.threads == 2
            assert logged("waits for a module thread")[0].startswith("flowlet p/waits waits")
        gate.set()
        assert await waiting == 7  # a thread came back
        assert sorted([await counts.get(), await counts.get()]) == [0, 1]  # both stuck calls returned
        assert threads.stuck == 0 and metrics.registry.get_sample_value("flow8_module_threads_stuck") == 0
    finally:
        gate.set()
        threads.close()


def test_module_threads_do_not_hold_the_process_at_exit(tmp_path: Path) -> None:
    """A module stuck for good: the process still exits when its work is done."""
    script = tmp_path / "exits.py"
    script.write_text(
        "import asyncio, threading\n"
        "from flow8_streams.modules.threads import ModuleThreads\n"
        "async def main():\n"
        "    threads = ModuleThreads(2)\n"
        "    call = asyncio.create_task(threads.call(lambda _: threading.Event().wait(), None, what='x'))\n"
        "    await asyncio.sleep(0.2)\n"
        "    call.cancel()\n"
        "    threads.close()\n"
        "asyncio.run(main())\n"
    )
    done = subprocess.run([sys.executable, str(script)], timeout=20, capture_output=True)
    assert done.returncode == 0, done.stderr


# ------------------------------------------------------------ streams runtime


@pytest.fixture(scope="module")
def streams_group(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WorkerGroup]:
    with running_group(
        tmp_path_factory.mktemp("sync-workers"), extra_env={"FLOW8_MODULES": str(MODULES_FILE)}
    ) as group:
        yield group


@pytest.mark.kafka
@pytest.mark.mongo
@pytest.mark.slow
async def test_streams_a_sleeping_plain_module_blames_itself_and_the_kv_works(
    streams_group: WorkerGroup, no_leaked_tasks: None
) -> None:
    harness = await StreamsHarness(streams_group).open()
    try:
        company = f"co-{uuid.uuid4().hex[:8]}"
        blame = flow(
            "blame",
            {"name": "slow", "module_ref": "sleeps", "input": {"seconds": 4}, "timeout": "1s"},
            {"name": "quick", "module_ref": "sleeps", "input": {"seconds": 0.1}, "timeout": "1s"},
        )
        counted = flow("kv", {"name": "c", "module_ref": "counts"})
        blamed_id, counted_id = new_play(), new_play()
        await harness.start(blame, company_id=company, play_id=blamed_id)
        await harness.start(counted, company_id=company, play_id=counted_id)
        blamed = await harness.wait(blamed_id)
        assert blamed.flowlets["slow"].status is FlowletStatus.TIMED_OUT
        assert blamed.flowlets["quick"].status is FlowletStatus.SUCCEEDED
        done = await harness.wait(counted_id)
        assert done.status is PlayStatus.SUCCEEDED, done.error
        assert done.flowlets["c"].output == {"first": 1, "second": 3, "note": {"seen": 3}}
    finally:
        await harness.close()


def test_the_thread_count_is_a_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    assert load_settings().module_threads == 32
    monkeypatch.setenv("FLOW8_MODULE_THREADS", "4")
    assert load_settings().module_threads == 4
    monkeypatch.setenv("FLOW8_MODULE_THREADS", "0")
    with pytest.raises(InvalidInput, match="module_threads"):
        load_settings()
