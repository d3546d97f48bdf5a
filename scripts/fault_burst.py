#!/usr/bin/env python3
"""A slow module holding channels and a burst from one company: do other companies' plays flow?

    export $(scripts/services up | grep = | xargs)
    scripts/fault_burst.py                        # the full run: a burst of 10,000 commands
    scripts/fault_burst.py --burst 300 --json     # what tests/streams/test_burst.py runs

Two ``flow8 worker``s (channels on, ``--pool`` channels each on a loopback port block of their
own) on topics and a database of their own. Companies ``steady-*`` send plays at ``--rate``
plays/s in all (a flow with one short channel step) from start to end. After ``--baseline``
seconds company ``burst`` starts ``--stuck`` plays whose channel step sleeps ``--stuck-seconds``
(holding that many of its worker's channels), then sends ``--burst`` StartPlays at once (a flow
with a short channel step of its own, queued behind the stuck ones). Steady companies are chosen
so that some send their commands to the burst's partition (commands are keyed by company and a
partition is read in order), some to another partition of the worker that owns it, and some to
the other worker's.

Printed: the steady plays' latency, from the StartPlay's produce to its consumed result,
p50/p95/p99, before the burst (baseline) and during it, split by those three kinds; how long the
burst took. Checks (exit 1 when one fails, 2 on bad arguments):
- every play completed (steady, stuck and burst), and each result came once;
- no steady company starved: each one off the burst's partition had a play finish while the burst
  ran (before its last play finished; a burst of a few seconds proves little here);
- no channel flowlet was declared lost (``flow8_channels_lost_total``: no worker or channel died).
Bounded: the run stops at ``--limit`` seconds (the checks then fail); the workers and their
topics go at the end (the database stays, as the tests leave theirs).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import statistics
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiokafka.partitioner import DefaultPartitioner
from prometheus_client.parser import text_string_to_metric_families

from flow8_streams.channels.ports import port_is_free
from flow8_streams.domain.flow import FlowDefinition
from flow8_streams.domain.messages import StartPlay
from flow8_streams.modules import builtin
from flow8_streams.runtimes.streams.client import CommandProducer, tail_results
from flow8_streams.runtimes.streams.launcher import WorkerGroup
from flow8_streams.settings import Settings
from flow8_streams.stores.mongo import MongoStore

BURST_COMPANY = "burst"
BREAKDOWN_S = 30.0  # the longest the breakdown reads the projection
# where a steady company's commands go, against the burst's: its partition, another partition of
# the worker that owns it, or a partition of the other worker
SAME, NEIGHBOUR, OTHER = "same partition", "same worker", "other worker"
WHERE = (SAME, NEIGHBOUR, OTHER)


def flow(name: str, step: dict[str, Any]) -> FlowDefinition:
    """echo, then ``step`` on a channel, then echo: what every play here runs."""
    return FlowDefinition.model_validate(
        {
            "name": name,
            "flowlets": [
                {"name": "start", "module_ref": "echo", "input": {"n": "${input.n}"}},
                {"name": "work", "module_ref": "sleep", "depends_on": ["start"], "defer_after_ms": 1, **step},
                {"name": "done", "module_ref": "echo", "depends_on": ["work"], "input": {"n": "${input.n}"}},
            ],
        }
    ).check(builtin.MODULES)


STEADY_FLOW = flow("steady", {"input": {"seconds": 0.02}})
BURST_FLOW = flow("burst", {"input": {"seconds": 0.005}})


def stuck_flow(seconds: float) -> FlowDefinition:
    return flow("stuck", {"input": {"seconds": seconds}, "timeout": f"{int(seconds) + 120}s"})


def partition_of(company: str, partitions: int) -> int:
    """Where Kafka's default partitioner puts ``company``'s commands (as every flow8 producer)."""
    every = list(range(partitions))
    return int(DefaultPartitioner()(company.encode(), every, every))


def steady_companies(owners: dict[int, int], each: int) -> dict[str, str]:
    """``each`` companies of each kind of ``WHERE`` (``owners``: commands partition -> worker): name -> where."""
    partitions = len(owners)
    burst_at = partition_of(BURST_COMPANY, partitions)
    chosen: dict[str, str] = {}
    counts = dict.fromkeys(WHERE, 0)
    for i in range(100_000):
        name = f"steady-{i:05d}"
        at = partition_of(name, partitions)
        where = SAME if at == burst_at else NEIGHBOUR if owners[at] == owners[burst_at] else OTHER
        if counts[where] < each:
            chosen[name] = where
            counts[where] += 1
        if min(counts.values()) == each:
            return chosen
    raise RuntimeError(f"no steady companies of each kind found: {counts}")  # a worker owns every partition


def owners_of(group: WorkerGroup) -> dict[int, int]:
    """Commands partition -> the index of the worker that owns it (from each worker's /healthz)."""
    commands = group.settings.topics.commands
    owners: dict[int, int] = {}
    for index, share in enumerate(group.assigned_by_worker()):
        for tp in share:
            if tp.startswith(f"{commands}["):
                owners[int(tp[len(commands) + 1 : -1])] = index
    if sorted(owners) != list(range(group.settings.topics.partitions)):
        raise RuntimeError(f"the workers do not own every commands partition: {owners}")
    return owners


def free_port_blocks(count: int, size: int) -> list[range]:
    """``count`` disjoint blocks of ``size`` free loopback ports (20000 up to below 32768)."""
    blocks: list[range] = []
    for _ in range(1000):
        start = random.randint(20_000, 32_000 - size)
        block = range(start, start + size)
        if all(port_is_free(p) for p in block) and not any(set(block) & set(b) for b in blocks):
            blocks.append(block)
            if len(blocks) == count:
                return blocks
    raise RuntimeError(f"no {count} blocks of {size} free ports found")


def channels_env(blocks: list[range]) -> Callable[[int], dict[str, str]]:
    def env(i: int) -> dict[str, str]:
        block = blocks[i]
        return {
            "FLOW8_CHANNELS": "1",
            "CHANNEL_PORT_RANGE": f"{block[0]}-{block[-1]}",
            "CHANNEL_POOL_SIZE": str(len(block)),
            "CHANNEL_POOL_WARM": str(len(block)),
            "ADVERTISED_HOST": "127.0.0.1",
        }

    return env


def percentiles(values: list[float]) -> dict[str, float | int]:
    """Count and p50/p95/p99 in ms of ``values`` (seconds)."""
    if not values:
        return {"n": 0}
    ms = sorted(v * 1000 for v in values)
    cut = statistics.quantiles(ms, n=100, method="inclusive") if len(ms) > 1 else [ms[0]] * 99
    return {"n": len(ms), "p50_ms": round(cut[49], 1), "p95_ms": round(cut[94], 1), "p99_ms": round(cut[98], 1)}


@dataclass
class Run:
    """What was sent (play id -> company, send time) and what came back (play id -> time, status)."""

    sent: dict[str, tuple[str, float]] = field(default_factory=dict)
    done: dict[str, tuple[float, str]] = field(default_factory=dict)
    twice: list[str] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    async def collect(self, settings: Settings, ready: asyncio.Event) -> None:
        async for result, consumed_at in tail_results(settings, on_ready=ready.set):
            if result.play_id in self.done:
                self.twice.append(result.play_id)
            self.done[result.play_id] = (consumed_at, result.status)
            self.changed.set()

    async def until(self, play_ids: set[str], deadline: float) -> bool:
        """Until every play of ``play_ids`` has its result (True), or ``deadline`` (monotonic) passes."""
        while not play_ids <= self.done.keys():
            self.changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait(), max(0.0, deadline - time.monotonic()))
            if time.monotonic() >= deadline:
                return play_ids <= self.done.keys()
        return True


