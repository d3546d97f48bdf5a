"""The ``RetentionPort`` on MongoDB: finished plays past their time, and their deletion.

A play is deleted in an order a crash may stop anywhere: its events, then its versions in
``plays_live``, then its document in ``plays`` (what lists it), each a delete that finds nothing
the second time. Its claim in ``play_ids`` stays: the id remains its company's.
"""

from __future__ import annotations

import builtins
from datetime import datetime
from typing import TYPE_CHECKING

from pymongo import ASCENDING, DESCENDING

from flow8_streams.stores.mongo.common import EVENTS, PLAYS, PLAYS_LIVE, _unpack

if TYPE_CHECKING:
    from flow8_streams.stores.mongo.store import MongoStore

FINISHED = ["succeeded", "failed", "cancelled"]


class MongoRetention:
    def __init__(self, store: MongoStore) -> None:
        self._s = store

    async def companies(self) -> builtins.list[str]:
        with self._s.errors("listing the companies"):
            return sorted(str(c) for c in await self._s.coll(PLAYS).distinct("company_id"))

    async def expired(self, company_id: str, ended_before: datetime, limit: int) -> builtins.list[str]:
        """A play ends after it starts: ``created_at`` (the index {company_id, created_at})
        narrows the candidates; each one's end is read from its state."""
        query = {"company_id": company_id, "status": {"$in": FINISHED}, "created_at": {"$lt": ended_before}}
        fields = {"state.ended_at": 1, "state_json": 1}
        found: builtins.list[str] = []
        with self._s.errors(f"listing the expired plays of {company_id!r}"):
            cursor = self._s.coll(PLAYS).find(query, fields, sort=[("created_at", ASCENDING), ("_id", ASCENDING)])
            async for doc in cursor:
                state = _unpack(doc, "state")
                ended = state.get("ended_at") if isinstance(state, dict) else None
                try:
                    when = datetime.fromisoformat(ended) if isinstance(ended, str) else None
                except ValueError:
                    when = None
                if when is not None and when < ended_before:
                    found.append(str(doc["_id"]))
                    if len(found) >= limit:
                        break
        return found

    async def prune(self, company_id: str, play_id: str, last_seq: int) -> bool:
        events, live, plays = self._s.coll(EVENTS), self._s.coll(PLAYS_LIVE), self._s.coll(PLAYS)
        with self._s.errors(f"pruning play {play_id!r}"):
            head = await events.find_one(
                {"play_id": play_id, "company_id": company_id}, {"seq": 1}, sort=[("seq", DESCENDING)]
            )
            doc = await plays.find_one({"_id": play_id}, {"company_id": 1, "status": 1})
            if head is not None and int(head["seq"]) != last_seq:
                return False
            if doc is not None and (doc["company_id"] != company_id or doc.get("status") not in FINISHED):
                return False
            await events.delete_many({"play_id": play_id, "company_id": company_id})
            await live.delete_many({"play_id": play_id, "company_id": company_id})
            await plays.delete_one({"_id": play_id, "company_id": company_id})
        return True
