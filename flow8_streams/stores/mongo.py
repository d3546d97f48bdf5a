"""The MongoDB adapter of the four store ports, over pymongo's ``AsyncMongoClient``.

Collections (one database): ``plays`` (the projection), ``play_ids`` (a client's own play
ids and the company that claimed each), ``events`` (an optional copy of the log), ``kv``,
``flows`` (versioned definitions) and ``modules`` (the catalog; only its index is made here).
``open()`` creates the indexes; reads work without it.

Nothing needs a multi-document transaction, so this runs on a sharded cluster and on
FerretDB alike. Every write that must not go backwards is guarded inside a single
document:

- plays: ``seq`` guards each write, in two updates that work on MongoDB and FerretDB:
  ``{_id, company_id}`` ``$setOnInsert`` (upsert), then ``{_id, company_id, seq < n}``
  ``$set`` (no upsert). A redelivered or older state matches nothing.
- kv: every write inserts the key's next version (``kv_versions``, unique ``_id`` per
  version and unique op), so writers that collide lose an insert, not an update; an
  increment's op id is recorded with its version, so a redelivered op returns its first
  result and counts nothing, for ``kv_incr_dedup_seconds`` (see ``MongoKV``). FerretDB
  refuses TTL indexes (``expireAfterSeconds`` is not implemented), so old versions are
  deleted by the writers.

Every query carries ``company_id`` where the port has it. ``plays.get(None, id)`` and
``plays.list()`` without a company are the operator path (the CLI's ``plays show``/``list``).

FerretDB (1.24, SQLite backend) is NOT safe for concurrent writers of one document:
its updates (``update``, ``findAndModify``, even ``$inc``) read, modify and write back
without a transaction, so concurrent updates from several connections are lost (measured:
200 concurrent ``$inc`` -> 18; a ``seq``-guarded ``$set`` let seq 2 overwrite seq 7).
Only inserts (unique ``_id``/index) and deletes are atomic there. KV writes are therefore
inserts (correct between processes on both servers). Play projections serialize their
writes of one play batch in-process (asyncio locks), which makes one store correct on
FerretDB; between processes (two projectors during a hand-over) it holds on MongoDB only.
Concurrent first upserts of one ``_id`` fail with E11000 on FerretDB (MongoDB retries
them): such an upsert is tried once more.

FerretDB also shaped these choices; each is valid MongoDB too:

- field names with a ``.`` or a leading ``$`` are refused, even nested: a JSON value
  with such a key (a KV value, a flowlet output) is stored as JSON bytes in ``<field>_json``.
- ``createIndexes`` with several indexes that exist already crashes the connection:
  ``open()`` creates them one by one.
- dates are BSON dates (milliseconds): ``created_at`` sorts ``plays.list``, so plays started
  within the same millisecond come in no particular order.
- a ``bulk_write`` whose op fails answers with a malformed reply (pymongo ``KeyError:
  'nModified'``) and stops at that op, ordered or not: such a batch is redone play by play.
- an ``update`` command holds one SQLite connection per upsert that inserts until the whole
  command ends, out of a pool of 100: one bulk of 100 new plays, or two concurrent ones of
  60, wait for a connection forever and wedge the whole server (no command of any database
  answers again). Plays are written ``PLAYS_PER_BULK`` at a time.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import random
import uuid
from collections.abc import AsyncIterator, Callable, Hashable, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from bson.errors import InvalidDocument
from cachetools import TTLCache
from pydantic import ValidationError
from pymongo import ASCENDING, DESCENDING, AsyncMongoClient, IndexModel, UpdateOne
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import BulkWriteError, ConnectionFailure, DuplicateKeyError, PyMongoError

from flow8_streams.domain.events import Event, event_adapter
from flow8_streams.domain.flow import FlowDefinition
from flow8_streams.domain.messages import GENERATED_PREFIX
from flow8_streams.domain.state import PlayState
from flow8_streams.engine import EngineError, fold
from flow8_streams.errors import InvalidInput, StoreUnavailable
from flow8_streams.metrics import Metrics
from flow8_streams.redact import redact_uri, scrub
from flow8_streams.stores.ports import KVEntry

Doc = dict[str, Any]

PLAYS, EVENTS, KV, KV_VERSIONS, FLOWS, MODULES = "plays", "events", "kv", "kv_versions", "flows", "modules"
PLAY_IDS = "play_ids"  # a client's own play id -> the company that claimed it (see MongoPlays.claim)

INDEXES: dict[str, list[IndexModel]] = {
    FLOWS: [
        IndexModel([("company_id", ASCENDING), ("created_at", DESCENDING)], name="company_created"),
        IndexModel(
            [("company_id", ASCENDING), ("name", ASCENDING), ("version", DESCENDING)],
            name="company_name_version",
            unique=True,
        ),
    ],
    PLAYS: [
        IndexModel([("flow_id", ASCENDING), ("created_at", DESCENDING)], name="flow_created"),
        IndexModel(
            [("company_id", ASCENDING), ("status", ASCENDING), ("created_at", DESCENDING)],
            name="company_status_created",
        ),
        IndexModel([("company_id", ASCENDING), ("created_at", DESCENDING)], name="company_created"),
    ],
    EVENTS: [IndexModel([("play_id", ASCENDING), ("seq", ASCENDING)], name="play_seq")],
    KV_VERSIONS: [
        IndexModel([("op", ASCENDING)], name="op", unique=True),
        IndexModel([("company_id", ASCENDING), ("kv", ASCENDING), ("version", ASCENDING)], name="company_kv_version"),
    ],
    MODULES: [IndexModel([("company_id", ASCENDING), ("name", ASCENDING)], name="company_name")],
}

_INT64 = (-(2**63), 2**63 - 1)
_WRITE_ATTEMPTS = 200  # version conflicts with other writers before a kv write gives up
KV_INCR_DEDUP_SECONDS = 86_400.0
PRUNE_EVERY = 64  # versions of a key between two prunes of its old versions
PRUNE_BATCH = 1_000  # versions one prune deletes at most (more than PRUNE_EVERY: it keeps up)
PLAYS_PER_BULK = 20  # FerretDB wedges on big update commands (see the module's docstring)


def _now() -> datetime:
    return datetime.now(UTC)


def _hosts(uri: str) -> str:
    """The host list of a MongoDB URI, without scheme, credentials, path or options."""
    rest = redact_uri(uri).split("://", 1)[-1].rsplit("@", 1)[-1]
    return rest.split("/", 1)[0].split("?", 1)[0] or "?"


def _short(exc: BaseException, limit: int = 300) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


# ------------------------------------------------------------ JSON values in BSON


def _json_value(value: Any, what: str) -> Any:
    """``value`` as JSON sees it (what the SQLite adapter stores and reads back)."""
    try:
        return orjson.loads(orjson.dumps(value))
    except TypeError as exc:  # orjson.JSONEncodeError
        raise InvalidInput(f"{what}: the value is not JSON: {exc}") from exc


def _bson_safe(value: Any) -> bool:
    """True when MongoDB and FerretDB store ``value`` (JSON-shaped) as it is."""
    if isinstance(value, dict):
        return all(
            isinstance(k, str) and "." not in k and not k.startswith("$") and "\x00" not in k and _bson_safe(v)
            for k, v in value.items()
        )
    if isinstance(value, list):
        return all(_bson_safe(v) for v in value)
    if isinstance(value, bool) or value is None or isinstance(value, str | float):
        return True
    if isinstance(value, int):
        return _INT64[0] <= value <= _INT64[1]
    return False


def _pack(name: str, value: Any) -> Doc:
    """``{name: value}``, or the value as JSON bytes in ``name_json`` when BSON cannot hold it."""
    if _bson_safe(value):
        return {name: value, f"{name}_json": None}
    return {name: None, f"{name}_json": orjson.dumps(value)}


def _unpack(doc: Mapping[str, Any], name: str) -> Any:
    raw = doc.get(f"{name}_json")
    return orjson.loads(raw) if raw is not None else doc.get(name)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


# ------------------------------------------------------------ the store


class MongoStore:
    """One MongoDB database; its ports are ``log``, ``plays``, ``kv`` and ``flows``.

    ``client_or_uri``: a URI (the store makes and closes its client) or an
    ``AsyncMongoClient`` the caller owns (``close()`` leaves it open).
    """

    def __init__(
        self,
        client_or_uri: str | AsyncMongoClient[Doc],
        database: str,
        *,
        metrics: Metrics | None = None,
        flow_cache_ttl: float = 300,
        flow_cache_max: int = 10_000,
        kv_incr_dedup_seconds: float = KV_INCR_DEDUP_SECONDS,
        clock: Callable[[], datetime] | None = None,
        timeout_ms: int | None = None,
    ) -> None:
        if not kv_incr_dedup_seconds > 0:
            raise InvalidInput(f"kv_incr_dedup_seconds must be more than 0, not {kv_incr_dedup_seconds}")
        if isinstance(client_or_uri, str):
            self.hosts = _hosts(client_or_uri)
            try:
                # timeoutMS bounds each operation (pymongo's client-side timeout): a wedged server
                # fails the call (StoreUnavailable, a retryable flowlet failure) instead of hanging it
                self.client: AsyncMongoClient[Doc] = AsyncMongoClient(
                    client_or_uri, tz_aware=True, appname="flow8", timeoutMS=timeout_ms
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
        self.flows = MongoFlows(self, ttl=flow_cache_ttl, max_entries=flow_cache_max)

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


# ------------------------------------------------------------ KV


def _kv_id(company_id: str, key: str) -> str:
    """Collision-free for any strings: the company's length comes first."""
    return f"{len(company_id)}:{company_id}/{key}"