async def send(producer: CommandProducer, run: Run, company: str, flow: FlowDefinition, n: int) -> str:
    play_id = str(uuid.uuid4())
    command = StartPlay(company_id=company, flow=flow.name, play_id=play_id, input={"n": n})
    run.sent[play_id] = (company, await producer.send(command))
    return play_id


async def steady_load(
    producer: CommandProducer, run: Run, companies: list[str], rate: float, stop: asyncio.Event
) -> set[str]:
    """One play every 1/``rate`` s, round-robin over ``companies``, until ``stop``."""
    sent: set[str] = set()
    period = 1 / rate
    next_at = time.monotonic()
    while not stop.is_set():
        company = companies[len(sent) % len(companies)]
        sent.add(await send(producer, run, company, STEADY_FLOW, len(sent)))
        await producer.flush()
        next_at += period
        with contextlib.suppress(TimeoutError):  # the load's pace, not a synchronisation
            await asyncio.wait_for(stop.wait(), max(0.0, next_at - time.monotonic()))
    return sent


async def drive(args: argparse.Namespace, group: WorkerGroup) -> dict[str, Any]:
    settings = group.settings
    companies = steady_companies(owners_of(group), args.each)
    store = await MongoStore(settings.mongodb_uri, settings.mongodb_database).open()
    try:
        for company in companies:
            await store.flows.put(company, STEADY_FLOW)
        await store.flows.put(BURST_COMPANY, BURST_FLOW)
        await store.flows.put(BURST_COMPANY, stuck_flow(args.stuck_seconds))
    finally:
        await store.close()

    run, ready, stop = Run(), asyncio.Event(), asyncio.Event()
    collector = asyncio.create_task(run.collect(settings, ready))
    deadline = time.monotonic() + args.limit
    try:
        await ready.wait()
        async with CommandProducer(settings) as producer:
            steady = asyncio.create_task(steady_load(producer, run, list(companies), args.rate, stop))
            with contextlib.suppress(TimeoutError):  # the baseline's length
                await asyncio.wait_for(asyncio.shield(steady), args.baseline)
            burst_began = time.time()
            slow = stuck_flow(args.stuck_seconds)
            stuck = {await send(producer, run, BURST_COMPANY, slow, i) for i in range(args.stuck)}
            burst = {await send(producer, run, BURST_COMPANY, BURST_FLOW, i) for i in range(args.burst)}
            await producer.flush()
            burst_sent = time.time()
            burst_done = await run.until(burst, deadline)
            stop.set()
            steady_ids = await steady
            await producer.flush()
        finished = await run.until(steady_ids | stuck | burst, deadline)
    finally:
        stop.set()
        collector.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await collector
    result = figures(run, companies, steady_ids, stuck, burst, burst_began, burst_sent, burst_done and finished)
    print(json.dumps({k: result[k] for k in ("plays", "statuses", "burst_took_s", "latency")}), file=sys.stderr)
    result["burst_breakdown"] = await breakdown(settings, run, companies, steady_ids, burst_began)
    result["channels_lost"] = await asyncio.to_thread(channels_lost, group)
    # no worker died and no channel process was killed: a flowlet declared lost was a false alarm
    result["checks"]["no channel flowlet declared lost"] = result["channels_lost"] == 0
    return result


