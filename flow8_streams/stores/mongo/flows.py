"""The ``FlowCatalog`` port on MongoDB: collection ``flows``, read through a TTL cache."""

from __future__ import annotations

from typing import TYPE_CHECKING

from cachetools import TTLCache
from pydantic import ValidationError
from pymongo import DESCENDING
from pymongo.errors import DuplicateKeyError

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
    """

    def __init__(self, store: MongoStore, *, ttl: float, max_entries: int) -> None:
        self._s = store
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
        return flow

    async def versions(self, company_id: str, name: str) -> list[int]:
        with self._s.errors(f"listing the versions of flow {name!r}"):
            cursor = self._s.coll(FLOWS).find({"company_id": company_id, "name": name}, {"version": 1})
            return sorted(int(doc["version"]) for doc in await cursor.to_list())
