"""The ``PlayProjection`` port on MongoDB and play-id claims (``play_ids``).

Two collections hold the projection, so that what the projector writes stays small:

- ``plays``: one document per FINISHED play, ``_id`` the play id, written once, by an
  insert. A finished play never changes, so a duplicate key is a stale write: skipped.
- ``plays_live``: the plays in flight, as versions: ``_id`` ``"<play id>#<seq>"``, one
  insert per play and batch; the highest ``seq`` of a play is its state. The projector
  deletes the versions a newer one replaced. A play's end leaves a small tombstone
  version (its final seq, no state) for ``TOMBSTONE_SECONDS``, so that a redelivered or
  late event of a finished play is seen as old without reading ``plays``.

Every write is an insert: an old projector's late write adds a LOWER version, which
no reader takes (readers take the highest), so a play never moves back, between
processes too, on FerretDB as on MongoDB (FerretDB's updates are not atomic between
connections). And it keeps up on FerretDB 1.24 (SQLite), which serves no query from an
index: its ``_id`` pushdown (``_ferretdb_sjson->'$._id' = ?``) does not match the
expression of its unique ``_id`` index (``_ferretdb_sjson->"_id"``), so SQLite scans,
and any other filter is matched in Go, document by document. Measured at 1,000 and
5,000 plays (``scripts/bench_projection.py``): an ``update_one({_id})`` 63 and 289 ms,
``update_one({_id, seq: {$lt}})`` 786 ms and 4.2 s, while an insert is about 2 ms at any
size (the unique index checks it). The projector's reads and deletes scan
``plays_live`` only, whose size is the plays in flight plus recent tombstones.
"""

from __future__ import annotations

import asyncio
import builtins
import logging
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from cachetools import LRUCache
from pymongo import DESCENDING
from pymongo.errors import BulkWriteError

from flow8_streams.domain.events import Event
from flow8_streams.domain.messages import GENERATED_PREFIX
from flow8_streams.domain.state import PlayState
from flow8_streams.engine.projection import ApplyResult, Batch, Gap, Stored, latest, project
from flow8_streams.errors import InvalidInput, StoreUnavailable
from flow8_streams.stores.mongo.common import PLAY_IDS, PLAYS, PLAYS_LIVE, Doc, _now, _pack, _unpack
from flow8_streams.stores.ports import PlayPage

if TYPE_CHECKING:
    from flow8_streams.stores.mongo.store import MongoStore

__all__ = ["TOMBSTONE_SECONDS", "ApplyResult", "Gap", "MongoPlays"]

log = logging.getLogger("flow8.store")

TOMBSTONE_SECONDS = 120.0  # how long a finished play's tombstone stays in plays_live
PRUNE_EVERY_SECONDS = 5.0  # at most one prune of old tombstones per this many seconds
FLUSH_EVERY_SECONDS = 1.0  # at most one delete of replaced versions per this many seconds...
FLUSH_AT = 1_000  # ...unless this many wait
KNOWN_BYTES = 64 * 2**20  # states of the plays this instance wrote last, kept to skip reading them
TAKEN = "the play id belongs to another company"
_LIVE_FIELDS = {
    "play_id": 1,
    "company_id": 1,
    "seq": 1,
    "status": 1,
    "final": 1,
    "state": 1,
    "state_json": 1,
    "created_at": 1,
    "updated_at": 1,
}


def _version_id(play_id: str, seq: int) -> str:
    return f"{play_id}#{seq:010d}"


def _document(state: PlayState, now: datetime) -> Doc:
    """A play's document, as ``plays`` holds it (``_id`` the play id)."""
    return {
        "_id": state.play_id,
        "company_id": state.company_id,
        "flow": state.flow.name,
        "flow_id": state.flow.name,  # the events' flow_id
        "flow_version": state.flow.version,
        "created_at": state.started_at,
        "seq": state.seq,
        "status": state.status.value,
        "updated_at": now,
        **_pack("state", state.model_dump(mode="json")),
    }


def _version(state: PlayState, now: datetime) -> Doc:
    """A running play's version in ``plays_live``."""
    return {**_document(state, now), "_id": _version_id(state.play_id, state.seq), "play_id": state.play_id}


