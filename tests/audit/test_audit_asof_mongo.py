"""``flow8 audit as-of --mongodb``: KV values at a moment from the versions the MongoDB store keeps
(on the real MongoDB wire-protocol server): known from the newest version written by then, absent
when the first version came later, unknown when the versions before it were pruned."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from pymongo import MongoClient

from flow8_streams.stores.mongo import MongoStore
from flow8_streams.stores.mongo.kv import PRUNE_EVERY
from tests.audit.conftest import flow8
from tests.audit.test_audit_mongo import _uri

pytestmark = pytest.mark.mongo
T0 = datetime(2026, 11, 30, 2, 0, tzinfo=UTC)


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now


async def _fill(uri: str, database: str) -> None:
    clock = Clock()
    store = MongoStore(uri, database, clock=clock, kv_incr_dedup_seconds=60)
    try:
        await store.open()
        await store.kv.set("acme", "a", 1)  # T0
        clock.now = T0 + timedelta(minutes=1)
        await store.kv.set("acme", "b", "one")
        for _ in range(PRUNE_EVERY - 1):  # versions 1..63 of a hot counter, at T0 + 1 min
            await store.kv.incr("acme", "hot", 1, op_id=uuid.uuid4().hex)
        clock.now = T0 + timedelta(minutes=10)
        await store.kv.set("acme", "b", "two")
        await store.kv.set("acme", "c", 3)
        await store.kv.incr("acme", "hot", 1, op_id=uuid.uuid4().hex)  # version 64: prunes those over 60 s old
        await store.kv.set("globex", "a", "not acme's")
    finally:
        await store.close()


@pytest.fixture(scope="module")
def mongo_db() -> Iterator[tuple[str, str]]:
    uri, database = _uri(), f"asof{uuid.uuid4().hex[:10]}"
    asyncio.run(_fill(uri, database))
    try:
        yield uri, database
    finally:
        client: MongoClient[dict[str, Any]] = MongoClient(uri)
        client.drop_database(database)
        client.close()


def _kv(mongo_db: tuple[str, str], when: datetime, cwd: Path) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    uri, database = mongo_db
    result = flow8(
        "audit", "as-of", when.isoformat(), "--mongodb", "--company", "acme", "--json", cwd=cwd,
        MONGODB_URI=uri, MONGODB_DATABASE=database,
    )  # fmt: skip
    assert result.code == 0, result
    summary = result.json_lines()[-1]
    assert summary["summary"] is True and uri not in result.out + result.err
    return {k["kv"]: k for k in summary["kv"]}, summary


def test_kv_as_of_from_the_versions_mongodb_keeps(mongo_db: tuple[str, str], tmp_path: Path) -> None:
    kv, summary = _kv(mongo_db, T0 + timedelta(minutes=5), tmp_path)
    assert summary["kv_keys"] == 4 and "pruned is 'unknown'" in summary["kv_note"]
    assert (kv["a"]["state"], kv["a"]["value"], kv["a"]["version"]) == ("known", 1, 1)
    assert (kv["b"]["state"], kv["b"]["value"], kv["b"]["version"]) == ("known", "one", 1)  # its older version
    assert (kv["c"]["state"], kv["c"]["value"]) == ("absent", None)
    assert (kv["hot"]["state"], kv["hot"]["value"], kv["hot"]["version"]) == ("unknown", None, PRUNE_EVERY)
    assert "pruned" in kv["hot"]["note"]

    kv, _ = _kv(mongo_db, T0 + timedelta(minutes=20), tmp_path)
    assert {k: (v["state"], v["value"]) for k, v in kv.items()} == {
        "a": ("known", 1),
        "b": ("known", "two"),
        "c": ("known", 3),
        "hot": ("known", PRUNE_EVERY),
    }
    kv, _ = _kv(mongo_db, T0 - timedelta(seconds=1), tmp_path)
    assert {k: v["state"] for k, v in kv.items()} == {"a": "absent", "b": "absent", "c": "absent", "hot": "unknown"}
