"""The HTTP API's store contract on SQLite (a file) and on MongoDB ($MONGODB_URI)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from flow8_streams.stores.mongo import MongoStore
from flow8_streams.stores.sqlite import SqliteStore

from .contract_api import ApiStoreContract
from .test_mongo import fresh_store


class TestSqliteApiStore(ApiStoreContract):
    @pytest.fixture
    def store(self, tmp_path: Path) -> Iterator[SqliteStore]:
        store = SqliteStore(tmp_path / "store.db")
        try:
            yield store
        finally:
            store.close()


@pytest.mark.mongo
class TestMongoApiStore(ApiStoreContract):
    @pytest.fixture
    async def store(self) -> AsyncIterator[MongoStore]:
        async with fresh_store() as store:
            yield store