def _tombstone(state: PlayState, now: datetime) -> Doc:
    """What ``plays_live`` keeps of a finished play for a while: its final seq, no state."""
    return {
        "_id": _version_id(state.play_id, state.seq),
        "play_id": state.play_id,
        "company_id": state.company_id,
        "seq": state.seq,
        "status": state.status.value,
        "created_at": state.started_at,
        "updated_at": now,
        "final": True,
        "state": None,
        "state_json": None,
    }


def _aware(at: datetime) -> datetime:
    """A date read back by a client that may not be ``tz_aware``: UTC."""
    return at if at.tzinfo else at.replace(tzinfo=UTC)


def _state(doc: Mapping[str, Any]) -> PlayState | None:
    raw = _unpack(doc, "state")
    return None if raw is None else PlayState.model_validate(raw)


def _duplicates(exc: BulkWriteError) -> list[int]:
    """The indexes of the documents an unordered insert found there already; raises on any other error."""
    errors = exc.details.get("writeErrors", [])
    if any(e.get("code") != 11000 for e in errors) or exc.details.get("writeConcernErrors"):
        raise exc
    return [int(e["index"]) for e in errors]


@dataclass(slots=True)
class _Known:
    """What this instance last wrote of a play: the state at its seq is the log's, whoever
    wrote further since (a lower version written from it is one no reader takes)."""

    stored: Stored
    versions: builtins.list[str]  # the ids of its versions in plays_live this instance knows of


def _size(known: _Known) -> int:
    state = known.stored.state
    return 2048 + (state.held_bytes if state is not None else 0)


def _seq_of(version_id: str) -> int:
    return int(version_id.rsplit("#", 1)[1])


