"""The acceptance test of the streams runtime: ``kill -9`` of one worker of three, mid-load.

Three ``flow8 worker`` processes in one consumer group share 12 partitions. 1,000 plays
over 50 companies run a small DAG with an async step (so plays are in flight over time)
and a KV counter. Once a hundred plays of its partitions have finished and others run, one
worker is killed without warning.
Exactly-once means: every play completes, no event is written twice, every history
chains, every play has exactly one result, and the counters add up to exactly 1,000.
The projection keeps up: within 30 s of the last result every play's MongoDB document is final
and agrees with its result. The test prints how long the killed worker's partitions stalled.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import pytest
from aiokafka import TopicPartition

from flow8_streams.domain.messages import StartPlay
from flow8_streams.runtimes.streams.client import CommandProducer
from flow8_streams.settings import Settings
from flow8_streams.stores.mongo import MongoStore
from tests.conformance.streams_harness import EventTap, WorkerGroup

from .support import (
    FLOW,
    all_finished,
    assert_each_play_once,
    collecting_results,
    group_offsets,
    projected_within,
    running_group,
    watching,
)

pytestmark = [pytest.mark.kafka, pytest.mark.mongo, pytest.mark.slow]

PLAYS = 1000
COMPANIES = 50
KILL_AFTER = 100  # plays of the victim's partitions finished before the kill (of about 330)
GUARD_S = 240.0  # every play finished within this after the kill (the dead member's session expires in 60 s)
PROJECTED_WITHIN_S = 30.0  # every play's MongoDB document final after the last result


@pytest.fixture(scope="module")
def three_workers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WorkerGroup]:
    with running_group(tmp_path_factory.mktemp("workers"), count=3) as group:
        yield group


def commands_partitions(group: WorkerGroup, index: int) -> set[int]:
    commands = group.settings.topics.commands
    assigned = group.healthz(index)["assigned"]
    return {int(tp[len(commands) + 1 : -1]) for tp in assigned if tp.startswith(f"{commands}[")}


async def where_unprojected(
    settings: Settings, store: MongoStore, tap: EventTap, play_ids: list[str], why: dict[str, str]
) -> dict[str, str]:
    """For each play whose document lags: the offsets of its events past the document's seq,
    and the group's committed offset of their partition: committed past them means the
    projector's input skipped them, below them that it never got there."""
    committed = await group_offsets(settings)
    told: dict[str, str] = {}
    for play_id in play_ids:
        doc = await store.plays.get(None, play_id)
        seq = 0 if doc is None else doc.seq
        partition = tap.partition.get(play_id)
        meta = committed.get(TopicPartition(settings.topics.events, partition or 0))
        missing = [f"{e.seq} {e.type}@{tap.offset.get((play_id, e.seq))}" for e in tap.history(play_id) if e.seq > seq]
        missing = missing or [f"none now: the document caught up since (seq {seq}), late"]
        told[play_id] = (
            f"{why[play_id]}; events partition {partition}, committed offset "
            f"{None if meta is None else meta.offset}; not projected: {', '.join(missing)}"
        )
    return told


@pytest.mark.timeout(400)
async def test_kill_9_of_one_worker_of_three_loses_and_duplicates_nothing(
    three_workers: WorkerGroup, no_leaked_tasks: None
) -> None:
    group = three_workers
    settings = group.settings
    companies = [f"co-{i:02d}" for i in range(COMPANIES)]
    plays = {str(uuid.uuid4()): companies[i % COMPANIES] for i in range(PLAYS)}
    number = {play_id: n for n, play_id in enumerate(plays)}
    owned = [commands_partitions(group, i) for i in range(3)]
    assert sorted(p for parts in owned for p in parts) == list(range(settings.topics.partitions)), owned
    victim = 1
    assert owned[victim], "the worker to kill owns no partition: killing it would prove nothing"

    async with watching(settings, companies) as (store, tap):
        async with collecting_results(settings) as results, CommandProducer(settings) as producer:
            t0 = time.monotonic()
            for play_id, company in plays.items():
                command = StartPlay(company_id=company, flow=FLOW.name, play_id=play_id, input={"n": number[play_id]})
                await producer.send(command)
            await producer.flush()

            def victims_midway() -> bool:
                """Plays of the victim's partitions done, and others of them in flight: its death
                then cuts through work its successors must finish."""
                on_victim = [p for p, part in tap.partition.items() if part in owned[victim]]
                done = sum(p in tap.terminal for p in on_victim)
                return done >= KILL_AFTER and done < len(on_victim)

            await tap.wait_until(victims_midway, 120, f"{KILL_AFTER} plays of the victim's partitions finished")
            group.kill(victim)
            killed_at = time.monotonic()
            await tap.sync()  # every play the victim finished (committed) is counted as done before the kill
            done_before_kill = set(tap.terminal)
            marked = tap.mark()  # from here, the victim's partitions are silent until a survivor takes them over
            assert len(done_before_kill) < PLAYS, "every play finished before the kill: nothing was in flight"

            def unfinished() -> str:
                """Which plays still run, where, and how far their logs got: what a failure needs."""
                running = sorted(plays.keys() - tap.terminal.keys())
                shown = "; ".join(
                    f"{p} (company {plays[p]}, partition {tap.partition.get(p)}, "
                    f"{'victim' if tap.partition.get(p) in owned[victim] else 'survivor'}): "
                    + ", ".join(f"{e.seq} {e.type}" for e in tap.history(p)[-4:])
                    for p in running[:3]
                )
                return f"all {PLAYS} plays finished ({len(running)} still running: {shown})"

            await all_finished(settings, tap, plays, GUARD_S, unfinished)
            await results.wait_for(set(plays), 60)
            last_result = time.monotonic()
            took = last_result - t0
            resumed = {p: tap.first_since_mark[p] - killed_at for p in owned[victim] if p in tap.first_since_mark}
            print(
                f"\n{PLAYS} plays: {len(done_before_kill)} done at the kill ({killed_at - t0:.1f} s), "
                f"all done {took:.1f} s after the first command; the killed worker's partitions "
                f"{sorted(owned[victim])} stalled {max(resumed.values(), default=float('nan')):.1f} s at most "
                f"(each: { {p: round(t, 1) for p, t in sorted(resumed.items())} }; tap read-lag "
                f"{marked - killed_at:.1f} s after the kill)"
            )

        # the projection keeps up: every play's document final and agreeing with its result, soon
        unsettled = await projected_within(store, results.results, PROJECTED_WITHIN_S)
        print(f"projection: all {PLAYS} documents final {time.monotonic() - last_result:.1f} s after the last result")
        assert unsettled == {}, f"{len(unsettled)} plays' MongoDB documents differ from their results: " + str(
            await where_unprojected(settings, store, tap, list(unsettled)[:5], unsettled)
        )

        await assert_each_play_once(tap, results, plays, number, store)

        # the victim's plays were taken over: some of its partitions' plays were unfinished at its death
        taken_over = [p for p in plays if p not in done_before_kill and tap.partition[p] in owned[victim]]
        assert taken_over, "no play of the killed worker's partitions finished after the kill"
