"""A streams worker with ``FLOW8_AUDIT_SIGNING_KEY`` signs, per company, the chain heads it
published, into ``flow8.checkpoints`` in the transaction of the company's partition: every
play's signed head is its terminal event's (the ``last_seq``/``head_hash`` of its result), the
checkpoints verify with the public key and follow one another, and none names a head the
worker did not write. ``flow8 audit verify --kafka --public-key`` anchors every play on them,
and catches a history rewritten by someone who replaced the events topic (its chains
recomputed, as anyone can) but could not sign."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition

from flow8_streams.audit import checkpoints as cp
from flow8_streams.domain.messages import StartPlay
from flow8_streams.runtimes.streams.admin import ensure_topics
from flow8_streams.runtimes.streams.client import CommandProducer
from flow8_streams.settings import Settings
from flow8_streams.stores.mongo import MongoStore
from tests.audit.conftest import audit, flow8, kafka_env, rehash
from tests.conformance.streams_harness import WorkerGroup

from .support import collecting_results, fl, make_flow, running_group

pytestmark = [pytest.mark.kafka, pytest.mark.mongo, pytest.mark.slow]

FLOW = make_flow("signed", fl("start", "echo", input={"n": "${input.n}"}), fl("done", "echo", "start", input={"n": 1}))
COMPANIES = ("signed-a", "signed-b")
PLAYS_EACH = 5
SIGNED_WITHIN_S = 60.0


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    private, public, _ = cp.keygen(tmp_path_factory.mktemp("keys") / "audit")
    return private, public


@pytest.fixture(scope="module", params=["partition", "worker"])
def signing_worker(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, keys: tuple[Path, Path]
) -> Iterator[WorkerGroup]:
    """One worker per transaction mode (FLOW8_TRANSACTIONS): a checkpoint goes in either's transaction."""
    env = {
        "FLOW8_AUDIT_SIGNING_KEY": str(keys[0]),
        "FLOW8_AUDIT_CHECKPOINT_SECONDS": "0.5",
        "FLOW8_TRANSACTIONS": request.param,
    }
    with running_group(tmp_path_factory.mktemp("workers"), count=1, extra_env=env) as group:
        yield group


async def run_plays(settings: Settings) -> tuple[dict[str, str], dict[str, tuple[int, str]]]:
    """``PLAYS_EACH`` plays of each company run to their results: play -> company, and each
    play's anchor (its result's ``last_seq`` and ``head_hash``)."""
    plays = {str(uuid.uuid4()): COMPANIES[i % 2] for i in range(2 * PLAYS_EACH)}
    store = await MongoStore(settings.mongodb_uri, settings.mongodb_database).open()
    try:
        for company in COMPANIES:
            await store.flows.put(company, FLOW)
    finally:
        await store.close()
    async with collecting_results(settings) as results, CommandProducer(settings) as producer:
        for n, (play_id, company) in enumerate(plays.items()):
            await producer.send(StartPlay(company_id=company, flow=FLOW.name, play_id=play_id, input={"n": n}))
        await producer.flush()
        await results.wait_for(set(plays), 60)
    return plays, {p: (r.last_seq, r.head_hash) for p, r in results.results.items() if p in plays}


