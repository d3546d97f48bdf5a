"""The ``FlowCatalog`` port on MongoDB: collection ``flows``, read through a TTL cache (and a shared one)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from cachetools import TTLCache
from pydantic import ValidationError
from pymongo import DESCENDING
from pymongo.errors import DuplicateKeyError

from flow8_streams.cache import SharedCache
from flow8_streams.cache import key as shared_key
from flow8_streams.domain.flow import FlowDefinition
from flow8_streams.errors import InvalidInput, StoreUnavailable
from flow8_streams.stores.mongo.common import (
    FLOWS,
    Doc,
    _now,
    _pack,
    _unpack,
)

if TYPE_CHECKING:
    from flow8_streams.stores.mongo.store import MongoStore

# ------------------------------------------------------------ flow catalog


class MongoFlows:
    """The ``FlowCatalog`` port: versioned definitions, read through a per-instance TTL cache.

    A version, once stored, is immutable: storing it again with another definition
    raises ``InvalidInput`` (bump the version); the same definition again is a no-op.
    ``put`` drops this instance's cached entries of that flow; other instances see a
    new latest version within the cache's TTL.

    With a ``shared`` cache (Redis), a definition one instance read from the database is
    a hit for the others: this instance's cache first, then the shared one, then MongoDB.
    A version never changes, so it is shared for ``shared_ttl``; "the latest version" is
    shared for ``latest_ttl`` only and deleted from the shared cache by ``put``, so a new
    version shows everywhere within the (short) per-instance TTL.
    """

    def __init__(
        self,
        store: MongoStore,
        *,
        ttl: float,
        max_entries: int,
        shared: SharedCache | None = None,
        shared_ttl: float = 300,
        latest_ttl: float = 30,
    ) -> None:
        self._s = store
        self._shared = shared
        self._shared_ttl = shared_ttl
        self._latest_ttl = latest_ttl
        self._cache: TTLCache[tuple[str, str, int | None], FlowDefinition] = TTLCache(maxsize=max_entries, ttl=ttl)
        self._generation = 0  # bumped by put: a read that raced a put does not fill the cache

    def _count(self, hit: bool) -> None:
        m = self._s.metrics
        if m is not None:
            (m.cache_hits if hit else m.cache_misses).labels(cache="flows").inc()

    async def put(self, company_id: str, flow: FlowDefinition) -> FlowDefinition:
        definition = flow.model_dump(mode="json")
        doc = {
            "company_id": company_id,
            "name": flow.name,
            "version": flow.version,
            "created_at": _now(),
            **_pack("definition", definition),
        }
        with self._s.errors(f"storing flow {flow.name!r} v{flow.version}"):
            try:
                await self._s.coll(FLOWS).insert_one(doc)
            except DuplicateKeyError:
                existing = await self._s.coll(FLOWS).find_one(
                    {"company_id": company_id, "name": flow.name, "version": flow.version}
                )
                if existing is None or _unpack(existing, "definition") != definition:
                    raise InvalidInput(
                        f"flow {flow.name} v{flow.version} exists with a different definition; bump the version"
                    ) from None
            finally:
                self._invalidate(company_id, flow.name)
        if self._shared is not None:
            await self._shared.delete("flows", self._shared_key(company_id, flow.name, None))
        return flow

    @staticmethod
    def _shared_key(company_id: str, name: str, version: int | None) -> str:
        return shared_key("flows", company_id, name, "latest" if version is None else f"v{version}")

    async def _shared_get(self, company_id: str, name: str, version: int | None) -> FlowDefinition | None:
        """The shared cache's definition, if it has a valid one for this key (Redis is outside input)."""
        if self._shared is None:
            return None
        raw = await self._shared.get("flows", self._shared_key(company_id, name, version))
        if raw is None:
            return None
        try:
            flow = FlowDefinition.model_validate_json(raw)
        except ValidationError:
            flow = None
        if flow is None or flow.name != name or (version is not None and flow.version != version):
            self._shared.rejected("flows")  # ignored; the database's answer replaces it below
            return None
        return flow

    def _invalidate(self, company_id: str, name: str) -> None:
        self._generation += 1
        for cached in [k for k in self._cache if k[0] == company_id and k[1] == name]:
            self._cache.pop(cached, None)

    async def get(self, company_id: str, name: str, version: int | None = None) -> FlowDefinition | None:
        key = (company_id, name, version)
        cached = self._cache.get(key)
        if cached is not None:
            self._count(hit=True)
            return cached
        self._count(hit=False)
        generation = self._generation
        flow = await self._shared_get(company_id, name, version)
        if flow is not None:
            if generation == self._generation:
                self._cache[key] = flow
            return flow
        query: Doc = {"company_id": company_id, "name": name}
        if version is not None:
            query["version"] = version
        with self._s.errors(f"reading flow {name!r}"):
            doc = await self._s.coll(FLOWS).find_one(query, sort=[("version", DESCENDING)])
        if doc is None:
            return None  # not cached: a flow stored by another instance shows at once
        try:
            flow = FlowDefinition.model_validate(_unpack(doc, "definition"))
        except ValidationError as exc:  # pragma: no cover - written by put()
            raise StoreUnavailable(f"stored flow {name!r} v{doc.get('version')} does not validate: {exc}") from exc
        if generation == self._generation:
            self._cache[key] = flow
            if self._shared is not None:
                ttl = self._shared_ttl if version is not None else self._latest_ttl
                await self._shared.set("flows", self._shared_key(company_id, name, version), flow_json(flow), ttl)
        return flow

    async def versions(self, company_id: str, name: str) -> list[int]:
        with self._s.errors(f"listing the versions of flow {name!r}"):
            cursor = self._s.coll(FLOWS).find({"company_id": company_id, "name": name}, {"version": 1})
            return sorted(int(doc["version"]) for doc in await cursor.to_list())

    async def names(self, company_id: str, limit: int = 500, after: str | None = None) -> list[str]:
        match: Doc = {"company_id": company_id}
        if after is not None:
            match["name"] = {"$gt": after}
        group: Doc = {"$group": {"_id": "$name"}}
        pipeline: list[Doc] = [{"$match": match}, group, {"$sort": {"_id": 1}}, {"$limit": limit}]
        with self._s.errors("listing the flows"):
            cursor = await self._s.coll(FLOWS).aggregate(pipeline)
            return [str(doc["_id"]) for doc in await cursor.to_list()]


def flow_json(flow: FlowDefinition) -> bytes:
    """A definition as the shared cache keeps it: its JSON, read back with ``model_validate_json``."""
    return flow.model_dump_json().encode()
