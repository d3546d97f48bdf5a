"""Channels on the streams runtime: real ``flow8 worker --channels`` processes, each with its
channel worker processes on a port range of its own, on Kafka and the MongoDB server.

Flowlets with ``defer_after_ms`` (or a channel module) run on a channel; the executor acks
their task at once and reports dispatch, heartbeats and result on ``flow8.completions``.
A channel worker killed mid-task, or a whole flow8 worker, costs one attempt
(``channel_lost``) and the play still completes."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest

from flow8_streams.channels import client
from flow8_streams.channels.tokens import TOKEN_KEY_NAME, completion_token, new_key
from flow8_streams.domain.state import PlayStatus
from tests.channels.conftest import (
    DEFERRED_FLOW,
    TEST_MODULES,
    flow,
    free_port_block,
    is_,
    new_play,
    port_of,
    process_alive,
)
from tests.conformance.streams_harness import StreamsHarness, WorkerGroup, metric

from .support import running_group

pytestmark = [pytest.mark.kafka, pytest.mark.mongo, pytest.mark.slow]

COMPANY = "acme"
POOL = 3
WAIT_S = 30.0  # a guard: an event that never comes fails the test instead of hanging it
HEARTBEAT_TIMEOUT_S = 3  # the watchdog test's: a dead worker's flowlet is lost after this


def channels_env(blocks: list[range], **more: str) -> Callable[[int], dict[str, str]]:
    """Worker i gets channels on ``blocks[i]``, announced as 127.0.0.1."""

    def env(i: int) -> dict[str, str]:
        block = blocks[i]
        return {
            "FLOW8_CHANNELS": "1",
            "FLOW8_MODULES": TEST_MODULES,
            "CHANNEL_PORT_RANGE": f"{block[0]}-{block[-1]}",
            "CHANNEL_POOL_SIZE": str(len(block)),
            "ADVERTISED_HOST": "127.0.0.1",
            **more,
        }

    return env


@pytest.fixture(scope="module")
def one_worker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[WorkerGroup, range]]:
    block = free_port_block(POOL)
    with running_group(tmp_path_factory.mktemp("channels"), worker_env=channels_env([block])) as group:
        yield group, block


@pytest.fixture
async def harness(one_worker: tuple[WorkerGroup, range], no_leaked_tasks: None) -> AsyncIterator[StreamsHarness]:
    harness = await StreamsHarness(one_worker[0]).open()
    harness.wait_timeout = WAIT_S
    try:
        yield harness
    finally:
        await harness.close()


async def test_channel_flowlets_run_on_channel_processes_with_the_mongodb_kv(
    harness: StreamsHarness, one_worker: tuple[WorkerGroup, range]
) -> None:
    group, block = one_worker
    play_id = new_play()
    final = await harness.run(
        DEFERRED_FLOW,
        company_id=COMPANY,
        play_id=play_id,
    )
    assert final.status is PlayStatus.SUCCEEDED, final.error
    history = await harness.events(play_id)
    dispatched = {e.payload.flowlet: e.payload.channel for e in history if e.type == "FlowletDispatched"}  # type: ignore[union-attr]
    assert set(dispatched) == {"later", "declared", "count"}
    assert {c.rsplit(":", 1)[0] for c in dispatched.values()} == {"127.0.0.1"}  # ADVERTISED_HOST
    assert {port_of(c) for c in dispatched.values()} <= set(block)
    for name in dispatched:
        kinds = [e.type for e in history if getattr(e.payload, "flowlet", None) == name]
        assert kinds == ["FlowletScheduled", "FlowletDispatched", "FlowletCompleted"], (name, kinds)
    scheduled = next(e for e in history if is_("FlowletScheduled", "later")(e))
    waited = next(e for e in history if is_("FlowletDispatched", "later")(e))
    assert (waited.at - scheduled.at).total_seconds() >= 0.3  # the defer was waited
    outputs = {name: f.output for name, f in final.flowlets.items()}
    assert outputs["inline"] == group.pid(0)  # the executor, in the flow8 worker
    assert group.pid(0) not in (outputs["later"], outputs["declared"])  # channel worker processes
    assert outputs["count"] == 1 and await harness.kv_get(COMPANY, "hits") == 1  # the channel used MongoDB

    samples = group.metrics(0)
    assert metric(samples, "flow8_channel_task_duration_seconds_count", outcome="succeeded") >= 3
    assert ("flow8_channels_busy", frozenset()) in samples
    assert ("flow8_channel_tasks_waiting", frozenset()) in samples


async def test_a_pending_flowlet_completed_from_outside_through_its_port(harness: StreamsHarness) -> None:
    play_id = new_play()
    # The workers mint tokens with the key MongoDB keeps for all of them (none is configured):
    # the same one this reads back, so the test computes the token the module hands out.
    key = await harness.store.secret(TOKEN_KEY_NAME, new_key)
    token = completion_token(key, COMPANY, play_id, "ocr", 1)
    await harness.start(
        flow(
            "outside",
            {"name": "ocr", "module_ref": "handoff", "defer_after_ms": 0},
            {"name": "after", "module_ref": "echo", "depends_on": ["ocr"]},
        ),
        company_id=COMPANY,
        play_id=play_id,
    )
    dispatched = await harness.wait_for_event(play_id, is_("FlowletDispatched", "ocr"))
    port = port_of(dispatched.payload.channel)  # type: ignore[union-attr]
    reply = await client.complete(port, token, output={"text": "hello"})  # what the outside service does
    assert reply.type == "ok", reply
    final = await harness.wait(play_id)
    assert final.status is PlayStatus.SUCCEEDED, final.error
    assert final.flowlets["ocr"].output == {"text": "hello"}


async def test_kill_9_of_a_channel_worker_mid_task_retries_the_flowlet(harness: StreamsHarness) -> None:
    play_id = new_play()
    await harness.start(
        flow(
            "killed",
            {"name": "work", "module_ref": "slow_first", "input": {"first": 60, "then": 0.1}, "defer_after_ms": 0,
             "retry": {"max_attempts": 2, "backoff_ms": 0}},
        ),
        company_id=COMPANY,
        play_id=play_id,
    )  # fmt: skip
    first = await harness.wait_for_event(play_id, is_("FlowletDispatched", "work", 1))
    port = port_of(first.payload.channel)  # type: ignore[union-attr]
    victim = (await client.status(port)).pid
    os.kill(victim, signal.SIGKILL)

    final = await harness.wait(play_id)
    assert final.status is PlayStatus.SUCCEEDED, final.error
    failed = next(e for e in await harness.events(play_id) if is_("FlowletFailed", "work", 1)(e))
    assert failed.payload.error.startswith("channel_lost"), failed.payload.error  # type: ignore[union-attr]
    assert final.flowlets["work"].output["attempt"] == 2
    assert not process_alive(victim)


async def test_cancelling_a_play_kills_its_channel_worker(harness: StreamsHarness) -> None:
    play_id = new_play()
    await harness.start(
        flow("cancelled", {"name": "h", "module_ref": "hang", "defer_after_ms": 0}), company_id=COMPANY, play_id=play_id
    )
    dispatched = await harness.wait_for_event(play_id, is_("FlowletDispatched", "h"))
    hung = (await client.status(port_of(dispatched.payload.channel))).pid  # type: ignore[union-attr]
    await harness.cancel(play_id, COMPANY)
    final = await harness.wait(play_id)
    assert final.status is PlayStatus.CANCELLED
    deadline = time.monotonic() + WAIT_S
    while process_alive(hung):  # another process's end: there is no event to await
        assert time.monotonic() < deadline, f"channel worker {hung} still runs its cancelled flowlet"
        await asyncio.sleep(0.05)


@pytest.fixture
def two_workers(tmp_path: Path) -> Iterator[tuple[WorkerGroup, list[range]]]:
    block = free_port_block(4)
    blocks = [block[:2], block[2:]]  # disjoint
    env = channels_env(
        blocks,
        FLOW8_EXECUTION__CHANNEL_HEARTBEAT_TIMEOUT_SECONDS=str(HEARTBEAT_TIMEOUT_S),
        FLOW8_SESSION_TIMEOUT_MS="6000",  # the survivor takes over sooner
    )
    with running_group(tmp_path, count=2, worker_env=env) as group:
        yield group, blocks


async def test_a_worker_killed_with_a_channel_task_loses_it_to_the_watchdog_and_the_survivor_retries_it(
    two_workers: tuple[WorkerGroup, list[range]], no_leaked_tasks: None
) -> None:
    group, blocks = two_workers
    harness = await StreamsHarness(group).open()
    try:
        play_id = new_play()
        await harness.start(
            flow(
                "orphaned",
                {"name": "work", "module_ref": "slow_first", "input": {"first": 60, "then": 0.1},
                 "defer_after_ms": 0, "retry": {"max_attempts": 2, "backoff_ms": 0}},
            ),
            company_id=COMPANY,
            play_id=play_id,
        )  # fmt: skip
        # Seen once the owner's orchestrator committed it, with the task's offset before it:
        # the task is acked, so nobody would run it again but for the watchdog.
        first = await harness.tap.wait_for(play_id, is_("FlowletDispatched", "work", 1), WAIT_S)
        owner = next(i for i, block in enumerate(blocks) if port_of(first.payload.channel) in block)  # type: ignore[union-attr]
        t0 = time.monotonic()
        group.kill(owner)

        failed = await harness.tap.wait_for(play_id, is_("FlowletFailed", "work", 1), 60)
        assert failed.payload.error == f"channel_lost: no heartbeat for {HEARTBEAT_TIMEOUT_S} s", failed.payload  # type: ignore[union-attr]
        final = await asyncio.wait_for(harness.wait(play_id), WAIT_S)
        took = time.monotonic() - t0
        assert final.status is PlayStatus.SUCCEEDED, final.error
        second = next(e for e in await harness.events(play_id) if is_("FlowletDispatched", "work", 2)(e))
        survivor = 1 - owner
        assert port_of(second.payload.channel) in blocks[survivor]  # type: ignore[union-attr]
        assert final.flowlets["work"].output["attempt"] == 2
        print(f"killed worker's channel flowlet retried and completed {took:.1f} s after the kill")
    finally:
        await harness.close()


def test_a_taken_channel_port_fails_the_start_naming_it(tmp_path: Path) -> None:
    import socket

    block = free_port_block(2)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", block[1]))
        taken.listen()
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("FLOW8_", "CHANNEL_"))},
            "CHANNEL_PORT_RANGE": f"{block[0]}-{block[1]}",
            "KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1",  # never reached: the ports are checked first
        }
        done = subprocess.run(
            [sys.executable, "-m", "flow8_streams.cli", "worker", "--channels"],
            env=env,
            capture_output=True,
            timeout=60,
            cwd=tmp_path,
        )
    assert done.returncode == 2, done
    assert f"channel port {block[1]} on 127.0.0.1 already in use" in done.stderr.decode(), done.stderr
