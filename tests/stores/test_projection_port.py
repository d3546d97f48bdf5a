"""The projection as a port: ``PlayProjection.apply`` (the projector's batch write), the same
contract on SQLite and MongoDB, and what only the MongoDB layout needs (tombstones)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from flow8_streams.engine import fold
from flow8_streams.engine.projection import ApplyResult, Gap
from flow8_streams.stores.mongo import MongoStore
from flow8_streams.stores.mongo import plays as mongo_plays
from flow8_streams.stores.ports import PlayProjection
from flow8_streams.stores.sqlite import SqliteStore

from .contract import final, history, new_id, running, states
from .test_mongo import fresh_store


class ProjectionContract:
    """Subclass with a ``store`` fixture (a ready, empty store) and ``other``: a second store
    on the same data (another projector, another process' view)."""

    @pytest.fixture
    def company(self) -> str:
        return new_id("co")

    async def test_apply_folds_a_batch_of_plays_in_any_order(self, store: Any, company: str) -> None:
        one, two = new_id("one"), new_id("two")
        first, second = history(one, company), history(two, company, ok=False)
        mixed = [e for pair in zip(first, second, strict=False) for e in pair] + second[len(first) :]
        projection: PlayProjection = store.plays
        result = await projection.apply(list(reversed(mixed)))
        assert (result.applied, result.skipped, result.plays, result.gaps, result.rejected) == (
            len(mixed),
            0,
            2,
            [],
            {},
        )
        assert sorted(result.appended_at) == sorted(e.at for e in mixed)
        assert await store.plays.get(company, one) == fold(first)
        assert await store.plays.get(company, two) == fold(second)

    async def test_apply_in_batches_skips_redelivered_events(self, store: Any, company: str) -> None:
        play = new_id("play")
        events = history(play, company)
        assert (await store.plays.apply(events[:3])).applied == 3
        assert await store.plays.get(company, play) == states(events)[2]
        again = await store.plays.apply(events[:3])
        assert (again.applied, again.skipped, again.plays) == (0, 3, 0)
        rest = await store.plays.apply(events[1:])  # two old, the rest new
        assert (rest.applied, rest.skipped, rest.plays, rest.gaps) == (len(events) - 3, 2, 1, [])
        assert await store.plays.get(company, play) == fold(events)
        late = await store.plays.apply(events)  # the whole log again, once finished
        assert (late.applied, late.skipped, late.plays) == (0, len(events), 0)
        assert await store.plays.get(company, play) == fold(events)

    async def test_apply_reports_gaps_and_writes_nothing_past_them(self, store: Any, company: str) -> None:
        gapped, fine = new_id("gapped"), new_id("fine")
        events, other = history(gapped, company), history(fine, company)
        await store.plays.apply(events[:2])
        result = await store.plays.apply(events[3:] + other)
        assert result.gaps == [Gap(gapped, company, expected_seq=3, got_seq=4)]
        assert (result.applied, result.plays) == (len(other), 1)
        assert await store.plays.get(company, gapped) == states(events)[1]
        assert await store.plays.get(company, fine) == fold(other)
        late = new_id("late")
        assert (await store.plays.apply(history(late, company)[2:])).gaps[0].expected_seq == 1
        assert await store.plays.get(company, late) is None
        await store.plays.apply(events)
        assert await store.plays.get(company, gapped) == fold(events)

    async def test_a_late_write_of_a_lower_seq_leaves_the_play_alone(
        self, store: Any, other: Any, company: str
    ) -> None:
        """Another projector (``other``) wrote the play further; this one's writes of older
        states land afterwards, by ``apply`` and by ``save``: nothing moves back."""
        play = new_id("play")
        events = history(play, company, start=datetime.now(UTC) - timedelta(hours=1))  # late: old events
        steps = states(events)
        await other.plays.apply(events[:4])
        await store.plays.save([steps[1]])
        assert await other.plays.get(company, play) == steps[3]
        assert await store.plays.get(company, play) == steps[3]
        await other.plays.apply(events)  # finished
        await store.plays.save([steps[2]])
        stale = await store.plays.apply(events[:3])
        assert (stale.applied, stale.plays) == (0, 0)
        assert await store.plays.get(company, play) == fold(events)
        assert [p.play_id for p in await store.plays.list(company, "running")] == []
        assert [p.play_id for p in await store.plays.list(company)] == [play]

    async def test_apply_never_touches_another_companys_play(self, store: Any, company: str) -> None:
        play = new_id("play")
        theirs = final(play, new_id("theirs"))
        await store.plays.save([theirs])
        ours = new_id("ours")
        result = await store.plays.apply(history(play, company) + history(ours, company))
        assert list(result.rejected) == [play] and result.plays == 1
        assert await store.plays.get(None, play) == theirs
        assert await store.plays.get(company, play) is None
        assert await store.plays.get(company, ours) == final(ours, company)

    async def test_running_and_finished_plays_are_listed_once(self, store: Any, company: str) -> None:
        done, going = new_id("done"), new_id("going")
        await store.plays.apply(history(done, company)[:3] + history(going, company)[:2])
        await store.plays.apply(history(done, company))
        assert {p.play_id: p.status.value for p in await store.plays.list(company)} == {
            done: "succeeded",
            going: "running",
        }
        assert [p.play_id for p in await store.plays.list(company, "running")] == [going]
        assert await store.plays.get(company, going) == running(going, company)


class TestSqliteProjection(ProjectionContract):
    @pytest.fixture
    def store(self, tmp_path: Path) -> Iterator[SqliteStore]:
        store = SqliteStore(tmp_path / "store.db")
        try:
            yield store
        finally:
            store.close()

    @pytest.fixture
    def other(self, store: SqliteStore) -> Iterator[SqliteStore]:
        other = SqliteStore(store.path)
        try:
            yield other
        finally:
            other.close()


@pytest.mark.mongo
class TestMongoProjection(ProjectionContract):
    @pytest.fixture
    async def store(self) -> AsyncIterator[MongoStore]:
        async with fresh_store() as store:
            yield store

    @pytest.fixture
    async def other(self, store: MongoStore) -> AsyncIterator[MongoStore]:
        other = MongoStore(store.client, store.database)  # its own MongoPlays: no state shared in-process
        try:
            yield other
        finally:
            await other.close()

    async def test_only_plays_in_flight_stay_in_plays_live(
        self, store: MongoStore, company: str, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setattr(mongo_plays, "FLUSH_EVERY_SECONDS", 0.0)  # replaced versions: deleted at once
        done, going = new_id("done"), new_id("going")
        ended = history(done, company)
        for n in range(1, len(ended) + 1):  # a batch per event: a version each time
            await store.plays.apply(ended[:n] + history(going, company)[: min(n, 4)])
        await store.plays.settle()
        live = store.coll("plays_live")
        assert [d["seq"] async for d in live.find({"play_id": going})] == [4]
        assert [(d["final"], d["state"]) async for d in live.find({"play_id": done})] == [(True, None)]
        assert await store.coll("plays").count_documents({"_id": done}) == 1
        assert await store.coll("plays").count_documents({"_id": going}) == 0

    async def test_a_late_write_after_the_tombstone_went_is_still_no_step_back(
        self, store: MongoStore, other: MongoStore, company: str, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        play = new_id("play")
        events = history(play, company)
        await other.plays.apply(events)
        monkeypatch.setattr(mongo_plays, "TOMBSTONE_SECONDS", 0.0)
        monkeypatch.setattr(mongo_plays, "PRUNE_EVERY_SECONDS", 0.0)
        await asyncio.sleep(0.01)  # the tombstone is older than 0 s: a wall-clock date must pass it
        await other.plays.settle()  # prunes
        assert await store.coll("plays_live").count_documents({"play_id": play}) == 0
        stale = await store.plays.apply(events[2:4])  # a projector stopped long ago wakes up
        assert stale.plays == 0 and stale.skipped == 2  # plays is read: the play ended
        assert await store.plays.get(company, play) == fold(events)

    async def test_a_play_running_longer_than_a_tombstone_lives_is_still_read(
        self, store: MongoStore, company: str, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        play = new_id("slow")
        await store.plays.save([running(play, company)])
        monkeypatch.setattr(mongo_plays, "TOMBSTONE_SECONDS", 0.0)  # its version is "old": plays is read too
        assert await store.plays.get(company, play) == running(play, company)
        assert [p.play_id for p in await store.plays.list(company, "running")] == [play]

    async def test_a_running_play_written_in_place_before_plays_live_is_replaced_by_its_end(
        self, store: MongoStore, company: str
    ) -> None:
        play = new_id("upgraded")
        events = history(play, company)
        before = states(events)[2]  # what the projection wrote in plays before this layout
        old = mongo_plays._document(before, datetime.now(UTC))
        await store.coll("plays").insert_one(old)
        await store.plays.apply(events[3:])  # the worker after the upgrade: plays is read (no seq 1)
        assert await store.plays.get(company, play) == fold(events)
        doc = await store.coll("plays").find_one({"_id": play})
        assert doc is not None and (doc["seq"], doc["status"]) == (len(events), "succeeded")

    async def test_apply_result_is_the_ports_type(self, store: MongoStore, company: str) -> None:
        assert isinstance(await store.plays.apply(history(new_id("p"), company)), ApplyResult)
