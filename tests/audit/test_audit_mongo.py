"""``flow8 audit verify --mongodb`` reads the streams runtime's store through its ports, on the
real MongoDB wire-protocol server: clean when honest, the play and seq named when an event
document was edited or a finished play's last events deleted."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import pytest
from pymongo import MongoClient

from flow8_streams.domain.messages import FlowletResult, Start
from flow8_streams.engine import decide, fold
from flow8_streams.stores.mongo import MongoStore
from tests.audit.conftest import DIAMOND, findings, flow8

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


def _history(play_id: str, company: str) -> tuple[list, object]:
    """A whole play of the diamond decided by the engine: its events and final state."""
    events = decide(None, Start(play_id=play_id, company_id=company, flow=DIAMOND, input={"amount": 100}), T0)
    state = fold(events)
    for i, name in enumerate(("fetch", "fee", "tax", "pay"), start=1):
        assert state is not None
        now = T0 + timedelta(seconds=i)
        more = decide(
            state,
            FlowletResult(play_id=play_id, company_id=company, flowlet=name, attempt=1, ok=True,
                          output={"amount": 100, "step": name}, started_at=now, ended_at=now),
            now,
        )  # fmt: skip
        events += more
        state = fold(more, state)
    return events, state


async def _fill(uri: str, database: str) -> None:
    store = MongoStore(uri, database)
    try:
        await store.open()
        for play_id, company in (("m1", "acme"), ("m2", "acme"), ("m3", "globex")):
            events, state = _history(play_id, company)
            await store.log.append(events)
            await store.plays.save([state])  # type: ignore[list-item]
    finally:
        await store.close()


@pytest.fixture
def mongo_db(tmp_path: Path) -> Iterator[tuple[str, str]]:
    uri, database = _uri(), f"audit{uuid.uuid4().hex[:10]}"
    asyncio.run(_fill(uri, database))
    try:
        yield uri, database
    finally:
        client: MongoClient = MongoClient(uri)
        client.drop_database(database)
        client.close()


def _verify(tmp_path: Path, uri: str, database: str) -> tuple[int, dict, dict]:
    result = flow8("audit", "verify", "--mongodb", "--company", "acme", "--json", cwd=tmp_path,
                   MONGODB_URI=uri, MONGODB_DATABASE=database)  # fmt: skip
    assert result.code in (0, 1), result
    lines = result.json_lines()
    return result.code, {v["play_id"]: v for v in lines[:-1]}, lines[-1]


def test_audit_verify_on_mongodb(mongo_db: tuple[str, str], tmp_path: Path) -> None:
    uri, database = mongo_db
    code, verdicts, summary = _verify(tmp_path, uri, database)
    assert code == 0 and set(verdicts) == {"m1", "m2"} and summary["events"] == 20, (verdicts, summary)

    client: MongoClient = MongoClient(uri)
    try:
        events = client[database]["events"]
        doc = events.find_one({"play_id": "m1", "type": "FlowletCompleted"}, sort=[("seq", 1)])
        assert doc is not None
        body = orjson.loads(doc["body"])
        body["payload"]["output"]["amount"] = 1_000_000
        events.update_one({"_id": doc["_id"]}, {"$set": {"body": orjson.dumps(body)}})
        last = events.find_one({"play_id": "m2"}, sort=[("seq", -1)])
        assert last is not None
        events.delete_one({"_id": last["_id"]})
    finally:
        client.close()

    code, verdicts, summary = _verify(tmp_path, uri, database)
    assert code == 1 and summary["verdict"] == "findings"
    assert findings(verdicts["m1"]) == [("altered", doc["seq"])]
    assert ("cut_tail", last["seq"]) in findings(verdicts["m2"])