def channels_lost(group: WorkerGroup) -> float:
    """``flow8_channels_lost_total`` summed over the workers' /metrics."""
    total = 0.0
    for _, port in group.processes:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
            text = response.read().decode()
        for family in text_string_to_metric_families(text):
            total += sum(s.value for s in family.samples if s.name == "flow8_channels_lost_total")
    return total


async def breakdown(
    settings: Settings, run: Run, companies: dict[str, str], steady: set[str], began: float
) -> dict[str, dict[str, Any]]:
    """Where the steady plays sent during the burst spent their time, by kind of company, p50/p95
    of: ``to_start`` (the StartPlay's produce to its PlayStarted: the commands partition and the
    orchestrator), ``channel_step`` (the channel flowlet scheduled to done: the channel queue and
    run) and ``rest`` (the other flowlets, the commits, the result's read). From the projection,
    waited for a few seconds (it lags the results)."""
    wanted = {p for p in steady if p in run.done and run.sent[p][1] >= began}
    store = await MongoStore(settings.mongodb_uri, settings.mongodb_database).open()
    states: dict[str, Any] = {}
    try:
        async with asyncio.timeout(BREAKDOWN_S):  # what the projection holds by then: a loaded FerretDB is slow
            while True:
                for company in companies:
                    for state in await store.plays.list(company, None, limit=len(steady) + 100):
                        if state.play_id in wanted and state.ended_at is not None:
                            states[state.play_id] = state
                if wanted <= states.keys():
                    break
                await asyncio.sleep(0.5)  # the projection has no event to await
    except TimeoutError:
        pass
    finally:
        await store.close()
    parts: dict[str, dict[str, list[float]]] = {w: {"to_start": [], "channel_step": [], "rest": []} for w in WHERE}
    for play_id, state in states.items():
        company, sent_at = run.sent[play_id]
        work = state.flowlets["work"]
        to_start = state.started_at.timestamp() - sent_at
        step = (work.ended_at - work.started_at).total_seconds() if work.started_at and work.ended_at else 0.0
        total = run.done[play_id][0] - sent_at
        by = parts[companies[company]]
        by["to_start"].append(to_start)
        by["channel_step"].append(step)
        by["rest"].append(total - to_start - step)
    return {w: {part: percentiles(v) for part, v in by.items()} for w, by in parts.items()}


