"""kv.incr is exactly-once for as long as a task can be redelivered: operation ids are
kept by age (``kv_incr_dedup_seconds``, default 24 h), never by count, on SQLite and on
MongoDB (FerretDB here). Older ids are pruned by their writers; the tests move an
injected clock instead of waiting."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from flow8_streams.channels import worker as channel_worker
from flow8_streams.channels.slot import MongoKV as ChannelMongoKV
from flow8_streams.channels.slot import WorkerCommand
from flow8_streams.errors import InvalidInput
from flow8_streams.modules.context import KV
from flow8_streams.settings import load_settings
from flow8_streams.stores import mongo as mongo_store
from flow8_streams.stores import sqlite as sqlite_store
from flow8_streams.stores.mongo import MongoStore, _kv_id
from flow8_streams.stores.ports import KVEntry
from flow8_streams.stores.sqlite import SqliteStore
from tests.stores.test_mongo import fresh_store

T0 = datetime(2026, 1, 1, tzinfo=UTC)


class Clock:
    """A clock the test moves."""

    def __init__(self, now: datetime = T0) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


Opener = Callable[..., AbstractAsyncContextManager[Any]]


@pytest.fixture(params=["sqlite", pytest.param("mongo", marks=pytest.mark.mongo)])
def open_store(request: pytest.FixtureRequest, tmp_path: Path) -> Opener:
    """Opens a fresh store of the parameter's backend with the given options."""

    @asynccontextmanager
    async def sqlite(**options: Any) -> AsyncIterator[SqliteStore]:
        store = SqliteStore(tmp_path / "kv.db", **options)
        try:
            yield store
        finally:
            store.close()

    return sqlite if request.param == "sqlite" else fresh_store


async def test_a_redelivered_task_does_not_count_again_after_1000_writes_of_its_key(open_store: Opener) -> None:
    async with open_store() as store:
        # the first task's increment, then more than a thousand others of the same key
        first = await KV(store.kv, "acme", "play-1/count").incr("hits")
        for i in range(1_100):
            await store.kv.incr("acme", "hits", 1, f"other-play-{i}/count/1")
        # the first task is redelivered (a rebalance): a new run of it makes the same call
        assert await KV(store.kv, "acme", "play-1/count").incr("hits") == first == 1
        assert await store.kv.get("acme", "hits") == KVEntry("hits", 1_101, 1_101)


async def test_op_ids_are_pruned_by_age_only(open_store: Opener) -> None:
    clock = Clock()
    async with open_store(kv_incr_dedup_seconds=60, clock=clock) as store:
        old = await store.kv.incr("acme", "n", 1, "old")
        clock.advance(59)
        for i in range(200):  # three prunes' worth, all while "old" is younger than the window
            await store.kv.incr("acme", "n", 1, f"young-{i}")
        assert await store.kv.incr("acme", "n", 1, "old") == old  # 59 s old: remembered
        clock.advance(2)  # "old" is 61 s old, the others 2 s
        for i in range(200, 400):
            await store.kv.incr("acme", "n", 1, f"young-{i}")
        assert await store.kv.incr("acme", "n", 1, "young-0") == KVEntry("n", 2, 2)  # young: uncounted
        assert await store.kv.get("acme", "n") == KVEntry("n", 401, 401)
        assert not await _op_recorded(store, "acme", "n", "old")
        assert await _op_recorded(store, "acme", "n", "young-0")
        # past the window an op id is forgotten: this is why the window outlives any redelivery
        assert await store.kv.incr("acme", "n", 1, "old") == KVEntry("n", 402, 402)


async def _op_recorded(store: Any, company: str, key: str, op_id: str) -> bool:
    if isinstance(store, SqliteStore):
        row = store.db.execute("SELECT 1 FROM kv_ops WHERE company_id = ? AND op_id = ?", (company, op_id))
        return row.fetchone() is not None
    assert isinstance(store, MongoStore)
    kv_id = _kv_id(company, key)
    return await store.coll("kv_versions").find_one({"op": f"{kv_id}!{op_id}"}) is not None


