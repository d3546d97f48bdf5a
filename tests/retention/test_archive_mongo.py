"""``flow8 archive --mongodb`` on the real MongoDB wire-protocol server (FerretDB here): finished
plays archived and deleted (events, live versions, the play document), a running play and other
companies untouched, a projection-only play (the streams runtime's: its log is flow8.events) read
without Kafka archived by its head and kept (or deleted when the operator chose to), a prune that
finds the play gone already a success, and the shard key's index in place."""

from __future__ import annotations

import asyncio
import json
import os
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from pymongo import MongoClient

from flow8_streams.domain.messages import Start
from flow8_streams.engine import decide, fold
from flow8_streams.retention import manifest as mf
from flow8_streams.stores.mongo import MongoStore
from tests.audit.conftest import DIAMOND, flow8
from tests.audit.test_audit_mongo import _history

pytestmark = pytest.mark.mongo
T0 = datetime(2026, 11, 30, 2, 0, tzinfo=UTC)


def _uri() -> str:
    value = os.environ.get("MONGODB_URI")
    if not value:
        message = "MONGODB_URI is not set; start the servers with `export $(scripts/services up)`"
        if os.environ.get("FLOW8_REQUIRE_SERVICES") == "1":
            pytest.fail(message)
        pytest.skip(message)
    return value


async def _fill(uri: str, database: str) -> None:
    store = MongoStore(uri, database)
    try:
        await store.open()
        for play_id, company in (("m1", "acme"), ("m2", "acme"), ("m3", "globex")):
            events, state = _history(play_id, company)
            await store.log.append(events)
            await store.plays.save([state])  # type: ignore[list-item]
        _, only_projected = _history("m4", "acme")  # the streams runtime: no events in MongoDB
        await store.plays.save([only_projected])  # type: ignore[list-item]
        running = decide(None, Start(play_id="r1", company_id="acme", flow=DIAMOND, input={"amount": 1}), T0)
        await store.log.append(running)
        state = fold(running)
        assert state is not None
        await store.plays.save([state])
    finally:
        await store.close()


@pytest.fixture
def mongo_db() -> Iterator[tuple[str, str]]:
    uri, database = _uri(), f"retention{uuid.uuid4().hex[:10]}"
    asyncio.run(_fill(uri, database))
    try:
        yield uri, database
    finally:
        client: MongoClient[dict[str, Any]] = MongoClient(uri)
        client.drop_database(database)
        client.close()


def _env(uri: str, database: str) -> dict[str, str]:
    return {"MONGODB_URI": uri, "MONGODB_DATABASE": database}


def _left(uri: str, database: str) -> dict[str, set[str]]:
    client: MongoClient[dict[str, Any]] = MongoClient(uri)
    try:
        db = client[database]
        return {
            "plays": {d["_id"] for d in db.plays.find({}, {"_id": 1})},
            "events": {d["play_id"] for d in db.events.find({}, {"play_id": 1})},
            "live": {d["play_id"] for d in db.plays_live.find({}, {"play_id": 1})},
        }
    finally:
        client.close()


