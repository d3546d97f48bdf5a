"""The ``PlayProjection`` port on MongoDB (``plays``) and play-id claims (``play_ids``)."""

from __future__ import annotations

import asyncio
import builtins
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from pymongo import DESCENDING, UpdateOne
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import BulkWriteError, DuplicateKeyError

from flow8_streams.domain.events import Event
from flow8_streams.domain.messages import GENERATED_PREFIX
from flow8_streams.domain.state import PlayState
from flow8_streams.engine import EngineError, fold
from flow8_streams.errors import InvalidInput
from flow8_streams.stores.mongo.common import (
    PLAY_IDS,
    PLAYS,
    PLAYS_PER_BULK,
    Doc,
    _now,
    _pack,
    _unpack,
)

if TYPE_CHECKING:
    from flow8_streams.stores.mongo.store import MongoStore

# ------------------------------------------------------------ play projection


@dataclass(frozen=True, slots=True)
class Gap:
    """Events of a play are missing: ``expected_seq`` up to ``got_seq - 1``."""

    play_id: str
    company_id: str
    expected_seq: int
    got_seq: int


@dataclass(slots=True)
class ApplyResult:
    """What ``plays.apply`` did with a batch of events."""

    applied: int = 0  # events folded into a written play
    skipped: int = 0  # events the projection had already (redelivered)
    plays: int = 0  # plays written
    gaps: list[Gap] = field(default_factory=list)  # plays waiting for missing events
    rejected: dict[str, str] = field(default_factory=dict)  # play_id -> why its events were not applied


def _play_updates(state: PlayState, now: datetime) -> tuple[tuple[Doc, Doc], tuple[Doc, Doc]]:
    """The two guarded updates (filter, update) that upsert a play without moving it backwards:
    the first (an upsert) creates it at seq 0, the second (no upsert) writes it if newer."""
    key = {"_id": state.play_id, "company_id": state.company_id}
    insert = {
        "$setOnInsert": {
            "flow": state.flow.name,
            "flow_id": state.flow.name,  # the events' flow_id
            "flow_version": state.flow.version,
            "created_at": state.started_at,
            "seq": 0,
        }
    }
    update = {
        "$set": {
            "status": state.status.value,
            "seq": state.seq,
            "updated_at": now,
            **_pack("state", state.model_dump(mode="json")),
        }
    }
    return (key, insert), ({**key, "seq": {"$lt": state.seq}}, update)


async def _upsert(coll: AsyncCollection[Doc], query: Doc, update: Doc) -> None:
    """An upsert that a concurrent first write of the same ``_id`` made fail once (MongoDB
    retries that itself; FerretDB does not) is tried again: now it matches. A duplicate
    key the second time means the ``_id`` belongs to a document the query does not match."""
    try:
        await coll.update_one(query, update, upsert=True)
    except DuplicateKeyError:
        await coll.update_one(query, update, upsert=True)


def _state(doc: Mapping[str, Any]) -> PlayState | None:
    raw = _unpack(doc, "state")
    return None if raw is None else PlayState.model_validate(raw)


