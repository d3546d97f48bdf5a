"""``flow8 audit verify --kafka`` reads ``flow8.events`` written by real ``flow8 worker`` processes
on the real broker: clean when honest; ``rebuild --kafka`` brings back a dropped MongoDB projection
that then verifies clean; after a forged record and a garbage record are produced to
the topic with a plain producer, the play and seq of the forgery are named, and the bad records by
partition and offset, skipped, never a crash."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import orjson
import pytest
from aiokafka import AIOKafkaProducer
from pymongo import MongoClient

from tests.audit.conftest import audit, findings, flow8, kafka_env
from tests.conformance.streams_harness import StreamsHarness, WorkerGroup
from tests.security.test_kafka_scram import scram_login
from tests.services import require_service
from tests.streams.support import fl, make_flow, running_group

pytestmark = [pytest.mark.kafka, pytest.mark.mongo]

DIAMOND = make_flow(
    "payout-k",
    fl("fetch", "echo", input={"amount": "${input.amount}"}),
    fl("fee", "echo", "fetch", input={"fee": 2}),
    fl("tax", "echo", "fetch", input={"tax": 0.2}),
    fl("pay", "echo", "fee", "tax"),
)
PLAYS = {"k1": "acme", "k2": "acme", "k3": "globex"}


@pytest.fixture(scope="module")
def group(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WorkerGroup]:
    with running_group(tmp_path_factory.mktemp("audit-kafka")) as group:
        yield group


async def test_verify_from_kafka_then_forged_and_garbage_records(
    group: WorkerGroup, tmp_path: Path, no_leaked_tasks: None
) -> None:
    async with StreamsHarness(group) as harness:  # closed before the garbage: its tap reads only events
        for play_id, company in PLAYS.items():
            await harness.start(DIAMOND, {"amount": 100}, company_id=company, play_id=play_id)
        for play_id, company in PLAYS.items():
            await harness.wait(play_id)
            assert await harness.projection(company, play_id) is not None  # the projector caught up
        original = harness.tap.history("k1")[2]
        k2_second = harness.tap.history("k2")[1]

    result, verdicts, summary = audit(group, tmp_path, "--company", "acme")
    assert result.code == 0, result
    assert sorted(verdicts) == ["k1", "k2"]  # globex's play is not acme's to see
    assert all(v["verdict"] == "ok" and v["status"] == "succeeded" and v["events"] == 10 for v in verdicts.values())
    assert summary["verdict"] == "ok" and summary["events"] == 20

    # the projection rebuilt from the topic equals the workers'; dropped, it comes back whole from the log
    env = kafka_env(group)
    fresh = f"{group.name}-rebuilt"
    try:
        result = flow8(
            "audit", "rebuild", "--kafka", "--all-companies", "--into-mongodb", fresh, "--json", cwd=tmp_path, **env
        )
        assert result.code == 0, result
        assert result.json_lines()[-1] == {**result.json_lines()[-1], "plays": 3, "compared": True, "verdict": "ok"}
    finally:
        with MongoClient(group.settings.mongodb_uri) as client:
            client.drop_database(fresh)
            for projection in ("plays", "plays_live"):  # finished plays, and those in flight with tombstones
                client[group.name][projection].drop()
    result, verdicts, _ = audit(group, tmp_path, "--all-companies")
    assert result.code == 1, result
    assert {p: [f["field"] for f in v["findings"]] for p, v in verdicts.items()} == {p: ["(row)"] for p in PLAYS}
    # without $MONGODB_URI no projection is compared, not even the default server's (the same one here)
    no_uri = {k: v for k, v in env.items() if k != "MONGODB_URI"}
    result = flow8("audit", "verify", "--kafka", "--all-companies", cwd=tmp_path, **no_uri)
    assert result.code == 0, result
    result = flow8("audit", "rebuild", "--kafka", "--all-companies", "--into-mongodb", fresh, cwd=tmp_path, **no_uri)
    assert result.code == 2 and "--into-mongodb needs $MONGODB_URI" in result.err, result
    result = flow8("audit", "rebuild", "--kafka", "--all-companies", "--into-mongodb", group.name, cwd=tmp_path, **env)
    assert result.code == 0, result
    result, verdicts, summary = audit(group, tmp_path, "--all-companies")
    assert result.code == 0, result
    assert (summary["plays"], summary["events"], summary["verdict"]) == (3, 30, "ok")

    # what anyone who can write the topic does: a third seq with another output, garbage, a newer type
    assert original.type == "FlowletCompleted"
    forged = original.model_dump(mode="json")
    forged["payload"]["output"] = {"amount": 1_000_000}
    producer = AIOKafkaProducer(bootstrap_servers=group.settings.kafka_bootstrap_servers)
    await producer.start()
    try:
        topic = group.settings.topics.events
        at_forged = await producer.send_and_wait(topic, orjson.dumps(forged), key=b"acme")
        at_garbage = await producer.send_and_wait(topic, b"\x00{not json", key=b"acme")
        newer = {**forged, "type": "FlowletPaused", "seq": 11}
        at_newer = await producer.send_and_wait(topic, orjson.dumps(newer), key=b"acme")
        again = await producer.send_and_wait(topic, orjson.dumps(k2_second.model_dump(mode="json")), key=b"acme")
    finally:
        await producer.stop()

    result, verdicts, summary = audit(group, tmp_path, "--company", "acme")
    assert result.code == 1, result
    assert findings(verdicts["k1"]) == [("duplicated", 3)]
    assert verdicts["k2"]["verdict"] == "ok"  # an identical record again is a redelivery, read once
    assert summary["skipped"] == {"redelivered": 1} and again.offset > at_newer.offset
    bad = {(f["kind"], f["partition"], f["offset"]) for f in summary["findings"]}
    assert bad == {
        ("undecodable", at_garbage.partition, at_garbage.offset),
        ("unknown_type", at_newer.partition, at_newer.offset),
    }
    assert summary["findings_by_kind"] == {"duplicated": 1, "undecodable": 1, "unknown_type": 1}
    assert "Traceback" not in result.err

    # a range of the partition that ends before the forgery reads the honest history again
    result, verdicts, _ = audit(
        group, tmp_path, "--company", "acme", "--partition", str(at_forged.partition), "--to-offset",
        str(at_forged.offset),
    )  # fmt: skip
    assert result.code == 0, result
    assert {"k1", "k2"} <= set(verdicts) and all(v["verdict"] == "ok" for v in verdicts.values())

    # the human report names the play, the seq and where the bad records are
    human = flow8("audit", "verify", "--kafka", "--company", "acme", cwd=tmp_path, **kafka_env(group))
    assert human.code == 1
    assert "k1 duplicated seq 3" in human.out
    assert f"partition {at_garbage.partition} offset {at_garbage.offset}" in human.out


async def test_since_reads_from_that_time_by_offsets_for_times(
    group: WorkerGroup, tmp_path: Path, no_leaked_tasks: None
) -> None:
    async with StreamsHarness(group) as harness:
        await harness.run(DIAMOND, {"amount": 1}, company_id="acme", play_id="s1")
        since = datetime.now(UTC)
        await harness.run(DIAMOND, {"amount": 2}, company_id="acme", play_id="s2")
        assert await harness.projection("acme", "s2") is not None
    result, verdicts, summary = audit(group, tmp_path, "--company", "acme", "--since", since.isoformat())
    assert result.code == 0, result
    assert sorted(verdicts) == ["s2"] and summary["events"] == 10  # nothing before it read, nothing after it lost


async def test_aborted_and_open_transactions_are_not_history(group: WorkerGroup, tmp_path: Path) -> None:
    """read_committed: an aborted record is never read, and a transaction still open when the
    read starts is past its end (the last stable offset), not waited for."""
    topic = group.settings.topics.events
    producer = AIOKafkaProducer(
        bootstrap_servers=group.settings.kafka_bootstrap_servers, transactional_id=f"{group.name}-audit-test"
    )
    await producer.start()
    try:
        await producer.begin_transaction()
        aborted = await producer.send_and_wait(topic, b"aborted garbage", key=b"acme")
        await producer.abort_transaction()
        await producer.begin_transaction()
        still_open = await producer.send_and_wait(topic, b"open garbage", key=b"acme")
        result = await asyncio.to_thread(
            flow8, "audit", "verify", "--kafka", "--all-companies", "--json", cwd=tmp_path, **kafka_env(group)
        )
        await producer.abort_transaction()
    finally:
        await producer.stop()
    assert result.code in (0, 1), result
    places = {(f.get("partition"), f.get("offset")) for f in result.json_lines()[-1]["findings"]}
    assert (aborted.partition, aborted.offset) not in places
    assert (still_open.partition, still_open.offset) not in places


async def test_verify_logs_in_with_scram_and_a_refused_login_names_the_settings_not_the_password(
    group: WorkerGroup, tmp_path: Path, no_leaked_tasks: None
) -> None:
    async with StreamsHarness(group) as harness:
        await harness.run(DIAMOND, {"amount": 3}, company_id="scram-co", play_id="scram-1")
    login = scram_login()
    env = {**kafka_env(group), **login, "KAFKA_BOOTSTRAP_SERVERS": require_service("KAFKA_SASL_BOOTSTRAP_SERVERS")}
    env.pop("MONGODB_URI")
    result = flow8("audit", "verify", "--kafka", "--company", "scram-co", "--json", cwd=tmp_path, **env)
    assert result.code == 0, result
    assert result.json_lines()[-1]["plays"] == 1  # read over the SCRAM listener

    wrong = f"wrong-{uuid.uuid4().hex}"
    result = flow8(
        "audit", "verify", "--kafka", "--all-companies", cwd=tmp_path, **{**env, "KAFKA_SASL_PASSWORD": wrong}
    )
    assert result.code == 1, result
    assert "KAFKA_SASL_PASSWORD" in result.err and wrong not in result.err + result.out
    assert login["KAFKA_SASL_PASSWORD"] not in result.err + result.out and "Traceback" not in result.err


def test_a_partition_or_a_topic_kafka_lacks_is_exit_2_naming_it(group: WorkerGroup, tmp_path: Path) -> None:
    env = kafka_env(group)
    env.pop("MONGODB_URI")
    partitions = group.settings.topics.partitions
    result = flow8(
        "audit", "verify", "--kafka", "--company", "acme", "--partition", str(partitions), cwd=tmp_path, **env
    )
    assert result.code == 2, result
    assert f"--partition {partitions}: {group.name}.events has partitions 0 to {partitions - 1}" in result.err
    result = flow8(
        "audit", "verify", "--kafka", "--company", "acme", cwd=tmp_path, **{**env, "FLOW8_TOPICS__PREFIX": "nope"}
    )
    assert result.code == 2, result
    assert "no topic nope.events" in result.err and "Traceback" not in result.err


def test_kafka_range_flags_are_checked(tmp_path: Path) -> None:
    for args, says in (
        (["--db", "x.db", "--kafka"], "give one source"),
        (["--kafka", "--from-offset", "3"], "--from-offset and --to-offset need --partition"),
        (["--kafka", "--partition", "0", "--from-offset", "5", "--to-offset", "5"], "must be greater"),
        (["--db", "x.db", "--partition", "0"], "it needs --kafka"),
    ):
        result = flow8("audit", "verify", "--company", "acme", *args, cwd=tmp_path)
        assert result.code == 2, result
        assert says in result.err and "Traceback" not in result.err


def test_kafka_unreachable_is_exit_1_naming_it(tmp_path: Path) -> None:
    result = flow8(
        "audit", "verify", "--kafka", "--company", "acme", cwd=tmp_path, KAFKA_BOOTSTRAP_SERVERS="127.0.0.1:1"
    )
    assert result.code == 1, result
    assert "127.0.0.1:1" in result.err and "Traceback" not in result.err
