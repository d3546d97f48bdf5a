"""``flow8 archive --mongodb --prune`` on the streams runtime, against real Kafka and FerretDB: a
signing worker group runs plays; the archive carries each play's events read off the events
topic and the company's signed checkpoints (``verify --archive`` anchors every play on them, and
with ``--mongodb`` finds the chain continuous), the projections are deleted; a projection whose
events are not in Kafka is archived by its head and kept, with its reason, and one whose events
the topic no longer holds (records deleted, as a retention would) is kept saying so."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiokafka import TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, RecordsToDelete
from pymongo import MongoClient

from flow8_streams.audit import checkpoints as cp
from flow8_streams.domain.messages import StartPlay
from flow8_streams.retention import manifest as mf
from flow8_streams.runtimes.streams.client import CommandProducer
from flow8_streams.settings import Settings
from flow8_streams.stores.mongo import MongoStore
from tests.audit.conftest import flow8, kafka_env
from tests.audit.test_audit_mongo import _history
from tests.conformance.streams_harness import WorkerGroup
from tests.streams.support import collecting_results, fl, make_flow, running_group
from tests.streams.test_faults import projected_within
from tests.streams.test_streams_checkpoints import read_checkpoints

pytestmark = [pytest.mark.kafka, pytest.mark.mongo]

FLOW = make_flow("kept", fl("start", "echo", input={"n": "${input.n}"}), fl("done", "echo", "start", input={"n": 1}))
COMPANY = "arch-a"
PLAYS = 4


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    private, public, _ = cp.keygen(tmp_path_factory.mktemp("keys") / "audit")
    return private, public


@pytest.fixture(scope="module")
def group(tmp_path_factory: pytest.TempPathFactory, keys: tuple[Path, Path]) -> Iterator[WorkerGroup]:
    env = {"FLOW8_AUDIT_SIGNING_KEY": str(keys[0]), "FLOW8_AUDIT_CHECKPOINT_SECONDS": "0.5"}
    with running_group(tmp_path_factory.mktemp("workers"), count=1, extra_env=env) as workers:
        yield workers


async def run_plays(settings: Settings) -> dict[str, tuple[int, str]]:
    """``PLAYS`` plays run to their results and projected: each play's head (from its result)."""
    plays = [str(uuid.uuid4()) for _ in range(PLAYS)]
    store = await MongoStore(settings.mongodb_uri, settings.mongodb_database).open()
    try:
        await store.flows.put(COMPANY, FLOW)
        async with collecting_results(settings) as results, CommandProducer(settings) as producer:
            for n, play_id in enumerate(plays):
                await producer.send(StartPlay(company_id=COMPANY, flow=FLOW.name, play_id=play_id, input={"n": n}))
            await producer.flush()
            await results.wait_for(set(plays), 60)
        ours = {p: r for p, r in results.results.items() if p in plays}
        assert await projected_within(store, ours, 60) == {}
    finally:
        await store.close()
    return {p: (r.last_seq, r.head_hash) for p, r in ours.items()}


async def project_by_hand(settings: Settings, play_id: str) -> None:
    """A finished play's projection with no event of it on the topic."""
    store = await MongoStore(settings.mongodb_uri, settings.mongodb_database).open()
    try:
        _, state = _history(play_id, COMPANY)
        await store.plays.save([state])  # type: ignore[list-item]
    finally:
        await store.close()


async def delete_events(settings: Settings) -> None:
    """Every record of the events topic deleted, as its retention would."""
    admin = AIOKafkaAdminClient(**settings.kafka_client_options())
    await admin.start()
    try:
        tps = [TopicPartition(settings.topics.events, p) for p in range(settings.topics.partitions)]
        from aiokafka import AIOKafkaConsumer

        consumer = AIOKafkaConsumer(**settings.kafka_client_options())
        await consumer.start()
        try:
            end = await consumer.end_offsets(tps)
        finally:
            await consumer.stop()
        await admin.delete_records({tp: RecordsToDelete(end[tp]) for tp in tps if end[tp]})
    finally:
        await admin.close()


