"""The store contract on the embedded SQLite adapter, in a file and in memory."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from flow8_streams.errors import StoreUnavailable
from flow8_streams.stores.sqlite import SqliteStore

from .contract import StoreContract, history


class TestSqliteStore(StoreContract):
    @pytest.fixture(params=["file", "memory"])
    def store(self, request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[SqliteStore]:
        store = SqliteStore(tmp_path / "store.db" if request.param == "file" else ":memory:")
        try:
            yield store
        finally:
            store.close()


async def test_an_unreadable_event_row_is_reported_not_raised_raw(tmp_path: Path) -> None:
    """A damaged row surfaces as the project's own error, naming the play and seq (what `events --verify` shows)."""
    store = SqliteStore(tmp_path / "store.db")
    try:
        events = history("p-1", "acme")
        await store.log.append(events)
        store.db.execute("UPDATE events SET body = ? WHERE play_id = 'p-1' AND seq = 2", (b"{damaged",))
        with pytest.raises(StoreUnavailable, match=r"event 2 of play p-1 cannot be read"):
            await store.log.read("p-1")
        assert await store.log.read("p-1", after_seq=2) == events[2:]
    finally:
        store.close()
