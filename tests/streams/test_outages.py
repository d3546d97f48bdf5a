"""Outages of the real servers in the middle of a run (issue 14): the broker restarted, and
MongoDB (FerretDB) down for 30 s. Each test starts a server of its own (``private_services``)
to stop and start: the shared ones, which other tests use, are never touched.

The bar is the kill -9 test's (``assert_each_play_once``): every play completes once, no
``(play_id, seq)`` twice in ``flow8.events``, one result per play, counters exact; and the
workers get through the outage by themselves: none exits, none is restarted by the test.
Each test prints its figures: how long the plays stalled, how soon they resumed after the
server came back, how soon the projection converged, and what the workers counted.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import AsyncIterator, Coroutine, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import orjson
import pytest

from flow8_streams.domain.messages import StartPlay
from flow8_streams.runtimes.streams.client import CommandProducer
from tests.conformance.streams_harness import WorkerGroup, metric
from tests.services import require_service

from .private_services import PrivateServer, private_server
from .support import (
    FLOW,
    ResultCollector,
    all_finished,
    assert_each_play_once,
    collecting_results,
    projected_within,
    running_group,
    watching,
)

pytestmark = [pytest.mark.kafka, pytest.mark.mongo, pytest.mark.slow]

PLAYS = 1000
COMPANIES = 50
WORKERS = 2
OUTAGE_AFTER = 300  # plays finished before the server goes away
GUARD_S = 150.0  # every play finished within this after the server is back
PROJECTED_WITHIN_S = 60.0  # every play's MongoDB document final after the last result


def plays_of(companies: list[str]) -> tuple[dict[str, str], dict[str, int]]:
    plays = {str(uuid.uuid4()): companies[i % len(companies)] for i in range(PLAYS)}
    return plays, {play_id: n for n, play_id in enumerate(plays)}


def stall_figures(results: ResultCollector, down_at: float, back_at: float) -> str:
    """From the results' arrival times: how long no result came around the outage."""
    arrivals = sorted(results.arrivals)
    after = [t for t in arrivals if t > back_at]
    gaps = [b - a for a, b in itertools.pairwise(arrivals)]
    before = sum(t <= down_at for t in arrivals)
    first_after = f"{after[0] - down_at:.1f} s" if after else "none"
    resumed = f"{after[0] - back_at:.1f} s" if after else "never"
    return (
        f"{before} results before the outage; first result after it {first_after} after it began "
        f"({resumed} after the server was back); longest gap between two results {max(gaps, default=0):.1f} s"
    )


@contextlib.asynccontextmanager
async def running(coro: Coroutine[Any, Any, None]) -> AsyncIterator[asyncio.Task[None]]:
    """``coro`` as a task, cancelled if it still runs when the block ends (a failure midway)."""
    task = asyncio.create_task(coro)
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def workers_alive(group: WorkerGroup) -> list[int | None]:
    """Each worker's exit code, None while it runs."""
    return [proc.poll() for proc, _ in group.processes]


def total(group: WorkerGroup, name: str, **labels: str) -> float:
    return sum(metric(group.metrics(i), name, **labels) for i in range(len(group.processes)))


# ------------------------------------------------------------------ the broker restarted


@pytest.fixture
def broker_and_workers(tmp_path: Path) -> Iterator[tuple[PrivateServer, WorkerGroup]]:
    """A broker of the test's own, and two workers on it and on the shared MongoDB (a database
    of their own); the workers stop first, then the broker, whatever happened."""
    mongodb_uri = require_service("MONGODB_URI")
    with (
        private_server("kafka", tmp_path / "services") as broker,
        running_group(
            tmp_path / "workers", count=WORKERS, kafka=broker.address, mongodb_uri=mongodb_uri, discard=False
        ) as group,
    ):
        yield broker, group


BROKER_DOWN_S = 20.0  # the outage: stopped, 20 s down, started on the same data
# kill -9 of the broker instead of a clean stop: opt-in (FLOW8_TEST_BROKER_KILL=1), it takes
# as long again and the clean stop is the case
KILL = pytest.mark.skipif(os.environ.get("FLOW8_TEST_BROKER_KILL") != "1", reason="FLOW8_TEST_BROKER_KILL=1 runs it")