def test_archive_and_prune_on_mongodb_then_verify_across(mongo_db: tuple[str, str], tmp_path: Path) -> None:
    uri, database = mongo_db
    env = _env(uri, database)
    args = ("archive", "--mongodb", "--company", "acme", "--to", tmp_path / "arch")
    result = flow8(*args, "--older-than", "3650d", "--prune", cwd=tmp_path, **env)
    assert result.code == 0 and "no finished play ended before" in result.out, result

    # the operator's choice: a projection whose events are not archived with it is deleted anyway
    result = flow8(*args, "--older-than", "1h", "--prune", "--json", "--no-kafka", cwd=tmp_path,
                   FLOW8_RETENTION__PRUNE_WITHOUT_LOG="true", **env)  # fmt: skip
    assert result.code == 0, result
    (outcome,) = result.json_lines()
    assert outcome["plays"] == 3 and outcome["events"] == 20 and outcome["pruned"] == 3, outcome

    left = _left(uri, database)
    assert left["plays"] == {"m3"}  # globex's; the running r1 is in plays_live
    assert left["events"] == {"m3", "r1"} and "r1" in left["live"] and not {"m1", "m2", "m4"} & left["live"]

    (archive,) = sorted((tmp_path / "arch" / "acme").glob("*.jsonl.gz"))
    manifest = json.loads(mf.manifest_path(archive).read_text())
    assert manifest["plays"] == 2 and manifest["events"] == 20
    assert manifest["heads"]["m4"]["log"] == "absent" and manifest["heads"]["m4"]["last_seq"] == 10
    assert manifest["source"] == f"MongoDB database {database}" and uri not in json.dumps(manifest)

    verify = flow8("audit", "verify", "--mongodb", "--company", "acme", "--archive", archive, "--json", cwd=tmp_path,
                   **env)  # fmt: skip
    assert verify.code == 0, verify
    lines = verify.json_lines()
    summary = lines[-1]
    assert {v["play_id"] for v in lines[:-1]} == {"m1", "m2", "r1"}
    assert summary["sources"]["plays_only_archived"] == 2 and summary["verdict"] == "ok"


def test_a_projection_without_its_log_is_kept_when_kafka_is_not_read(mongo_db: tuple[str, str], tmp_path: Path) -> None:
    uri, database = mongo_db
    args = ("archive", "--mongodb", "--company", "acme", "--to", tmp_path / "arch", "--older-than", "1h", "--prune")
    result = flow8(*args, "--json", cwd=tmp_path, **_env(uri, database))  # no KAFKA_BOOTSTRAP_SERVERS: not read
    assert result.code == 0, result
    (outcome,) = result.json_lines()
    assert outcome["pruned"] == 2 and list(outcome["kept"]) == ["m4"], outcome
    assert "did not read Kafka: archive it with --kafka" in outcome["kept"]["m4"]
    assert _left(uri, database)["plays"] == {"m3", "m4"}
    refused = flow8("archive", "--db", tmp_path / "x.db", "--kafka", "--company", "acme", cwd=tmp_path)
    assert refused.code == 2 and "--kafka reads the events of a --mongodb store" in refused.err, refused


def test_prune_is_idempotent_and_refuses_a_grown_log(mongo_db: tuple[str, str]) -> None:
    uri, database = mongo_db

    async def go() -> tuple[bool, bool, bool, bool, list[str]]:
        store = MongoStore(uri, database)
        try:
            grown = await store.retention.prune("acme", "m1", 9)  # the archived head was 9, the log is at 10
            running = await store.retention.prune("acme", "r1", 1)
            first = await store.retention.prune("acme", "m2", 10)
            again = await store.retention.prune("acme", "m2", 10)
            expired = await store.retention.expired("acme", datetime.now(UTC) - timedelta(hours=1), 10)
            return grown, running, first, again, expired
        finally:
            await store.close()

    grown, running, first, again, expired = asyncio.run(go())
    assert (grown, running, first, again) == (False, False, True, True)
    assert expired == ["m1", "m4"]  # by start; m2 gone, r1 running, m3 another company's
    assert _left(uri, database)["plays"] == {"m1", "m3", "m4"}


def test_every_play_has_created_at_and_the_shard_key_index(mongo_db: tuple[str, str]) -> None:
    uri, database = mongo_db
    client: MongoClient[dict[str, Any]] = MongoClient(uri)
    try:
        db = client[database]
        assert all(isinstance(d.get("created_at"), datetime) for d in db.plays.find({}))
        assert all(isinstance(d.get("created_at"), datetime) for d in db.plays_live.find({}))
        indexes = {i["name"]: i for i in db.plays.list_indexes()}
        assert list(indexes["company_created_shard"]["key"].items()) == [("company_id", 1), ("created_at", 1)]
    finally:
        client.close()