def projections(settings: Settings) -> set[str]:
    client: MongoClient[dict[str, Any]] = MongoClient(settings.mongodb_uri)
    try:
        return {d["_id"] for d in client[settings.mongodb_database].plays.find({}, {"_id": 1})}
    finally:
        client.close()


def test_archive_reads_the_events_off_kafka_and_keeps_what_the_log_cannot_vouch_for(
    group: WorkerGroup, keys: tuple[Path, Path], tmp_path: Path
) -> None:
    settings, env = group.settings, kafka_env(group)
    heads = asyncio.run(run_plays(settings))
    asyncio.run(read_checkpoints(settings, heads))  # the worker signed every play's head
    asyncio.run(project_by_hand(settings, "ghost"))

    to = tmp_path / "arch"
    args = ("archive", "--mongodb", "--company", COMPANY, "--older-than", "0s", "--to", to, "--prune", "--json")
    bounded = flow8(*args, cwd=tmp_path, **env, FLOW8_RETENTION__KAFKA_MAX_RECORDS="2")  # the group wrote more
    assert bounded.code == 1 and "(retention.kafka_max_records)" in bounded.err, bounded
    assert "stopped before deleting any play" in bounded.err and projections(settings) == set(heads) | {"ghost"}

    result = flow8(*args, cwd=tmp_path, **env)
    assert result.code == 0, result
    (outcome,) = result.json_lines()
    assert outcome["plays"] == PLAYS + 1 and outcome["pruned"] == PLAYS, outcome
    assert outcome["kept"] == {"ghost": f"no event of it found in {settings.topics.events}"}, outcome
    assert projections(settings) == {"ghost"}

    (archive,) = sorted((to / COMPANY).glob("*.jsonl.gz"))
    manifest = json.loads(mf.manifest_path(archive).read_text())
    assert manifest["plays"] == PLAYS and manifest["events"] == sum(seq for seq, _ in heads.values())
    for play_id, (seq, head_hash) in heads.items():
        head = manifest["heads"][play_id]
        assert (head["log"], head["last_seq"], head["head_hash"]) == ("kafka", seq, head_hash), head
    assert manifest["heads"]["ghost"]["log"] == "absent" and manifest["checkpoints"], manifest
    assert manifest["source"].endswith(f"events from Kafka topic {settings.topics.events}")

    alone = flow8("audit", "verify", "--archive", archive, "--company", COMPANY, "--public-key", keys[1], "--json",
                  cwd=tmp_path)  # fmt: skip
    assert alone.code == 0, alone
    verdicts = {v["play_id"]: v for v in alone.json_lines()[:-1]}
    assert set(verdicts) == set(heads) and all(v["anchored"] for v in verdicts.values()), verdicts

    # the ghost's projection is taken away by hand: the live store holds none of the company's plays now
    client: MongoClient[dict[str, Any]] = MongoClient(settings.mongodb_uri)
    try:
        client[settings.mongodb_database].plays.delete_one({"_id": "ghost"})
    finally:
        client.close()
    across = flow8("audit", "verify", "--mongodb", "--company", COMPANY, "--archive", archive, "--public-key",
                   keys[1], "--json", cwd=tmp_path, **env)  # fmt: skip
    assert across.code == 0, across
    summary = across.json_lines()[-1]
    assert summary["verdict"] == "ok" and summary["sources"]["plays_only_archived"] == PLAYS, summary

    # the topic's records deleted (its retention passed): a projection left is kept, saying so
    asyncio.run(delete_events(settings))
    asyncio.run(project_by_hand(settings, "expired"))
    result = flow8(*args, cwd=tmp_path, **env)
    assert result.code == 0, result
    (outcome,) = result.json_lines()
    assert outcome["pruned"] == 0 and outcome["kept"]["expired"].startswith("events no longer in Kafka"), outcome
    assert projections(settings) == {"expired"}
