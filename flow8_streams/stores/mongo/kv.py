"""The ``KVStore`` port on MongoDB: collections ``kv`` (heads) and ``kv_versions``."""

from __future__ import annotations

import asyncio
import contextlib
import random
import uuid
from collections.abc import AsyncIterator, Callable, Hashable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from pymongo import ASCENDING
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import DuplicateKeyError

from flow8_streams.errors import InvalidInput, StoreUnavailable
from flow8_streams.stores.mongo.common import (
    INDEXES,
    KV,
    KV_VERSIONS,
    Doc,
    _is_number,
    _json_value,
    _now,
    _pack,
    _unpack,
)
from flow8_streams.stores.ports import KVEntry
from flow8_streams.stores.ranges import prefix_end

if TYPE_CHECKING:
    from flow8_streams.stores.mongo.store import MongoStore

_WRITE_ATTEMPTS = 200  # version conflicts with other writers before a kv write gives up
KV_INCR_DEDUP_SECONDS = 86_400.0
PRUNE_EVERY = 64  # versions of a key between two prunes of its old versions
PRUNE_BATCH = 1_000  # versions one prune deletes at most (more than PRUNE_EVERY: it keeps up)

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

    async def keys(self, company_id: str, prefix: str = "", limit: int = 50, after: str | None = None) -> list[str]:
        """From the heads: a key whose first write has no head yet (its writer stopped between
        the two inserts) is listed once any write of it lands its head."""
        end = prefix_end(prefix)
        span: Doc = {"$gte": _kv_id(company_id, prefix)}
        span["$lt"] = _kv_id(company_id, end) if end is not None else f"{len(company_id)}:{company_id}0"  # "/" + 1
        if after is not None:
            span["$gt"] = _kv_id(company_id, after)
        query = {"_id": span, "company_id": company_id}
        with self._s.errors("listing kv keys"):
            docs = self._heads.find(query, {"key": 1}).sort("_id", ASCENDING).limit(limit)
            return [str(doc["key"]) async for doc in docs]

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

    async def versions_at(
        self, company_id: str, when: datetime, limit: int
    ) -> tuple[list[tuple[KVEntry, KVEntry | None, int]], int]:
        """For an audit, each of the company's keys (at most ``limit``, by key): its newest
        version, its newest version written at or before ``when`` (None if none is kept), and
        the oldest version kept (older ones were pruned); and how many keys there are."""
        company = {"company_id": company_id}
        with self._s.errors("reading kv versions"):
            total = await self._heads.count_documents(company)
            heads = [
                h async for h in self._heads.find(company, {"_id": 1, "key": 1}).sort("_id", ASCENDING).limit(limit)
            ]
            out: list[tuple[KVEntry, KVEntry | None, int]] = []
            for head in heads:
                of_key = {**company, "kv": head["_id"]}
                newest = await self._versions.find_one(of_key, _VALUE_FIELDS, sort=[("version", -1)])
                oldest = await self._versions.find_one(of_key, {"version": 1}, sort=[("version", ASCENDING)])
                if newest is None or oldest is None:  # a head whose versions are gone: nothing to tell
                    continue
                then = await self._versions.find_one(
                    {**of_key, "at": {"$lte": when}}, _VALUE_FIELDS, sort=[("version", -1)]
                )
                key = str(head["key"])
                out.append(
                    (
                        KVEntry(key, _unpack(newest, "value"), int(newest["version"])),
                        None if then is None else KVEntry(key, _unpack(then, "value"), int(then["version"])),
                        int(oldest["version"]),
                    )
                )
        return out, total

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