class _KeyLocks:
    """One asyncio lock per key while someone holds or waits for it."""

    def __init__(self) -> None:
        self._locks: dict[Hashable, tuple[asyncio.Lock, int]] = {}

    @asynccontextmanager
    async def hold(self, key: Hashable) -> AsyncIterator[None]:
        lock, users = self._locks.get(key, (None, 0))
        lock = lock or asyncio.Lock()
        self._locks[key] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[key]
            if users == 1:
                del self._locks[key]
            else:
                self._locks[key] = (lock, users - 1)


class MongoKV:
    """The ``KVStore`` port as an append-only log of versions per key, with a head.

    Every write of a key inserts the document of its next version into ``kv_versions``:
    ``{_id: "<kv id>#<version>", company_id, key, kv, version, value, op}``. Two writers
    of one version collide on the unique ``_id``, and the loser reads again and retries.
    Inserts are the one write FerretDB makes atomic between connections, so this holds
    between any writers (two workers during a partition hand-over, a request that
    FerretDB finishes long after its client gave up) on FerretDB and MongoDB alike.
    ``op`` is unique too: ``"<kv id>!<op id>"`` for an increment (a repeat collides with
    its first record, and returns that result), a fresh one for a set or a cas.

    ``kv`` holds each key's head, ``{_id: kv id, company_id, key, version, value}``:
    the newest version this store wrote, moved forward only (on MongoDB; FerretDB may
    land an older head late). It is a hint: a read goes on from it, by ``_id``, to any
    newer version. A version, and with it its op id, is kept for ``dedup_seconds`` after
    it was written (by age, never by count: a hot counter forgets nothing young). Every
    ``PRUNE_EVERY`` versions of a key, its writer deletes up to ``PRUNE_BATCH`` of its
    oldest versions that are older than that, never the newest.
    This instance's writes of one key run one at a time (a lock per key): they do
    not collide with each other.
    """

    def __init__(self, store: MongoStore, dedup_seconds: float, clock: Callable[[], datetime]) -> None:
        self._s = store
        self.dedup_seconds = dedup_seconds
        self._clock = clock
        self._locks = _KeyLocks()
        self._indexed = False  # the unique op index is what makes an op count once: made before a write

    @property
    def _heads(self) -> AsyncCollection[Doc]:
        return self._s.coll(KV)

    @property
    def _versions(self) -> AsyncCollection[Doc]:
        return self._s.coll(KV_VERSIONS)

    async def get(self, company_id: str, key: str) -> KVEntry | None:
        with self._s.errors(f"reading kv key {key!r}"):
            version, value = await self._latest(company_id, _kv_id(company_id, key))
        return None if version == 0 else KVEntry(key, value, version)

    async def set(self, company_id: str, key: str, value: Any) -> KVEntry:
        value = _json_value(value, f"kv key {key!r}")
        kv_id = _kv_id(company_id, key)
        async with self._locks.hold((company_id, key)):
            with self._s.errors(f"writing kv key {key!r}"):
                for attempt in range(_WRITE_ATTEMPTS):
                    await _backoff(attempt)
                    version, _ = await self._latest(company_id, kv_id, walk=attempt > 0)
                    if await self._write(company_id, key, kv_id, version + 1, value, _fresh_op(kv_id)):
                        return KVEntry(key, value, version + 1)
        raise self._gave_up(company_id, key, "set")

    async def cas(self, company_id: str, key: str, value: Any, expected_version: int) -> KVEntry | None:
        value = _json_value(value, f"kv key {key!r}")
        kv_id = _kv_id(company_id, key)
        async with self._locks.hold((company_id, key)):
            with self._s.errors(f"writing kv key {key!r}"):
                version, _ = await self._latest(company_id, kv_id)
                if version != expected_version:
                    return None
                if not await self._write(company_id, key, kv_id, version + 1, value, _fresh_op(kv_id)):
                    return None  # another writer took that version first
        return KVEntry(key, value, expected_version + 1)

    async def incr(self, company_id: str, key: str, by: float, op_id: str) -> KVEntry:
        """Add ``by`` once per ``op_id``; a repeated op returns its first result, uncounted.

        Read the newest version ``v`` and insert ``v + 1`` holding the sum and the op. A
        duplicate key means the op is recorded (return its result) or another writer
        took ``v + 1`` (read again). The first try takes ``v`` from the head alone: a head
        that lags makes the insert collide, and the retry walks to the newest version."""
        if not _is_number(by):
            raise InvalidInput(f"kv incr of key {key!r}: {by!r} is not a number")
        kv_id = _kv_id(company_id, key)
        op = _op(kv_id, op_id)
        async with self._locks.hold((company_id, key)):
            with self._s.errors(f"incrementing kv key {key!r}"):
                walk = False
                for attempt in range(_WRITE_ATTEMPTS):
                    await _backoff(attempt)
                    version, current = await self._latest(company_id, kv_id, walk=walk)
                    walk = True
                    current = 0 if version == 0 else current
                    if not _is_number(current):
                        version, current = await self._latest(company_id, kv_id)  # the head may lag
                        current = 0 if version == 0 else current
                    if not _is_number(current):
                        done = await self._recorded(company_id, key, op)
                        if done is not None:  # counted before a set() made it a non-number
                            return done
                        raise InvalidInput(f"kv key {key!r} of company {company_id!r} holds {current!r}, not a number")
                    if await self._write(company_id, key, kv_id, version + 1, current + by, op):
                        return KVEntry(key, current + by, version + 1)
                    done = await self._recorded(company_id, key, op)
                    if done is not None:
                        return done
        raise self._gave_up(company_id, key, "incr")

    async def _latest(self, company_id: str, kv_id: str, *, walk: bool = True) -> tuple[int, Any]:
        """``(version, value)`` of the newest version, ``(0, None)`` for an absent key; with
        ``walk=False`` the head's alone (a hint: FerretDB scans ``kv_versions`` for any
        query, even by ``_id``, so a write looks there only after a collision)."""
        head = await self._heads.find_one({"_id": kv_id, "company_id": company_id}, _VALUE_FIELDS)
        version, value = (0, None) if head is None else (int(head["version"]), _unpack(head, "value"))
        while walk:
            newer = await self._versions.find_one(
                {"_id": _version_id(kv_id, version + 1), "company_id": company_id}, _VALUE_FIELDS
            )
            if newer is None:
                return version, value
            version, value = version + 1, _unpack(newer, "value")
        return version, value

    async def _write(self, company_id: str, key: str, kv_id: str, version: int, value: Any, op: str) -> bool:
        """Insert ``version``; False when its ``_id`` or its op is taken."""
        if not self._indexed:
            for index in INDEXES[KV_VERSIONS]:  # idempotent; one at a time for FerretDB
                await self._versions.create_indexes([index])
            self._indexed = True
        stored = _pack("value", value)
        try:
            await self._versions.insert_one(
                {
                    "_id": _version_id(kv_id, version),
                    "company_id": company_id,
                    "key": key,
                    "kv": kv_id,
                    "version": version,
                    **stored,
                    "op": op,
                    "at": self._clock(),
                }
            )
        except DuplicateKeyError:
            return False
        with contextlib.suppress(
            DuplicateKeyError
        ):  # the head moves forward only: an upsert that finds a newer one collides
            await self._heads.update_one(
                {"_id": kv_id, "company_id": company_id, "version": {"$lt": version}},
                {"$set": {"key": key, "version": version, **stored, "updated_at": _now()}},
                upsert=True,
            )
        if version % PRUNE_EVERY == 0:
            await self._prune(company_id, kv_id, version)
        return True

    async def _prune(self, company_id: str, kv_id: str, newest: int) -> None:
        """Delete this key's versions older than ``dedup_seconds``, oldest first, at most
        ``PRUNE_BATCH``, never ``newest`` or above; a range of the version index, so the
        cost does not grow with the versions kept."""
        cutoff = self._clock() - timedelta(seconds=self.dedup_seconds)
        key = {"company_id": company_id, "kv": kv_id}
        oldest = await self._versions.find_one(key, {"version": 1, "at": 1}, sort=[("version", ASCENDING)])
        if oldest is None:
            return
        at: datetime = oldest["at"]
        if (at if at.tzinfo else at.replace(tzinfo=UTC)) >= cutoff:  # a caller's client may not be tz_aware
            return
        low = int(oldest["version"])
        await self._versions.delete_many(
            {**key, "version": {"$gte": low, "$lt": min(low + PRUNE_BATCH, newest)}, "at": {"$lt": cutoff}}
        )

    async def _recorded(self, company_id: str, key: str, op: str) -> KVEntry | None:
        """The first result of ``op`` on this key, if it is recorded."""
        doc = await self._versions.find_one({"op": op, "company_id": company_id}, {"version": 1, **_VALUE_FIELDS})
        return None if doc is None else KVEntry(key, _unpack(doc, "value"), int(doc["version"]))

    @staticmethod
    def _gave_up(company_id: str, key: str, what: str) -> StoreUnavailable:
        return StoreUnavailable(
            f"kv key {key!r} of company {company_id!r}: {what} gave up after {_WRITE_ATTEMPTS} conflicting writes"
        )


_VALUE_FIELDS = {"version": 1, "value": 1, "value_json": 1}


def _version_id(kv_id: str, version: int) -> str:
    return f"{kv_id}#{version}"


def _op(kv_id: str, op_id: str) -> str:
    return f"{kv_id}!{op_id}"


def _fresh_op(kv_id: str) -> str:
    """A set or a cas is no repeatable op: a unique value keeps the op index unique."""
    return f"{kv_id}/{uuid.uuid4().hex}"


async def _backoff(attempt: int) -> None:
    """Before a retry after a conflict with another writer: a short random wait."""
    if attempt:
        await asyncio.sleep(random.uniform(0, min(0.05, 0.001 * 2**attempt)))


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