@pytest.mark.mongo
async def test_mongo_prune_never_deletes_the_newest_version_and_is_bounded() -> None:
    clock = Clock()
    async with fresh_store(kv_incr_dedup_seconds=60, clock=clock) as store:
        for i in range(mongo_store.PRUNE_EVERY - 1):
            await store.kv.incr("acme", "n", 1, f"op-{i}")
        clock.advance(3600)  # every version is old now
        await store.kv.incr("acme", "n", 1, "last")  # version PRUNE_EVERY: its writer prunes
        kept = [d["version"] async for d in store.coll("kv_versions").find({"kv": _kv_id("acme", "n")})]
        assert kept == [mongo_store.PRUNE_EVERY]  # all the old ones but the newest
        assert await store.kv.incr("acme", "n", 1, "last") == KVEntry("n", mongo_store.PRUNE_EVERY, kept[0])
        assert mongo_store.PRUNE_BATCH > mongo_store.PRUNE_EVERY  # pruning keeps up with the writes


async def test_sqlite_ops_recorded_before_the_upgrade_are_kept_a_whole_window(tmp_path: Path) -> None:
    db = tmp_path / "old.db"
    with sqlite3.connect(db) as conn:  # the kv tables as the previous release made them
        conn.executescript(
            """CREATE TABLE kv (company_id TEXT NOT NULL, key TEXT NOT NULL, value BLOB NOT NULL,
                 version INTEGER NOT NULL, updated_at TEXT NOT NULL, PRIMARY KEY (company_id, key));
               CREATE TABLE kv_ops (company_id TEXT NOT NULL, op_id TEXT NOT NULL, key TEXT NOT NULL,
                 value BLOB NOT NULL, version INTEGER NOT NULL, PRIMARY KEY (company_id, op_id));
               INSERT INTO kv VALUES ('acme', 'n', '5', 5, '2025-01-01T00:00:00+00:00');
               INSERT INTO kv_ops VALUES ('acme', 'op-5', 'n', '5', 5);"""
        )
    conn.close()
    clock = Clock()
    store = SqliteStore(db, kv_incr_dedup_seconds=60, clock=clock)
    try:
        clock.advance(59)
        for i in range(sqlite_store.PRUNE_EVERY):
            await store.kv.incr("acme", "n", 1, f"new-{i}")
        assert await store.kv.incr("acme", "n", 1, "op-5") == KVEntry("n", 5, 5)
    finally:
        store.close()


def test_the_window_setting_defaults_to_a_day_and_outlives_any_redelivery(monkeypatch: pytest.MonkeyPatch) -> None:
    assert load_settings().kv_incr_dedup_seconds == 86_400
    monkeypatch.setenv("FLOW8_KV_INCR_DEDUP_SECONDS", "600")
    with pytest.raises(InvalidInput, match=r"kv_incr_dedup_seconds 600 is shorter than the longest redelivery"):
        load_settings()
    monkeypatch.setenv("FLOW8_KV_INCR_DEDUP_SECONDS", "7200")
    monkeypatch.setenv("FLOW8_KV_INCR_DEDUP_WINDOW", "1000")  # the old count setting: accepted, ignored
    assert load_settings().kv_incr_dedup_seconds == 7200


async def test_channel_workers_get_the_window(tmp_path: Path) -> None:
    command = WorkerCommand(
        host="127.0.0.1",
        module_sources=[],
        kv_db=None,
        heartbeat_s=1.0,
        pool_secret=bytes(32),
        token_key=bytes(32),
        kv_mongodb=ChannelMongoKV("mongodb://127.0.0.1:1", "flow8", kv_incr_dedup_seconds=7200),
    )
    command.control_dir = tmp_path
    argv = command.argv(7701)
    at = argv.index("--kv-incr-dedup-seconds")
    args = channel_worker._parser().parse_args(argv[3:])
    assert argv[at + 1] == "7200" and args.kv_incr_dedup_seconds == 7200
