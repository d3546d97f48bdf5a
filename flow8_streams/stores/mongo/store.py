"""``MongoStore``: one MongoDB database and its four ports."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any

from bson.errors import InvalidDocument
from pymongo import AsyncMongoClient
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import ConnectionFailure, DuplicateKeyError, PyMongoError

from flow8_streams.cache import SharedCache
from flow8_streams.domain.state import PlayState
from flow8_streams.engine import fold
from flow8_streams.errors import InvalidInput, StoreUnavailable
from flow8_streams.metrics import Metrics
from flow8_streams.redact import redact_uri, scrub
from flow8_streams.stores.mongo.common import (
    INDEXES,
    Doc,
    _hosts,
    _now,
    _short,
)
from flow8_streams.stores.mongo.events import MongoEventLog
from flow8_streams.stores.mongo.flows import MongoFlows
from flow8_streams.stores.mongo.keys import MongoApiKeys
from flow8_streams.stores.mongo.kv import KV_INCR_DEDUP_SECONDS, MongoKV
from flow8_streams.stores.mongo.plays import MongoPlays
from flow8_streams.stores.mongo.retention import MongoRetention

# ------------------------------------------------------------ the store


def _timeouts(timeout_ms: int | None, server_selection_timeout_ms: int | None) -> dict[str, Any]:
    """The client's timeouts. ``timeout_ms`` bounds each operation, so a wedged server fails the
    call (StoreUnavailable, a retryable flowlet failure) instead of hanging it: as pymongo's
    client-side timeout (timeoutMS), unless ``server_selection_timeout_ms`` is given. That one
    says how soon a call finds the server down (a worker's callers then say so and try again:
    ``runtimes.streams.retrying``), and timeoutMS would override it (a call would wait out the
    whole ``timeout_ms`` for a server that is down); so then ``timeout_ms`` bounds each socket
    read, connect and wait for a pooled connection instead."""
    if server_selection_timeout_ms is None:
        return {"timeoutMS": timeout_ms}
    return {
        "serverSelectionTimeoutMS": server_selection_timeout_ms,
        "socketTimeoutMS": timeout_ms,
        "connectTimeoutMS": timeout_ms,
        "waitQueueTimeoutMS": timeout_ms,
    }


class MongoStore:
    """One MongoDB database; its ports are ``log``, ``plays``, ``kv`` and ``flows``.

    ``client_or_uri``: a URI (the store makes and closes its client) or an
    ``AsyncMongoClient`` the caller owns (``close()`` leaves it open).
    ``shared_cache``: a cache shared between instances (``cache.backend: redis``) behind the
    flow catalog's own; the store closes it in ``close()``.
    """

    def __init__(
        self,
        client_or_uri: str | AsyncMongoClient[Doc],
        database: str,
        *,
        metrics: Metrics | None = None,
        flow_cache_ttl: float = 300,
        flow_cache_max: int = 10_000,
        shared_cache: SharedCache | None = None,
        shared_cache_ttl: float = 300,
        shared_latest_ttl: float = 30,
        kv_incr_dedup_seconds: float = KV_INCR_DEDUP_SECONDS,
        clock: Callable[[], datetime] | None = None,
        timeout_ms: int | None = None,
        server_selection_timeout_ms: int | None = None,
    ) -> None:
        if not kv_incr_dedup_seconds > 0:
            raise InvalidInput(f"kv_incr_dedup_seconds must be more than 0, not {kv_incr_dedup_seconds}")
        if isinstance(client_or_uri, str):
            self.hosts = _hosts(client_or_uri)
            try:
                self.client: AsyncMongoClient[Doc] = AsyncMongoClient(
                    client_or_uri,
                    tz_aware=True,
                    appname="flow8",
                    **_timeouts(timeout_ms, server_selection_timeout_ms),
                )
            except (PyMongoError, ValueError) as exc:  # InvalidURI, ConfigurationError, a bad port: no password
                problem = scrub(_short(exc), client_or_uri)
                raise InvalidInput(f"MongoDB URI {redact_uri(client_or_uri)}: {problem}") from None
            self._owns_client = True
        else:
            self.client = client_or_uri
            seeds = client_or_uri.topology_description.server_descriptions()
            self.hosts = ",".join(f"{host}:{port}" for host, port in seeds) or "?"
            self._owns_client = False
        self.database = database
        self.db = self.client[database]
        self.metrics = metrics
        self.log = MongoEventLog(self)
        self.plays = MongoPlays(self)
        self.kv = MongoKV(self, kv_incr_dedup_seconds, clock or _now)
        self.shared_cache = shared_cache  # closed by close()
        self.flows = MongoFlows(
            self,
            ttl=flow_cache_ttl,
            max_entries=flow_cache_max,
            shared=shared_cache,
            shared_ttl=shared_cache_ttl,
            latest_ttl=shared_latest_ttl,
        )
        self.keys = MongoApiKeys(self)
        self.retention = MongoRetention(self)

    def coll(self, name: str) -> AsyncCollection[Doc]:
        return self.db[name]

    async def open(self) -> MongoStore:
        """Create the collections' indexes (idempotent); fails fast when MongoDB is down."""
        with self.errors("creating the indexes"):
            for name, indexes in INDEXES.items():
                for index in indexes:  # one at a time: FerretDB panics re-creating several at once
                    await self.coll(name).create_indexes([index])
        return self

    async def close(self) -> None:
        with contextlib.suppress(Exception):  # logged where it failed
            await self.plays.settle()
        if self.shared_cache is not None:
            await self.shared_cache.close()
        if self._owns_client:
            await self.client.close()

    async def __aenter__(self) -> MongoStore:
        return await self.open()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def rebuild(self, play_id: str) -> PlayState | None:
        """A play's state folded from the stored events (when the log is kept here)."""
        return fold(await self.log.read(play_id))

    async def secret(self, name: str, make: Callable[[], bytes]) -> bytes:
        """The secret ``name`` this database keeps (collection ``meta``), made by ``make`` on
        first use: inserted if absent, then read back, so every worker has the same one."""
        meta = self.coll("meta")
        with self.errors(f"reading the secret {name!r}"):
            with contextlib.suppress(DuplicateKeyError):
                await meta.insert_one({"_id": name, "value": make()})
            doc = await meta.find_one({"_id": name})
        if doc is None:  # pragma: no cover - inserted above
            raise StoreUnavailable(f"MongoDB at {self.hosts} lost the secret {name!r} just written")
        return bytes(doc["value"])

    @contextmanager
    def errors(self, what: str) -> Iterator[None]:
        """Map pymongo's errors to flow8's at the boundary; the message names the hosts, not the URI."""
        try:
            yield
        except (InvalidDocument, OverflowError) as exc:
            raise InvalidInput(f"{what}: MongoDB cannot store the value: {_short(exc)}") from exc
        except ConnectionFailure as exc:  # incl. ServerSelectionTimeoutError, AutoReconnect
            raise StoreUnavailable(
                f"MongoDB at {self.hosts} is unreachable ({what}, database {self.database!r}): {_short(exc)}"
            ) from exc
        except PyMongoError as exc:  # OperationFailure and the rest
            raise StoreUnavailable(
                f"MongoDB at {self.hosts} refused {what} (database {self.database!r}): {_short(exc)}"
            ) from exc