@pytest.mark.timeout(400)
@pytest.mark.parametrize("how", ["stop", pytest.param("kill", marks=KILL)])
async def test_a_broker_restart_midway_loses_and_duplicates_nothing(
    broker_and_workers: tuple[PrivateServer, WorkerGroup], how: str, no_leaked_tasks: None
) -> None:
    broker, group = broker_and_workers
    settings = group.settings
    companies = [f"co-{i:02d}" for i in range(COMPANIES)]
    plays, number = plays_of(companies)

    async with watching(settings, companies) as (store, tap):
        async with collecting_results(settings) as results, CommandProducer(settings) as producer:
            t0 = time.monotonic()
            for play_id, company in plays.items():
                await producer.send(
                    StartPlay(company_id=company, flow=FLOW.name, play_id=play_id, input={"n": number[play_id]})
                )
            await producer.flush()
            await tap.wait_until(lambda: len(tap.terminal) >= OUTAGE_AFTER, 120, f"{OUTAGE_AFTER} plays finished")

            down_at = time.monotonic()
            stop_took = await asyncio.to_thread(broker.stop if how == "stop" else broker.kill)
            done_at_stop = len(tap.terminal)
            assert done_at_stop < PLAYS, "every play finished before the broker stopped: nothing was in flight"
            await asyncio.sleep(BROKER_DOWN_S)  # the outage itself, not a wait for something
            assert workers_alive(group) == [None] * WORKERS, "a worker exited while the broker was down"
            start_took = await asyncio.to_thread(broker.start)
            back_at = time.monotonic()

            def unfinished() -> str:
                running = sorted(plays.keys() - tap.terminal.keys())
                return f"all {PLAYS} plays finished ({len(running)} still running, e.g. {running[:3]})"

            await all_finished(settings, tap, plays, GUARD_S, unfinished)
            await results.wait_for(set(plays), 60)
            last_result = time.monotonic()
            assert workers_alive(group) == [None] * WORKERS, "a worker exited after the broker came back"
            print(
                f"\nbroker restart ({how}): {PLAYS} plays, {done_at_stop} done when it stopped "
                f"({down_at - t0:.1f} s in; the {how} took {stop_took:.1f} s, down {BROKER_DOWN_S:.0f} s, "
                f"the start {start_took:.1f} s); all done {last_result - back_at:.1f} s after it was back; "
                + stall_figures(results, down_at, back_at)
            )

        unsettled = await projected_within(store, results.results, PROJECTED_WITHIN_S)
        print(f"projection: all {PLAYS} documents final {time.monotonic() - last_result:.1f} s after the last result")
        assert unsettled == {}, f"{len(unsettled)} plays' documents differ from their results: {list(unsettled)[:5]}"
        await assert_each_play_once(tap, results, plays, number, store)
        stale, dead = total(group, "flow8_stale_decisions_total"), total(group, "flow8_dlq_messages_total")
        print(f"workers counted: stale decisions {stale:.0f}, dead letters {dead:.0f}")


# ------------------------------------------------------------------ MongoDB down for 30 s


@pytest.fixture
def ferretdb_and_workers(tmp_path: Path) -> Iterator[tuple[PrivateServer, WorkerGroup]]:
    """A FerretDB of the test's own, and two workers on it and on the shared Kafka (topics of
    their own); the workers stop first, then FerretDB, whatever happened."""
    require_service("KAFKA_BOOTSTRAP_SERVERS")
    with (
        private_server("ferretdb", tmp_path / "services") as ferretdb,
        running_group(tmp_path / "workers", count=WORKERS, mongodb_uri=ferretdb.address) as group,
    ):
        yield ferretdb, group


MONGODB_DOWN_S = 30.0  # the outage
IN_FLIGHT = 100  # plays running at every moment
BATCH = 20  # plays sent at once
READY_WITHIN_S = 15.0  # /readyz tells the outage, and its end, within this


def readyz(group: WorkerGroup, index: int) -> tuple[int, dict[str, Any]]:
    """A worker's /readyz: (status, body)."""
    url = f"http://127.0.0.1:{group.port(index)}/readyz"
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, orjson.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, orjson.loads(exc.read())


async def readyz_becomes(group: WorkerGroup, index: int, status: int, within: float) -> dict[str, Any]:
    """Polls a worker's /readyz until it answers ``status``; its body then."""
    deadline = time.monotonic() + within
    while True:
        got, body = await asyncio.to_thread(readyz, group, index)
        if got == status:
            return body
        if time.monotonic() > deadline:
            raise AssertionError(f"worker {index}'s /readyz still {got} after {within} s: {body}")
        await asyncio.sleep(0.5)  # another process's state: there is no event to await


def worker_lines(group: WorkerGroup, index: int) -> list[str]:
    return (group.workdir / f"worker-{index}-g1.log").read_text(errors="replace").splitlines()


