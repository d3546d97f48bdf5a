"""The ``EventLog`` port on MongoDB: collection ``events``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from pymongo import ASCENDING
from pymongo.errors import BulkWriteError

from flow8_streams.domain.events import Event, event_adapter
from flow8_streams.stores.mongo.common import (
    EVENTS,
    Doc,
)

if TYPE_CHECKING:
    from flow8_streams.stores.mongo.store import MongoStore

# ------------------------------------------------------------ event log


def _event_id(play_id: str, seq: int) -> str:
    return f"{play_id}:{seq:08d}"


class MongoEventLog:
    """The ``EventLog`` port: ``events``, one document per event, the body as JSON bytes."""

    def __init__(self, store: MongoStore) -> None:
        self._s = store

    async def append(self, events: Sequence[Event]) -> None:
        if not events:
            return
        docs = [
            {
                "_id": _event_id(e.play_id, e.seq),
                "play_id": e.play_id,
                "seq": e.seq,
                "company_id": e.company_id,
                "type": e.type,
                "at": e.at,
                "body": event_adapter.dump_json(e),
            }
            for e in events
        ]
        with self._s.errors("appending events"):
            try:
                await self._s.coll(EVENTS).insert_many(docs, ordered=False)
            except BulkWriteError as exc:
                # both MongoDB and FerretDB go on past a duplicate when unordered and list each one
                others = [err for err in exc.details.get("writeErrors", []) if err.get("code") != 11000]
                if others or exc.details.get("writeConcernErrors"):
                    raise

    async def read(self, play_id: str, after_seq: int = 0, *, company_id: str | None = None) -> list[Event]:
        query: Doc = {"play_id": play_id, "seq": {"$gt": after_seq}}
        if company_id is not None:
            query["company_id"] = company_id
        with self._s.errors(f"reading the events of play {play_id!r}"):
            cursor = self._s.coll(EVENTS).find(query, {"body": 1}, sort=[("seq", ASCENDING)])
            return [event_adapter.validate_json(doc["body"]) async for doc in cursor]