class MongoPlays:
    """The ``PlayProjection`` port, plus ``apply`` (the projector's batch write).

    This instance's writes run one at a time (a lock): the seq guard then holds on
    FerretDB too, whose updates are not atomic (see the module's docstring).
    """

    def __init__(self, store: MongoStore) -> None:
        self._s = store
        self._write_lock = asyncio.Lock()

    async def save(self, states: Sequence[PlayState]) -> None:
        """Upsert each play; a state whose ``seq`` is not above the stored one is ignored."""
        latest: dict[str, PlayState] = {}
        for s in states:
            if s.play_id not in latest or s.seq > latest[s.play_id].seq:
                latest[s.play_id] = s
        taken = await self._write(list(latest.values()))
        if taken:
            raise InvalidInput(
                f"play id(s) {', '.join(sorted(taken))} belong to another company; nothing saved for them"
            )

    async def apply(self, events: Sequence[Event]) -> ApplyResult:
        """Fold a batch of events into the projection: one read, one bulk write.

        Per play: events at or below the stored ``seq`` are skipped (redelivery); the rest
        are folded onto the stored state when they continue it (``stored seq + 1, + 2``...).
        A play whose next event is missing is not written and comes back in ``gaps``
        (events after a hole inside the batch wait too, the run before it is written).
        """
        result = ApplyResult()
        by_play: dict[str, dict[int, Event]] = {}
        company: dict[str, str] = {}
        for e in events:
            if company.setdefault(e.play_id, e.company_id) != e.company_id:
                result.rejected[e.play_id] = f"events of play {e.play_id!r} name two companies"
                continue
            by_play.setdefault(e.play_id, {}).setdefault(e.seq, e)
        for play_id in result.rejected:
            by_play.pop(play_id, None)
        if not by_play:
            return result

        with self._s.errors("loading plays to project"):
            cursor = self._s.coll(PLAYS).find(
                {"_id": {"$in": list(by_play)}, "company_id": {"$in": sorted(set(company.values()))}},
                {"company_id": 1, "seq": 1, "state": 1, "state_json": 1},
            )
            stored = {doc["_id"]: doc async for doc in cursor}

        folded: list[PlayState] = []
        counts: dict[str, int] = {}
        for play_id, by_seq in by_play.items():
            doc = stored.get(play_id)
            if doc is not None and doc.get("company_id") != company[play_id]:
                doc = None
            seq = int(doc.get("seq", 0)) if doc is not None else 0
            state = _state(doc) if doc is not None and seq > 0 else None
            fresh = sorted(s for s in by_seq if s > seq)
            result.skipped += len(by_seq) - len(fresh)
            run: list[Event] = []
            for s in fresh:
                if s != seq + len(run) + 1:
                    result.gaps.append(Gap(play_id, company[play_id], seq + len(run) + 1, s))
                    break
                run.append(by_seq[s])
            if not run:
                continue
            try:
                new_state = fold(run, state)
            except EngineError as exc:
                result.rejected[play_id] = str(exc)
                continue
            assert new_state is not None
            folded.append(new_state)
            counts[play_id] = len(run)

        for play_id in await self._write(folded):
            result.rejected[play_id] = "the play id belongs to another company"
            counts.pop(play_id)
        result.plays = len(counts)
        result.applied = sum(counts.values())
        return result

    async def _write(self, states: Sequence[PlayState]) -> set[str]:
        """Write the states (guarded by seq); the play ids another company holds."""
        taken: set[str] = set()
        async with self._write_lock:
            for start in range(0, len(states), PLAYS_PER_BULK):
                taken |= await self._write_bulk(states[start : start + PLAYS_PER_BULK])
        return taken

    async def _write_bulk(self, states: Sequence[PlayState]) -> set[str]:
        """One bulk write; the caller holds the write lock."""
        if not states:
            return set()
        now = _now()
        pairs = [_play_updates(s, now) for s in states]
        ops = [op for (i, u) in pairs for op in (UpdateOne(*i, upsert=True), UpdateOne(*u))]
        with self._s.errors(f"writing {len(states)} play(s)"):
            try:
                await self._s.coll(PLAYS).bulk_write(ops, ordered=True)
                return set()
            except (BulkWriteError, KeyError):
                # KeyError 'nModified': FerretDB's malformed reply to a bulk with a failed op.
                # An upsert fails on a play id another company holds, or (FerretDB) when
                # another process created the play just then: redo the batch play by play
                # (every op is idempotent) to tell which.
                pass
            taken: set[str] = set()
            plays = self._s.coll(PLAYS)
            for s, (insert, update) in zip(states, pairs, strict=True):
                try:
                    await _upsert(plays, *insert)
                except DuplicateKeyError:
                    taken.add(s.play_id)
                    continue
                await plays.update_one(*update)
            return taken

    async def claim(self, claims: Sequence[tuple[str, str]], at: datetime) -> dict[str, str]:
        """Reserve each ``(company_id, play_id)`` for its company, before the play's first event
        is written; returns the company that holds each id (the caller's, or another's that
        claimed it first). Play ids are global: the log, the projection and the results name a
        play by its id. Unordered inserts into ``play_ids`` (atomic on FerretDB too; a
        collection of its own, so claims do not queue behind the projector's writes to
        ``plays``); an id claimed twice in one call goes to the first."""
        docs: dict[str, Doc] = {}
        for company_id, play_id in claims:
            docs.setdefault(play_id, {"_id": play_id, "company_id": company_id, "at": at})
        coll = self._s.coll(PLAY_IDS)
        held = {play_id: doc["company_id"] for play_id, doc in docs.items()}
        with self._s.errors(f"claiming {len(docs)} play id(s)"):
            try:
                await coll.insert_many(list(docs.values()), ordered=False)
            except BulkWriteError as exc:
                errors = exc.details.get("writeErrors", [])
                if any(e.get("code") != 11000 for e in errors) or exc.details.get("writeConcernErrors"):
                    raise
                for error in errors:  # ids claimed before: read who holds them
                    play_id = list(docs)[error["index"]]
                    doc = await coll.find_one({"_id": play_id}, {"company_id": 1})
                    if doc is not None:
                        held[play_id] = doc["company_id"]
        return held

    async def owner(self, play_id: str) -> str | None:
        """The company holding ``play_id``, if any: a client's id as claimed, a generated one
        as projected."""
        generated = play_id.startswith(GENERATED_PREFIX)
        with self._s.errors(f"reading the owner of play {play_id!r}"):
            doc = await self._s.coll(PLAYS if generated else PLAY_IDS).find_one({"_id": play_id}, {"company_id": 1})
        return None if doc is None else doc.get("company_id")

    async def get(self, company_id: str | None, play_id: str) -> PlayState | None:
        """``company_id`` None: by id alone, the operator path (CLI ``plays show``)."""
        query: Doc = {"_id": play_id}
        if company_id is not None:
            query["company_id"] = company_id
        with self._s.errors(f"reading play {play_id!r}"):
            doc = await self._s.coll(PLAYS).find_one(query, {"state": 1, "state_json": 1})
        return None if doc is None else _state(doc)

    async def list(
        self, company_id: str | None = None, status: str | None = None, limit: int = 50
    ) -> builtins.list[PlayState]:
        """Newest first (by start). Without ``company_id``: every company, the operator path."""
        if limit <= 0:
            return []
        query: Doc = {}
        if company_id is not None:
            query["company_id"] = company_id
        if status is not None:
            query["status"] = str(status)
        with self._s.errors("listing plays"):
            cursor = self._s.coll(PLAYS).find(
                query, {"state": 1, "state_json": 1}, sort=[("created_at", DESCENDING)], limit=limit
            )
            docs = await cursor.to_list()
        return [s for s in map(_state, docs) if s is not None]