@pytest.mark.timeout(400)
async def test_mongodb_down_for_30_s_midway_is_waited_out_and_loses_nothing(
    ferretdb_and_workers: tuple[PrivateServer, WorkerGroup], no_leaked_tasks: None
) -> None:
    ferretdb, group = ferretdb_and_workers
    settings = group.settings
    companies = [f"co-{i:02d}" for i in range(COMPANIES)]
    plays: dict[str, str] = {}  # play id -> company, as sent
    number: dict[str, int] = {}

    async with watching(settings, companies) as (store, tap):
        async with collecting_results(settings) as results, CommandProducer(settings) as producer:

            async def send_plays() -> None:
                """``IN_FLIGHT`` plays running at every moment, ``PLAYS`` in all: through the outage
                new plays keep coming (their play ids are claimed in MongoDB) and running ones need
                their counter (MongoDB too)."""
                while len(plays) < PLAYS:
                    goal = len(plays) - IN_FLIGHT + BATCH
                    await tap.wait_until(partial(finished, goal), 180, f"{goal} plays finished")
                    for _ in range(BATCH):
                        play_id, company, n = str(uuid.uuid4()), companies[len(plays) % COMPANIES], len(plays)
                        plays[play_id], number[play_id] = company, n
                        command = StartPlay(company_id=company, flow=FLOW.name, play_id=play_id, input={"n": n})
                        await producer.send(command)
                    await producer.flush()

            def finished(count: int) -> bool:
                return len(tap.terminal) >= count

            t0 = time.monotonic()
            async with running(send_plays()) as sender:
                await tap.wait_until(partial(finished, OUTAGE_AFTER), 120, f"{OUTAGE_AFTER} plays finished")

                down_at = time.monotonic()
                await asyncio.to_thread(ferretdb.stop)
                done_at_stop = len(tap.terminal)
                assert done_at_stop < PLAYS, "every play finished before MongoDB stopped: nothing was in flight"
                # while it is down: each worker says so on /readyz, naming mongodb and the outage its agents wait out
                for i in range(WORKERS):
                    body = await readyz_becomes(group, i, 503, READY_WITHIN_S)
                    assert body["failing"] == ["mongodb"], body
                told_at = time.monotonic() - down_at
                await asyncio.sleep(max(0.0, down_at + MONGODB_DOWN_S - time.monotonic()))  # the outage itself
                assert workers_alive(group) == [None] * WORKERS, "a worker exited while MongoDB was down"
                done_while_down = len(tap.terminal) - done_at_stop
                outage = [readyz(group, i)[1]["checks"]["mongodb"] for i in range(WORKERS)]
                await asyncio.to_thread(ferretdb.start)
                back_at = time.monotonic()
                for i in range(WORKERS):
                    await readyz_becomes(group, i, 200, READY_WITHIN_S)
                ready_again = time.monotonic() - back_at

                def unfinished() -> str:
                    running = sorted(plays.keys() - tap.terminal.keys())
                    return f"all {PLAYS} plays finished ({len(running)} still running, e.g. {running[:3]})"

                await sender
                await all_finished(settings, tap, plays, GUARD_S, unfinished)
                await results.wait_for(set(plays), 60)
                last_result = time.monotonic()
                assert workers_alive(group) == [None] * WORKERS, "a worker exited after MongoDB came back"
                print(
                    f"\nMongoDB outage: {PLAYS} plays, {done_at_stop} done when it stopped ({down_at - t0:.1f} s "
                    f"in), {done_while_down} finished while it was down ({MONGODB_DOWN_S:.0f} s); /readyz 503 on "
                    f"every worker {told_at:.1f} s after the stop, 200 again {ready_again:.1f} s after the start; "
                    f"all done {last_result - back_at:.1f} s after it was back; "
                    + stall_figures(results, down_at, back_at)
                )
                print(f"/readyz's mongodb check during the outage: {outage}")

        unsettled = await projected_within(store, results.results, PROJECTED_WITHIN_S)
        print(
            f"projection: all {PLAYS} documents final {time.monotonic() - last_result:.1f} s after the last result "
            f"({time.monotonic() - back_at:.1f} s after MongoDB was back)"
        )
        assert unsettled == {}, f"{len(unsettled)} plays' documents differ from their results: {list(unsettled)[:5]}"
        await assert_each_play_once(tap, results, plays, number, store)

    # what the workers counted and said: retries by operation, one line at the outage's start and one at its end
    retries: dict[str, float] = {}
    for i in range(WORKERS):
        for (name, labels), value in group.metrics(i).items():
            if name == "flow8_store_retries_total":
                operation = dict(labels)["operation"]
                retries[operation] = retries.get(operation, 0) + value
        assert metric(group.metrics(i), "flow8_store_waiting") == 0
    print(f"flow8_store_retries_total by operation: {retries}")
    assert sum(retries.values()) > 0, "no call waited for MongoDB: the outage missed the workers"
    for i in range(WORKERS):
        lines = worker_lines(group, i)
        down = [line for line in lines if "unreachable since" in line]
        back = [line for line in lines if " back after " in line]
        print(f"worker {i} said:", *down, *back, sep="\n  ")
        assert len(down) == 1 and len(back) == 1, (down, back)
        assert not [line for line in lines if "Traceback" in line], f"worker {i} logged a traceback"
