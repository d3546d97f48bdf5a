"""The store contract on the MongoDB adapter: a fresh database per test on $MONGODB_URI.

Without MONGODB_URI these tests skip, unless FLOW8_REQUIRE_SERVICES=1 (set by
scripts/test), where a missing server fails them (as in tests/integration).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest

from flow8_streams.stores.mongo import MongoStore

from .contract import StoreContract

pytestmark = pytest.mark.mongo


def mongodb_uri() -> str:
    value = os.environ.get("MONGODB_URI")
    if not value:
        message = "MONGODB_URI is not set; start the servers with `export $(scripts/services up)`"
        if os.environ.get("FLOW8_REQUIRE_SERVICES") == "1":
            pytest.fail(message)
        pytest.skip(message)
    return value


@asynccontextmanager
async def fresh_store(**options: Any) -> AsyncIterator[MongoStore]:
    """An opened store on a database of its own, dropped afterwards."""
    database = f"t{uuid.uuid4().hex[:12]}"
    store = MongoStore(mongodb_uri(), database, **options)
    try:
        await store.open()
    except BaseException:
        await store.close()
        raise
    try:
        yield store
    finally:
        try:
            await store.client.drop_database(database)
        finally:
            await store.close()


class TestMongoStore(StoreContract):
    @pytest.fixture
    async def store(self) -> AsyncIterator[MongoStore]:
        async with fresh_store() as store:
            yield store