class MongoPlays:
    """The ``PlayProjection`` port (``apply`` is the projector's batch write), plus play-id claims.

    ``apply`` reads ``plays_live`` only for the plays this instance does not know: a play
    it wrote last (kept, up to ``KNOWN_BYTES`` of states) or a new one (its batch has
    seq 1, recent) needs no read. Versions a newer one replaced are deleted in one
    request per ``FLUSH_EVERY_SECONDS``, with the prune of old tombstones.
    """

    def __init__(self, store: MongoStore) -> None:
        self._s = store
        self._pruned = 0.0  # loop time of the last prune of tombstones
        self._flushed = 0.0  # loop time of the last delete of replaced versions
        self._replaced: builtins.list[str] = []  # version ids a newer version replaced, not deleted yet
        self._known: LRUCache[str, _Known] = LRUCache(maxsize=KNOWN_BYTES, getsizeof=_size)
        self._housekeeping: asyncio.Task[None] | None = None  # see _flush

    # ------------------------------------------------------------ writes

    async def apply(self, events: Sequence[Event], *, absent: Collection[str] = ()) -> ApplyResult:
        """Fold a batch of events into the projection (``engine.projection``'s rules): at most
        one read of ``plays_live`` (the plays this instance does not know), then one insert
        per play (in bulk). A play of ``absent`` whose batch starts at seq 1 is not read: on
        FerretDB each read of ``plays`` scans it, so a rebuild of 10,000 old plays read one
        by one took longer than 15 minutes."""
        batch = Batch.of(events)
        if not batch.play_ids:
            return project(batch, {}).result()
        stored: dict[str, Stored] = {}
        versions: dict[str, builtins.list[str]] = {}
        old = _now() - timedelta(seconds=TOMBSTONE_SECONDS / 2)
        unknown: builtins.list[str] = []
        for play_id in batch.play_ids:
            known = self._known.get(play_id)
            if known is not None:
                stored[play_id], versions[play_id] = known.stored, list(known.versions)
                continue
            first = batch.events[play_id].get(1)
            if first is None or (first.at < old and play_id not in absent):  # it may have been written before
                unknown.append(play_id)
        with self._s.errors(f"projecting {len(batch.play_ids)} play(s)"):
            live = await self._live(unknown)
            for play_id, found in live.items():
                held = _stored(found)
                if held is not None:
                    stored[play_id], versions[play_id] = held, [v["_id"] for v in found]
            # a play not in flight may have finished before its tombstone went: ``plays`` has it
            for play_id, held in (await self._finished([p for p in unknown if p not in stored])).items():
                stored[play_id] = held
            projection = project(batch, stored)
            refused = await self._write(projection.states, _companies(live), versions)
        return projection.result(refused)

    async def save(self, states: Sequence[PlayState]) -> None:
        """Write each play's highest state; a state below the stored one changes nothing."""
        newest = latest(states)
        with self._s.errors(f"writing {len(newest)} play(s)"):
            live = await self._live(list(newest))
            held = {p: s for p, s in ((p, _stored(v)) for p, v in live.items()) if s is not None}
            old = _now() - timedelta(seconds=TOMBSTONE_SECONDS / 2)
            unknown = [p for p, s in newest.items() if p not in held and s.started_at < old]
            held |= await self._finished(unknown)
            taken = {p for p, s in held.items() if s.company_id != newest[p].company_id}
            fresh = {p: s for p, s in newest.items() if p not in taken and (p not in held or s.seq > held[p].seq)}
            refused = await self._write(fresh, _companies(live), {p: [v["_id"] for v in vs] for p, vs in live.items()})
        if taken | refused.keys():
            ids = ", ".join(sorted(taken | refused.keys()))
            raise InvalidInput(f"play id(s) {ids} belong to another company; nothing saved for them")

    async def _live(self, play_ids: Sequence[str]) -> dict[str, builtins.list[Doc]]:
        """The versions ``plays_live`` holds of ``play_ids`` (one query)."""
        found: dict[str, builtins.list[Doc]] = {}
        if play_ids:
            async for doc in self._s.coll(PLAYS_LIVE).find({"play_id": {"$in": list(play_ids)}}, _LIVE_FIELDS):
                found.setdefault(doc["play_id"], []).append(doc)
        return found

    async def _finished(self, play_ids: Sequence[str]) -> dict[str, Stored]:
        """What ``plays`` holds of ``play_ids``, one query each (FerretDB serves a lone ``_id``
        equality fastest of all its filters): a finished play, or a running one written in
        place before ``plays_live`` existed (with its state, to go on from)."""
        fields = {"company_id": 1, "seq": 1, "status": 1, "state": 1, "state_json": 1}
        found = await asyncio.gather(*(self._s.coll(PLAYS).find_one({"_id": p}, fields) for p in play_ids))
        held: dict[str, Stored] = {}
        for doc in filter(None, found):
            running = doc.get("status") == "running"
            held[doc["_id"]] = Stored(doc["company_id"], int(doc["seq"]), _state(doc) if running else None)
        return held

    async def _write(
        self,
        states: Mapping[str, PlayState],
        companies: Mapping[str, set[str]],
        versions: Mapping[str, builtins.list[str]],
    ) -> dict[str, str]:
        """Insert each state: a running one as a new version, a finished one into ``plays``
        (and a tombstone). ``companies``: the companies ``plays_live`` holds each play for;
        ``versions``: its version ids known, those below the new state are deleted. Returns
        the plays refused (play_id -> why): another company's."""
        now = _now()
        refused = {p: TAKEN for p, s in states.items() if companies.get(p, {s.company_id}) != {s.company_id}}
        todo = [s for p, s in states.items() if p not in refused]
        finished = [s for s in todo if s.finished]
        if finished:
            taken = await self._insert_finished(finished, now)
            refused.update(dict.fromkeys(taken, TAKEN))
        written = [s for s in todo if s.play_id not in refused]
        await self._insert(PLAYS_LIVE, [_tombstone(s, now) if s.finished else _version(s, now) for s in written])
        for s in written:
            self._replaced += [v for v in versions.get(s.play_id, []) if _seq_of(v) < s.seq]
            version = _version_id(s.play_id, s.seq)
            self._known[s.play_id] = _Known(Stored(s.company_id, s.seq, None if s.finished else s), [version])
        await self._flush(now)
        return refused

    async def _flush(self, now: datetime) -> None:
        """Start the housekeeping when due: deleting replaced versions and old tombstones
        scans ``plays_live`` on FerretDB, so it runs beside the writes, never before them,
        one at a time. What a failed one leaves goes with its play's tombstone."""
        if self._housekeeping is not None and not self._housekeeping.done():
            return
        clock = asyncio.get_running_loop().time()
        replaced: builtins.list[str] = []
        if self._replaced and (len(self._replaced) >= FLUSH_AT or clock - self._flushed >= FLUSH_EVERY_SECONDS):
            self._flushed = clock
            replaced, self._replaced = self._replaced, []
        prune = clock - self._pruned >= PRUNE_EVERY_SECONDS
        if prune:
            self._pruned = clock
        if replaced or prune:
            self._housekeeping = asyncio.create_task(self._keep_house(replaced, now if prune else None))

    async def _keep_house(self, replaced: Sequence[str], prune_at: datetime | None) -> None:
        try:
            with self._s.errors("deleting replaced play versions"):
                if replaced:
                    await self._s.coll(PLAYS_LIVE).delete_many({"_id": {"$in": list(replaced)}})
                if prune_at is not None:
                    await self._prune(prune_at)
        except StoreUnavailable as exc:
            log.warning("plays_live housekeeping failed, left for the next: %s", exc)

    async def settle(self) -> None:
        """Wait for the housekeeping under way, then start and wait for what is due now
        (``MongoStore.close`` does)."""
        if self._housekeeping is not None:
            await asyncio.shield(self._housekeeping)
        await self._flush(_now())
        if self._housekeeping is not None:
            await asyncio.shield(self._housekeeping)

    async def _insert_finished(self, states: Sequence[PlayState], now: datetime) -> builtins.list[str]:
        """Insert finished plays into ``plays``; the ids another company's document holds.
        A play there already at a lower seq (a running play written before ``plays_live``
        existed, when ``plays`` was updated in place) is replaced by its end."""
        docs = [_document(s, now) for s in states]
        there = await self._insert(PLAYS, docs)
        if not there:
            return []
        plays = self._s.coll(PLAYS)
        holders = await asyncio.gather(
            *(plays.find_one({"_id": docs[i]["_id"]}, {"company_id": 1, "seq": 1}) for i in there)
        )
        taken: builtins.list[str] = []
        for i, held in zip(there, holders, strict=True):
            doc = docs[i]
            if held is None:
                continue
            if held["company_id"] != doc["company_id"]:
                taken.append(doc["_id"])
            elif int(held.get("seq", 0)) < doc["seq"]:  # a finished play's state is its last: no race to lose
                await plays.replace_one({"_id": doc["_id"]}, doc)
        return taken

    async def _insert(self, collection: str, docs: Sequence[Doc]) -> builtins.list[int]:
        """Unordered insert; the indexes of the documents that were there already."""
        if not docs:
            return []
        try:
            await self._s.coll(collection).insert_many(list(docs), ordered=False)
        except BulkWriteError as exc:
            return _duplicates(exc)
        return []

    async def _prune(self, now: datetime) -> None:
        """Delete the plays whose tombstone is older than ``TOMBSTONE_SECONDS`` from
        ``plays_live``, with any version left of them."""
        cutoff = now - timedelta(seconds=TOMBSTONE_SECONDS)
        live = self._s.coll(PLAYS_LIVE)
        ended = {
            doc["play_id"] async for doc in live.find({"final": True, "updated_at": {"$lt": cutoff}}, {"play_id": 1})
        }
        if ended:
            await live.delete_many({"play_id": {"$in": sorted(ended)}})

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
        with self._s.errors(f"reading the owner of play {play_id!r}"):
            if not play_id.startswith(GENERATED_PREFIX):
                doc = await self._s.coll(PLAY_IDS).find_one({"_id": play_id}, {"company_id": 1})
            else:
                doc = await self._s.coll(PLAYS_LIVE).find_one({"play_id": play_id}, {"company_id": 1})
                if doc is None:
                    doc = await self._s.coll(PLAYS).find_one({"_id": play_id}, {"company_id": 1})
        return None if doc is None else doc.get("company_id")

    async def get(self, company_id: str | None, play_id: str) -> PlayState | None:
        """``company_id`` None: by id alone, the operator path (CLI ``plays show``). A play in
        flight is read from its highest version; a finished one from ``plays`` (written
        before its live versions are deleted, so one of the two always has it)."""
        with self._s.errors(f"reading play {play_id!r}"):
            versions = (await self._live([play_id])).get(play_id, [])
            top = max(versions, key=lambda v: int(v["seq"]), default=None)
            mine = top is not None and (company_id is None or top["company_id"] == company_id)
            running = _state(top) if mine and top is not None and not top.get("final") else None
            # a running version older than a tombstone lives may be a late writer's, of a play
            # that has ended since: the finished play wins
            recent = top is not None and _aware(top["updated_at"]) >= _now() - timedelta(seconds=TOMBSTONE_SECONDS)
            if running is not None and recent:
                return running
            # by ``_id`` alone, the company checked here: FerretDB serves a lone ``_id`` equality
            # in SQL, and matches any other filter in Go, document by document (10x slower)
            doc = await self._s.coll(PLAYS).find_one({"_id": play_id}, {"company_id": 1, "state": 1, "state_json": 1})
        if doc is not None and company_id is not None and doc["company_id"] != company_id:
            doc = None
        return running if doc is None else _state(doc)

    async def list(
        self, company_id: str | None = None, status: str | None = None, limit: int = 50, page: PlayPage | None = None
    ) -> builtins.list[PlayState]:
        """Newest first (by start, ties by play id descending). Without ``company_id``: every
        company, the operator path.

        ``created_at`` is the start in milliseconds, so the query takes a superset of ``page``'s
        range and ``page.admits`` cuts it exactly; the plays of the last millisecond a page reaches
        are read whole, so a play never falls between two pages."""
        if limit <= 0:
            return []
        page = page or PlayPage()
        query: Doc = {}
        if company_id is not None:
            query["company_id"] = company_id
        with self._s.errors("listing plays"):
            states: builtins.list[PlayState] = []
            if status is None or str(status) == "running":
                states += [s for s in await self._running(query) if page.admits(s)]
            if str(status) != "running":
                final = {**query, **({"status": str(status)} if status is not None else {})}
                if page.flow is not None:
                    final["flow"] = page.flow
                fields = {"state": 1, "state_json": 1, "created_at": 1}
                if page.since is not None:
                    final["created_at"] = {"$gte": page.since}
                found: builtins.list[Doc] = []
                ends = [t for t in (page.until, page.after[0] if page.after else None) if t is not None]
                if ends:  # the millisecond of the end whole, then the plays before it
                    found += await self._s.coll(PLAYS).find({**final, "created_at": min(ends)}, fields).to_list()
                    final["created_at"] = {**final.get("created_at", {}), "$lt": min(ends)}
                newest_first = [("created_at", DESCENDING)]
                before = await self._s.coll(PLAYS).find(final, fields, sort=newest_first, limit=limit).to_list()
                if len(before) == limit:  # the rest of the last millisecond reached
                    edge = {**final, "created_at": before[-1]["created_at"]}
                    before += await self._s.coll(PLAYS).find(edge, fields).to_list()
                found += before
                states += [s for s in map(_state, found) if s is not None and page.admits(s)]
        newest: dict[str, PlayState] = {}
        for s in states:  # a play that ended while being listed: its final state
            if s.play_id not in newest or s.seq > newest[s.play_id].seq:
                newest[s.play_id] = s
        return sorted(newest.values(), key=lambda s: (s.started_at, s.play_id), reverse=True)[:limit]

    async def _running(self, query: Doc) -> builtins.list[PlayState]:
        """The plays in flight: the highest version of each play in ``plays_live`` that is no tombstone."""
        top: dict[str, Doc] = {}
        async for doc in self._s.coll(PLAYS_LIVE).find(query, _LIVE_FIELDS):
            if doc["play_id"] not in top or int(doc["seq"]) > int(top[doc["play_id"]]["seq"]):
                top[doc["play_id"]] = doc
        return [s for s in (_state(d) for d in top.values() if not d.get("final")) if s is not None]


def _companies(live: Mapping[str, Iterable[Doc]]) -> dict[str, set[str]]:
    return {play_id: {v["company_id"] for v in found} for play_id, found in live.items()}


def _stored(versions: Iterable[Doc]) -> Stored | None:
    """What ``plays_live`` holds of one play: its highest version."""
    top = max(versions, key=lambda v: int(v["seq"]), default=None)
    if top is None:
        return None
    return Stored(top["company_id"], int(top["seq"]), None if top.get("final") else _state(top))