def figures(
    run: Run,
    companies: dict[str, str],
    steady: set[str],
    stuck: set[str],
    burst: set[str],
    began: float,
    sent: float,
    finished: bool,
) -> dict[str, Any]:
    burst_end = max((run.done[p][0] for p in burst if p in run.done), default=float("nan"))
    latency: dict[str, dict[str, list[float]]] = {phase: {w: [] for w in WHERE} for phase in ("baseline", "burst")}
    first_done: dict[str, float] = {}  # company -> when its first play sent during the burst finished
    served: set[str] = set()  # companies that had a play finish while the burst ran
    for play_id in steady:
        company, at = run.sent[play_id]
        if play_id not in run.done:
            continue
        done_at = run.done[play_id][0]
        phase = "baseline" if at < began else "burst" if at < burst_end else None
        if phase is not None:
            latency[phase][companies[company]].append(done_at - at)
        if phase == "burst":
            first_done[company] = min(first_done.get(company, done_at), done_at)
        if began <= done_at < burst_end:
            served.add(company)
    everything = steady | stuck | burst
    statuses: dict[str, int] = {}
    for play_id in everything:
        status = run.done[play_id][1] if play_id in run.done else "missing"
        statuses[status] = statuses.get(status, 0) + 1
    off = [c for c, where in companies.items() if where != SAME]
    starved = sorted(c for c in off if c not in served)
    same_first = [first_done[c] - began for c, where in companies.items() if where == SAME and c in first_done]
    checks = {
        "every play completed": finished and statuses == {"succeeded": len(everything)},
        "each result once": not run.twice,
        "no company off the burst's partition starved": not starved,
    }
    return {
        "plays": {"steady": len(steady), "stuck": len(stuck), "burst": len(burst)},
        "statuses": statuses,
        "results_twice": len(run.twice),
        "burst_sent_s": round(sent - began, 1),
        "burst_took_s": round(burst_end - began, 1),
        "latency": {phase: {where: percentiles(v) for where, v in by.items()} for phase, by in latency.items()},
        "same_partition_first_done_s": round(min(same_first), 1) if same_first else None,
        "starved": starved,
        "checks": checks,
    }