async def read_checkpoints(settings: Settings, covers: dict[str, tuple[int, str]]) -> list[cp.SignedCheckpoint]:
    """The committed records of the checkpoints topic, read until their heads name every play of
    ``covers`` at its seq (or SIGNED_WITHIN_S passes)."""
    consumer = AIOKafkaConsumer(
        **settings.kafka_client_options(), isolation_level="read_committed", enable_auto_commit=False
    )
    await consumer.start()
    got: list[cp.SignedCheckpoint] = []
    signed: dict[str, tuple[int, str]] = {}
    try:
        tps = [TopicPartition(settings.topics.checkpoints, p) for p in range(settings.topics.partitions)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        async with asyncio.timeout(SIGNED_WITHIN_S):
            while any(signed.get(p) != head for p, head in covers.items()):
                for records in (await consumer.getmany(timeout_ms=500)).values():
                    for record in records:
                        item = cp.parse_line(record.value, f"{record.topic}[{record.partition}]@{record.offset}")
                        assert isinstance(item, cp.SignedCheckpoint), item
                        got.append(item)
                        for h in item.body["heads"]:
                            if h["last_seq"] >= signed.get(h["play_id"], (0, ""))[0]:
                                signed[h["play_id"]] = (h["last_seq"], h["head_hash"])
    except TimeoutError:
        raise AssertionError(f"signed heads {signed}, want {covers}") from None
    finally:
        await consumer.stop()
    return got


async def read_all(consumer: AIOKafkaConsumer, topic: str, partitions: int) -> list[ConsumerRecord[Any, Any]]:
    """The committed records of ``topic`` up to its end offsets as of now."""
    tps = [TopicPartition(topic, p) for p in range(partitions)]
    end = await consumer.end_offsets(tps)
    consumer.assign(tps)
    await consumer.seek_to_beginning(*tps)
    records: list[ConsumerRecord[Any, Any]] = []
    left = {tp for tp in tps if end[tp] > 0}
    while left:
        for tp, batch in (await consumer.getmany(*left, timeout_ms=500)).items():
            records += [r for r in batch if r.offset < end[tp]]
        left = {tp for tp in left if await consumer.position(tp) < end[tp]}
    return records


async def replace_events(settings: Settings, victim: str) -> str:
    """Copy the events and checkpoints topics to a new prefix, as an attacker who can replace
    topics would, with ``victim``'s input rewritten and its chain recomputed; returns the prefix."""
    prefix = f"forged-{uuid.uuid4().hex[:8]}"
    forged = settings.model_copy(update={"topics": settings.topics.model_copy(update={"prefix": prefix})})
    await ensure_topics(forged)
    options = settings.kafka_client_options()
    consumer = AIOKafkaConsumer(**options, isolation_level="read_committed", enable_auto_commit=False)
    producer = AIOKafkaProducer(**options)
    await consumer.start()
    await producer.start()
    try:
        events = await read_all(consumer, settings.topics.events, settings.topics.partitions)
        history = sorted(
            (orjson.loads(r.value) for r in events if orjson.loads(r.value)["play_id"] == victim),
            key=lambda d: d["seq"],
        )
        history[0]["payload"]["input"] = {"n": 1_000_000}
        rewritten = {d["seq"]: orjson.dumps(d) for d in rehash(history)}
        for r in events:
            doc = orjson.loads(r.value)
            value = rewritten[doc["seq"]] if doc["play_id"] == victim else r.value
            await producer.send_and_wait(forged.topics.events, value, key=r.key, partition=r.partition)
        for r in await read_all(consumer, settings.topics.checkpoints, settings.topics.partitions):
            await producer.send_and_wait(forged.topics.checkpoints, r.value, key=r.key, partition=r.partition)
    finally:
        await consumer.stop()
        await producer.stop()
    return prefix


async def test_a_worker_signs_the_heads_it_published_and_they_are_the_results_anchors(
    signing_worker: WorkerGroup, keys: tuple[Path, Path]
) -> None:
    settings = signing_worker.settings
    plays, anchors = await run_plays(settings)
    assert all(seq and head for seq, head in anchors.values()), anchors

    checkpoints = await read_checkpoints(settings, anchors)

    public = cp.load_public_key(keys[1])
    for company in COMPANIES:
        checked = cp.check(checkpoints, public, company)
        assert checked.findings == [], checked.findings  # signed by the key, numbered 1, 2, ... and linked
        mine = {p for p, c in plays.items() if c == company}
        assert set(checked.heads) == mine  # a company's checkpoints name its plays only
        for play_id in mine:
            top = max(checked.heads[play_id], key=lambda a: a.last_seq)
            assert (top.last_seq, top.head_hash) == anchors[play_id]
    assert {c.body["writer"] for c in checkpoints} == {f"{signing_worker.name}-w0-g1"}

    # the auditor's command anchors every play on them
    cwd = keys[0].parent
    result, verdicts, summary = await asyncio.to_thread(
        audit, signing_worker, cwd, "--all-companies", "--public-key", str(keys[1])
    )
    assert result.code == 0 and summary["verdict"] == "ok", result
    assert set(verdicts) == set(plays) and all(v["anchored"] for v in verdicts.values()), verdicts

    # an attacker with the topics, not the key: the events topic replaced, one play's input
    # rewritten and its chain recomputed; the checkpoints copied as they are
    forged = await replace_events(settings, victim := next(iter(plays)))
    env_prefix = {"FLOW8_TOPICS__PREFIX": forged}
    result = await asyncio.to_thread(
        flow8,
        "audit",
        "verify",
        "--kafka",
        "--all-companies",
        "--public-key",
        str(keys[1]),
        "--json",
        cwd=cwd,
        **{**kafka_env(signing_worker), **env_prefix},
    )
    assert result.code == 1, result
    lines = result.json_lines()
    bad = {v["play_id"]: v for v in lines[:-1] if v["findings"]}
    assert set(bad) == {victim}, bad
    assert [f["seq"] for f in bad[victim]["findings"] if f["kind"] == "rewritten"] == [anchors[victim][0]], bad

    # another key's public half verifies none of them
    _, other_public, _ = cp.keygen(keys[0].parent.parent / f"other-{uuid.uuid4().hex[:6]}")
    unsigned = cp.check(checkpoints, cp.load_public_key(other_public), COMPANIES[0])
    assert unsigned.heads == {} and unsigned.findings and all(f.kind == "checkpoint_forged" for f in unsigned.findings)


@pytest.fixture(params=["worker", "partition"])
def unhurried_worker(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, keys: tuple[Path, Path]
) -> Iterator[WorkerGroup]:
    """A signing worker whose checkpoint timer never fires within a test."""
    env = {
        "FLOW8_AUDIT_SIGNING_KEY": str(keys[0]),
        "FLOW8_AUDIT_CHECKPOINT_SECONDS": "3600",
        "FLOW8_TRANSACTIONS": request.param,
    }
    with running_group(tmp_path_factory.mktemp("stopped"), count=1, extra_env=env) as group:
        yield group


async def test_a_worker_stopped_gracefully_signs_and_commits_what_it_published_since_its_last_checkpoint(
    unhurried_worker: WorkerGroup, keys: tuple[Path, Path]
) -> None:
    """The heads are signed at the stop, and committed (a checkpoint sent once the consumer had
    let its partitions go was aborted with the open transaction: a company's plays were left
    unanchored now and then)."""
    group = unhurried_worker
    settings = group.settings
    plays, anchors = await run_plays(settings)
    await asyncio.to_thread(group.stop)  # SIGTERM: a graceful stop
    checkpoints = await read_checkpoints(settings, anchors)
    public = cp.load_public_key(keys[1])
    for company in COMPANIES:
        checked = cp.check(checkpoints, public, company)
        assert checked.findings == [], checked.findings
        assert set(checked.heads) == {p for p, c in plays.items() if c == company}
