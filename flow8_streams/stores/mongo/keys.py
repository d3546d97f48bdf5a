"""The ``ApiKeys`` port on MongoDB: collection ``api_keys``, ``_id`` the key id."""

from __future__ import annotations

import builtins
from collections.abc import Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any

from pymongo import ASCENDING

from flow8_streams.stores.mongo.common import API_KEYS, Doc
from flow8_streams.stores.ports import ApiKey

if TYPE_CHECKING:
    from flow8_streams.stores.mongo.store import MongoStore


class MongoApiKeys:
    """HTTP API keys by id, each stored as its SHA-256 only."""

    def __init__(self, store: MongoStore) -> None:
        self._s = store

    async def add(self, key: ApiKey) -> None:
        doc = {
            "_id": key.key_id,
            "company_id": key.company_id,
            "role": key.role,
            "digest": key.digest,
            "created_at": key.created_at,
            "revoked_at": None,
        }
        with self._s.errors("storing an API key"):
            await self._s.coll(API_KEYS).insert_one(doc)

    async def get(self, key_id: str, company_id: str | None = None) -> ApiKey | None:
        query: Doc = {"_id": key_id}
        if company_id is not None:
            query["company_id"] = company_id
        with self._s.errors("reading an API key"):
            doc = await self._s.coll(API_KEYS).find_one(query)
        return None if doc is None else _api_key(doc)

    async def list(self, company_id: str | None = None) -> builtins.list[ApiKey]:
        query: Doc = {} if company_id is None else {"company_id": company_id}
        with self._s.errors("listing API keys"):
            cursor = self._s.coll(API_KEYS).find(query, sort=[("created_at", ASCENDING), ("_id", ASCENDING)])
            docs = await cursor.to_list()
        return [_api_key(d) for d in docs]

    async def revoke(self, key_id: str, at: datetime, company_id: str | None = None) -> ApiKey | None:
        query: Doc = {"_id": key_id, "revoked_at": None}
        if company_id is not None:
            query["company_id"] = company_id
        with self._s.errors("revoking an API key"):
            await self._s.coll(API_KEYS).update_one(query, {"$set": {"revoked_at": at}})
        return await self.get(key_id, company_id)


def _api_key(doc: Mapping[str, Any]) -> ApiKey:
    return ApiKey(
        key_id=doc["_id"],
        company_id=doc["company_id"],
        role=doc["role"],
        digest=bytes(doc["digest"]),
        created_at=doc["created_at"],
        revoked_at=doc.get("revoked_at"),
    )