def report(result: dict[str, Any]) -> str:
    lines = [
        f"plays: {result['plays']}, statuses {result['statuses']}, results twice: {result['results_twice']}",
        f"burst: sent in {result['burst_sent_s']} s, its last play done {result['burst_took_s']} s after it began; "
        f"channel flowlets declared lost: {result.get('channels_lost')}",
        "steady plays' latency (produce to consumed result):",
    ]
    for phase, by in result["latency"].items():
        for where, p in by.items():
            shown = ", ".join(f"{k} {v}" for k, v in p.items())
            lines.append(f"  {phase:8} {where:14} {shown}")
    lines.append(
        "first steady play on the burst's partition sent during the burst finished "
        f"{result['same_partition_first_done_s']} s after the burst began"
    )
    lines.append("where the steady plays sent during the burst spent it (from the projection):")
    for where, by in result.get("burst_breakdown", {}).items():
        shown = "; ".join(f"{part} p50 {p.get('p50_ms')} p95 {p.get('p95_ms')}" for part, p in by.items())
        lines.append(f"  {where:14} {shown}")
    lines += [f"{'ok  ' if ok else 'FAIL'} {name}" for name, ok in result["checks"].items()]
    return "\n".join(lines)


def arguments(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--burst", type=int, default=10_000, help="StartPlays the burst company sends at once")
    parser.add_argument("--stuck", type=int, default=3, help="its plays whose channel step sleeps --stuck-seconds")
    parser.add_argument("--stuck-seconds", type=float, default=60.0)
    parser.add_argument("--pool", type=int, default=4, help="channels per worker")
    parser.add_argument("--rate", type=float, default=8.0, help="steady plays/s, all steady companies together")
    parser.add_argument("--each", type=int, default=2, help="steady companies of each kind (see the doc)")
    parser.add_argument("--baseline", type=float, default=20.0, help="seconds of steady load before the burst")
    parser.add_argument("--limit", type=float, default=1200.0, help="the run's bound in seconds")
    parser.add_argument("--json", action="store_true", help="print the figures as one JSON object")
    parser.add_argument("--workdir", type=Path, help="keep the workers' logs here (default: a temporary folder)")
    args = parser.parse_args(argv)
    bad = [n for n in ("burst", "pool", "each") if getattr(args, n) < 1]
    bad += [n for n in ("rate", "stuck_seconds", "limit") if getattr(args, n) <= 0]
    if args.stuck < 0 or args.stuck >= args.pool:
        bad.append("stuck (0 up to --pool - 1: a channel must stay free)")
    if bad:
        parser.error(f"out of range: {', '.join(bad)}")
    return args


@contextlib.contextmanager
def workers(workdir: Path, pool: int) -> Iterator[WorkerGroup]:
    kafka, mongodb = os.environ.get("KAFKA_BOOTSTRAP_SERVERS"), os.environ.get("MONGODB_URI")
    if not kafka or not mongodb:
        raise SystemExit("KAFKA_BOOTSTRAP_SERVERS and MONGODB_URI: run export $(scripts/services up | grep = | xargs)")
    for host in (*kafka.split(","), mongodb.split("@")[-1].split("//")[-1]):
        if host.split(":")[0].strip() not in ("127.0.0.1", "localhost"):
            raise SystemExit(f"loopback services only: {host.split(':')[0]} is not")
    group = WorkerGroup(kafka, mongodb, workdir, count=2, worker_env=channels_env(free_port_blocks(2, pool)))
    try:
        asyncio.run(group.start())
        yield group
    finally:
        group.stop()
        asyncio.run(discard(group))


async def discard(group: WorkerGroup) -> None:
    """Delete the group's topics (its own and faust's)."""
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(**group.settings.kafka_client_options())
    await admin.start()
    try:
        ours = [t for t in await admin.list_topics() if t.startswith((f"{group.name}.", f"{group.name}-"))]
        if ours:
            await admin.delete_topics(ours)
    finally:
        await admin.close()


def main(argv: list[str]) -> int:
    args = arguments(argv)
    with contextlib.ExitStack() as stack:
        workdir = args.workdir or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="flow8-burst-")))
        group = stack.enter_context(workers(workdir, args.pool))
        result = asyncio.run(drive(args, group))
    print(json.dumps(result) if args.json else report(result))
    return 0 if all(result["checks"].values()) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
