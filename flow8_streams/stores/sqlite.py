"""The embedded store: one SQLite file holds the event log, the play projection,
the KV store with exactly-once counters, and the flow catalog.

Calls run on the event loop's thread: each is a short local transaction (WAL,
``synchronous=NORMAL``), cheaper than a hop to a worker thread. The local runtime
writes a whole batch of decisions in one transaction with ``record``.
"""

from __future__ import annotations

import builtins
import sqlite3
from collections.abc import Callable, Collection, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
from pydantic import ValidationError

from flow8_streams.domain.events import Event, event_adapter
from flow8_streams.domain.flow import FlowDefinition
from flow8_streams.domain.state import PlayState
from flow8_streams.engine import fold
from flow8_streams.engine.projection import ApplyResult, Batch, Stored, project
from flow8_streams.errors import InvalidInput, StoreUnavailable
from flow8_streams.stores.ports import ApiKey, KVEntry, PlayPage
from flow8_streams.stores.ranges import prefix_end

SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    play_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    company_id TEXT NOT NULL,
    type TEXT NOT NULL,
    at TEXT NOT NULL,
    body BLOB NOT NULL,
    PRIMARY KEY (play_id, seq)
);
CREATE TABLE IF NOT EXISTS plays (
    play_id TEXT PRIMARY KEY,
    company_id TEXT NOT NULL,
    flow TEXT NOT NULL,
    flow_version INTEGER NOT NULL,
    status TEXT NOT NULL,
    seq INTEGER NOT NULL,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    state BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS plays_company_status ON plays (company_id, status, created_at);
CREATE INDEX IF NOT EXISTS plays_flow ON plays (flow, created_at);
CREATE TABLE IF NOT EXISTS kv (
    company_id TEXT NOT NULL,
    key TEXT NOT NULL,
    value BLOB NOT NULL,
    version INTEGER NOT NULL,
    updated_at TEXT NOT NULL,
    PRIMARY KEY (company_id, key)
);
CREATE TABLE IF NOT EXISTS kv_ops (
    company_id TEXT NOT NULL,
    op_id TEXT NOT NULL,
    key TEXT NOT NULL,
    value BLOB NOT NULL,
    version INTEGER NOT NULL,
    at REAL,
    PRIMARY KEY (company_id, op_id)
);
CREATE TABLE IF NOT EXISTS api_keys (
    key_id TEXT PRIMARY KEY,
    company_id TEXT NOT NULL,
    role TEXT NOT NULL,
    digest BLOB NOT NULL,
    created_at TEXT NOT NULL,
    revoked_at TEXT
);
CREATE INDEX IF NOT EXISTS api_keys_company ON api_keys (company_id, created_at);
CREATE TABLE IF NOT EXISTS flows (
    company_id TEXT NOT NULL,
    name TEXT NOT NULL,
    version INTEGER NOT NULL,
    created_at TEXT NOT NULL,
    definition BLOB NOT NULL,
    PRIMARY KEY (company_id, name, version)
);
"""


def _now() -> str:
    return datetime.now(UTC).isoformat()


def _utcnow() -> datetime:
    return datetime.now(UTC)


KV_INCR_DEDUP_SECONDS = 86_400.0
PRUNE_EVERY = 64  # increments between two prunes of old operation ids
PRUNE_BATCH = 1_000  # operation ids deleted by one prune at most (more than PRUNE_EVERY: it keeps up)


def _migrate_kv_ops(db: sqlite3.Connection, now: datetime) -> None:
    """``kv_ops.at`` (unix seconds an op was recorded) and its index; ops recorded before the
    column existed are dated now, so they are kept for a whole window from here."""
    columns = {row[1] for row in db.execute("PRAGMA table_info(kv_ops)")}
    if "at" not in columns:
        db.execute("ALTER TABLE kv_ops ADD COLUMN at REAL")
    db.execute("CREATE INDEX IF NOT EXISTS kv_ops_at ON kv_ops (at)")
    if db.execute("SELECT 1 FROM kv_ops WHERE at IS NULL LIMIT 1").fetchone() is not None:  # writes only if due
        db.execute("UPDATE kv_ops SET at = ? WHERE at IS NULL", (now.timestamp(),))


def _iso(value: datetime) -> str:
    return value.isoformat()


class SqliteStore:
    """One SQLite file; its ports are ``log``, ``plays``, ``kv`` and ``flows``.

    ``kv_incr_dedup_seconds``: how long a ``kv.incr`` operation id is remembered;
    ``clock`` dates them (the tests move it instead of waiting).
    """

    def __init__(
        self,
        path: str | Path,
        *,
        kv_incr_dedup_seconds: float = KV_INCR_DEDUP_SECONDS,
        clock: Callable[[], datetime] = _utcnow,
    ) -> None:
        if not kv_incr_dedup_seconds > 0:
            raise InvalidInput(f"kv_incr_dedup_seconds must be more than 0, not {kv_incr_dedup_seconds}")
        self.path = str(path)
        try:
            if self.path != ":memory:":
                Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            self.db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=NORMAL")
            self.db.execute("PRAGMA busy_timeout=5000")
            self.db.executescript(SCHEMA)
            _migrate_kv_ops(self.db, clock())
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"cannot open the SQLite database {self.path}: {exc}") from exc
        self.log = SqliteEventLog(self)
        self.plays = SqlitePlays(self)
        self.kv = SqliteKV(self, kv_incr_dedup_seconds, clock)
        self.flows = SqliteFlows(self)
        self.keys = SqliteApiKeys(self)
        self.retention = SqliteRetention(self)

    def close(self) -> None:
        self.db.close()

    @contextmanager
    def tx(self) -> Iterator[sqlite3.Connection]:
        try:
            self.db.execute("BEGIN IMMEDIATE")
            try:
                yield self.db
            except BaseException:
                self.db.execute("ROLLBACK")
                raise
            self.db.execute("COMMIT")
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"SQLite database {self.path}: {exc}") from exc

    def record(self, events: Sequence[Event], states: Sequence[PlayState]) -> None:
        """Append events and project the plays they touched, in one transaction."""
        with self.tx() as db:
            _insert_events(db, events)
            _upsert_plays(db, states)

    def rebuild(self, play_id: str) -> PlayState | None:
        """A play's state folded from its events: the source of truth."""
        return fold(self.log.read_sync(play_id))

    def secret(self, name: str, make: Callable[[], bytes]) -> bytes:
        """The secret ``name`` this file keeps (in table ``meta``), made by ``make`` on first use."""
        with self.tx() as db:
            db.execute("CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value BLOB NOT NULL)")
            db.execute("INSERT OR IGNORE INTO meta (name, value) VALUES (?, ?)", (name, make()))
            row = db.execute("SELECT value FROM meta WHERE name = ?", (name,)).fetchone()
        return bytes(row[0])


def _insert_events(db: sqlite3.Connection, events: Sequence[Event]) -> None:
    """Each body is the event's JSON from its own class's serializer: the bytes the ``Event``
    union's adapter writes, without its search for the class."""
    db.executemany(
        "INSERT OR IGNORE INTO events (play_id, seq, company_id, type, at, body) VALUES (?,?,?,?,?,?)",
        [(e.play_id, e.seq, e.company_id, e.type, _iso(e.at), e.__pydantic_serializer__.to_json(e)) for e in events],
    )


def _upsert_plays(db: sqlite3.Connection, states: Sequence[PlayState]) -> None:
    """The guard is in the conflict's filter: a play stored at the same or a higher seq,
    or for another company, is left alone."""
    now = _now()
    db.executemany(
        """INSERT INTO plays (play_id, company_id, flow, flow_version, status, seq, created_at, updated_at, state)
           VALUES (?,?,?,?,?,?,?,?,?)
           ON CONFLICT (play_id) DO UPDATE SET
             status = excluded.status, seq = excluded.seq,
             updated_at = excluded.updated_at, state = excluded.state
           WHERE excluded.seq > plays.seq AND excluded.company_id = plays.company_id""",
        [
            (
                s.play_id,
                s.company_id,
                s.flow.name,
                s.flow.version,
                s.status.value,
                s.seq,
                _iso(s.started_at),
                now,
                s.__pydantic_serializer__.to_json(s),
            )
            for s in states
        ],
    )


_IN_CHUNK = 500  # ids per ``IN (...)``: below SQLite's host parameter limit


def _stored_plays(db: sqlite3.Connection, play_ids: Sequence[str]) -> dict[str, Stored]:
    stored: dict[str, Stored] = {}
    for start in range(0, len(play_ids), _IN_CHUNK):
        chunk = play_ids[start : start + _IN_CHUNK]
        rows = db.execute(
            f"SELECT play_id, company_id, seq, state FROM plays WHERE play_id IN ({','.join('?' * len(chunk))})",
            chunk,
        )
        for play_id, company_id, seq, state in rows:
            stored[play_id] = Stored(company_id, seq, PlayState.model_validate_json(state))
    return stored


class SqliteEventLog:
    """The ``EventLog`` port."""

    def __init__(self, store: SqliteStore) -> None:
        self._s = store

    async def append(self, events: Sequence[Event]) -> None:
        with self._s.tx() as db:
            _insert_events(db, events)

    async def read(self, play_id: str, after_seq: int = 0, *, company_id: str | None = None) -> list[Event]:
        return self.read_sync(play_id, after_seq, company_id=company_id)

    def read_sync(self, play_id: str, after_seq: int = 0, *, company_id: str | None = None) -> list[Event]:
        sql, args = "SELECT seq, body FROM events WHERE play_id = ? AND seq > ?", [play_id, after_seq]
        if company_id is not None:
            sql += " AND company_id = ?"
            args.append(company_id)
        rows = self._s.db.execute(sql + " ORDER BY seq", args).fetchall()
        events = []
        for seq, body in rows:
            try:
                events.append(event_adapter.validate_json(body))
            except ValidationError as exc:  # a damaged row: an audit must report it, not crash on it
                problem = exc.errors(include_url=False)[0]["msg"]
                raise StoreUnavailable(
                    f"SQLite database {self._s.path}: event {seq} of play {play_id} cannot be read: {problem}"
                ) from None
        return events


class SqlitePlays:
    """The ``PlayProjection`` port."""

    def __init__(self, store: SqliteStore) -> None:
        self._s = store

    async def apply(self, events: Sequence[Event], *, absent: Collection[str] = ()) -> ApplyResult:
        """Read the batch's plays, fold (``engine.projection``), write: one transaction.
        (``absent`` is no help here: reading a play by its key is cheap.)"""
        batch = Batch.of(events)
        with self._s.tx() as db:
            projection = project(batch, _stored_plays(db, batch.play_ids))
            _upsert_plays(db, list(projection.states.values()))
        return projection.result()

    async def save(self, states: Sequence[PlayState]) -> None:
        with self._s.tx() as db:
            _upsert_plays(db, states)

    async def get(self, company_id: str | None, play_id: str) -> PlayState | None:
        return self.get_sync(play_id, company_id)

    def get_sync(self, play_id: str, company_id: str | None = None) -> PlayState | None:
        sql, args = "SELECT state FROM plays WHERE play_id = ?", [play_id]
        if company_id is not None:
            sql += " AND company_id = ?"
            args.append(company_id)
        row = self._s.db.execute(sql, args).fetchone()
        return None if row is None else PlayState.model_validate_json(row[0])

    async def list(
        self, company_id: str | None = None, status: str | None = None, limit: int = 50, page: PlayPage | None = None
    ) -> list[PlayState]:
        where: list[str] = []
        args: list[Any] = []
        if company_id is not None:
            where.append("company_id = ?")
            args.append(company_id)
        if status is not None:
            where.append("status = ?")
            args.append(status)
        if page is not None:  # created_at is started_at as ISO text in UTC: it sorts as the time does
            if page.flow is not None:
                where.append("flow = ?")
                args.append(page.flow)
            if page.since is not None:
                where.append("created_at >= ?")
                args.append(_iso(page.since.astimezone(UTC)))
            if page.until is not None:
                where.append("created_at < ?")
                args.append(_iso(page.until.astimezone(UTC)))
            if page.after is not None:
                where.append("(created_at, play_id) < (?, ?)")
                args += [_iso(page.after[0].astimezone(UTC)), page.after[1]]
        sql = "SELECT state FROM plays"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY created_at DESC, play_id DESC LIMIT ?"
        rows = self._s.db.execute(sql, [*args, limit]).fetchall()
        return [PlayState.model_validate_json(r[0]) for r in rows]

    def unfinished(self) -> builtins.list[tuple[str, str]]:
        """``(company_id, play_id)`` of every play recorded as running."""
        rows = self._s.db.execute("SELECT company_id, play_id FROM plays WHERE status = 'running' ORDER BY created_at")
        return [(r[0], r[1]) for r in rows]


class SqliteRetention:
    """The ``RetentionPort``: finished plays past their time, and their deletion, one transaction each."""

    def __init__(self, store: SqliteStore) -> None:
        self._s = store

    async def companies(self) -> builtins.list[str]:
        return [r[0] for r in self._s.db.execute("SELECT DISTINCT company_id FROM plays ORDER BY company_id")]

    async def expired(self, company_id: str, ended_before: datetime, limit: int) -> builtins.list[str]:
        """A play ends after it starts, so the index on ``created_at`` narrows the candidates;
        each one's end is read from its state."""
        rows = self._s.db.execute(
            "SELECT play_id, state FROM plays WHERE company_id = ? AND status IN ('succeeded', 'failed', 'cancelled')"
            " AND created_at < ? ORDER BY created_at, play_id",
            (company_id, _iso(ended_before.astimezone(UTC))),
        )
        found: builtins.list[str] = []
        for play_id, state in rows:
            ended = _ended_at(state)
            if ended is not None and ended < ended_before:
                found.append(play_id)
                if len(found) >= limit:
                    break
        return found

    async def prune(self, company_id: str, play_id: str, last_seq: int) -> bool:
        with self._s.tx() as db:
            (head,) = db.execute(
                "SELECT MAX(seq) FROM events WHERE play_id = ? AND company_id = ?", (play_id, company_id)
            ).fetchone()
            row = db.execute(
                "SELECT status FROM plays WHERE play_id = ? AND company_id = ?", (play_id, company_id)
            ).fetchone()
            if (head is not None and head != last_seq) or (row is not None and row[0] == "running"):
                return False
            db.execute("DELETE FROM events WHERE play_id = ? AND company_id = ?", (play_id, company_id))
            db.execute("DELETE FROM plays WHERE play_id = ? AND company_id = ?", (play_id, company_id))
        return True


def _ended_at(state: bytes) -> datetime | None:
    try:
        ended = orjson.loads(state).get("ended_at")
        return datetime.fromisoformat(ended) if isinstance(ended, str) else None
    except (orjson.JSONDecodeError, AttributeError, ValueError):
        return None  # a damaged row is not retention's to judge: kept


class SqliteKV:
    """The ``KVStore`` port: last-write-wins values, versions, and exactly-once counters.

    An increment's operation id is kept with its result for ``dedup_seconds`` (by age, never
    by count: a hot counter forgets nothing young); older ones are deleted, a bounded batch
    every ``PRUNE_EVERY`` increments of this store.
    """

    def __init__(self, store: SqliteStore, dedup_seconds: float, clock: Callable[[], datetime]) -> None:
        self._s = store
        self.dedup_seconds = dedup_seconds
        self._clock = clock
        self._incrs = 0

    async def get(self, company_id: str, key: str) -> KVEntry | None:
        row = self._s.db.execute(
            "SELECT value, version FROM kv WHERE company_id = ? AND key = ?", (company_id, key)
        ).fetchone()
        return None if row is None else KVEntry(key, orjson.loads(row[0]), row[1])

    async def keys(self, company_id: str, prefix: str = "", limit: int = 50, after: str | None = None) -> list[str]:
        end = prefix_end(prefix)
        rows = self._s.db.execute(
            "SELECT key FROM kv WHERE company_id = ? AND key >= ? AND key > ? AND (? IS NULL OR key < ?)"
            " ORDER BY key LIMIT ?",
            (company_id, prefix, after or "", end, end, limit),
        )
        return [r[0] for r in rows]

    async def set(self, company_id: str, key: str, value: Any) -> KVEntry:
        with self._s.tx() as db:
            (version,) = db.execute(
                """INSERT INTO kv (company_id, key, value, version, updated_at) VALUES (?,?,?,1,?)
                   ON CONFLICT (company_id, key) DO UPDATE SET
                     value = excluded.value, version = kv.version + 1, updated_at = excluded.updated_at
                   RETURNING version""",
                (company_id, key, orjson.dumps(value), _now()),
            ).fetchone()
        return KVEntry(key, value, version)

    async def cas(self, company_id: str, key: str, value: Any, expected_version: int) -> KVEntry | None:
        with self._s.tx() as db:
            if expected_version == 0:
                cur = db.execute(
                    "INSERT OR IGNORE INTO kv (company_id, key, value, version, updated_at) VALUES (?,?,?,1,?)",
                    (company_id, key, orjson.dumps(value), _now()),
                )
            else:
                cur = db.execute(
                    """UPDATE kv SET value = ?, version = version + 1, updated_at = ?
                       WHERE company_id = ? AND key = ? AND version = ?""",
                    (orjson.dumps(value), _now(), company_id, key, expected_version),
                )
        return KVEntry(key, value, expected_version + 1) if cur.rowcount == 1 else None

    async def incr(self, company_id: str, key: str, by: float, op_id: str) -> KVEntry:
        now = self._clock().timestamp()
        with self._s.tx() as db:
            self._incrs += 1
            if self._incrs % PRUNE_EVERY == 0:
                db.execute(
                    "DELETE FROM kv_ops WHERE rowid IN (SELECT rowid FROM kv_ops WHERE at < ? LIMIT ?)",
                    (now - self.dedup_seconds, PRUNE_BATCH),
                )
            done = db.execute(
                "SELECT value, version FROM kv_ops WHERE company_id = ? AND op_id = ?", (company_id, op_id)
            ).fetchone()
            if done is not None:
                return KVEntry(key, orjson.loads(done[0]), done[1])
            row = db.execute(
                "SELECT value, version FROM kv WHERE company_id = ? AND key = ?", (company_id, key)
            ).fetchone()
            current, version = (0, 0) if row is None else (orjson.loads(row[0]), row[1])
            if not isinstance(current, int | float) or isinstance(current, bool):
                raise InvalidInput(f"kv key {key!r} of company {company_id!r} holds {current!r}, not a number")
            value, version = current + by, version + 1
            blob = orjson.dumps(value)
            db.execute(
                """INSERT INTO kv (company_id, key, value, version, updated_at) VALUES (?,?,?,?,?)
                   ON CONFLICT (company_id, key) DO UPDATE SET
                     value = excluded.value, version = excluded.version, updated_at = excluded.updated_at""",
                (company_id, key, blob, version, _now()),
            )
            db.execute(
                "INSERT INTO kv_ops (company_id, op_id, key, value, version, at) VALUES (?,?,?,?,?,?)",
                (company_id, op_id, key, blob, version, now),
            )
        return KVEntry(key, value, version)


class SqliteFlows:
    """The ``FlowCatalog`` port: versioned flow definitions per company."""

    def __init__(self, store: SqliteStore) -> None:
        self._s = store

    async def put(self, company_id: str, flow: FlowDefinition) -> FlowDefinition:
        with self._s.tx() as db:
            db.execute(
                "INSERT OR REPLACE INTO flows (company_id, name, version, created_at, definition) VALUES (?,?,?,?,?)",
                (company_id, flow.name, flow.version, _now(), flow.model_dump_json()),
            )
        return flow

    async def get(self, company_id: str, name: str, version: int | None = None) -> FlowDefinition | None:
        sql = "SELECT definition FROM flows WHERE company_id = ? AND name = ?"
        args: list[Any] = [company_id, name]
        if version is not None:
            sql += " AND version = ?"
            args.append(version)
        row = self._s.db.execute(sql + " ORDER BY version DESC LIMIT 1", args).fetchone()
        if row is None:
            return None
        try:
            return FlowDefinition.model_validate_json(row[0])
        except ValidationError as exc:  # pragma: no cover - written by put()
            raise StoreUnavailable(f"stored flow {name!r} does not validate: {exc}") from exc

    async def versions(self, company_id: str, name: str) -> list[int]:
        rows = self._s.db.execute(
            "SELECT version FROM flows WHERE company_id = ? AND name = ? ORDER BY version", (company_id, name)
        )
        return [r[0] for r in rows]

    async def names(self, company_id: str, limit: int = 500, after: str | None = None) -> list[str]:
        rows = self._s.db.execute(
            "SELECT DISTINCT name FROM flows WHERE company_id = ? AND name > ? ORDER BY name LIMIT ?",
            (company_id, after or "", limit),
        )
        return [r[0] for r in rows]


class SqliteApiKeys:
    """The ``ApiKeys`` port: HTTP API keys by id, each stored as its SHA-256 only."""

    def __init__(self, store: SqliteStore) -> None:
        self._s = store

    async def add(self, key: ApiKey) -> None:
        with self._s.tx() as db:
            db.execute(
                "INSERT INTO api_keys (key_id, company_id, role, digest, created_at) VALUES (?,?,?,?,?)",
                (key.key_id, key.company_id, key.role, key.digest, _iso(key.created_at)),
            )

    async def get(self, key_id: str, company_id: str | None = None) -> ApiKey | None:
        sql, args = f"SELECT {_KEY_COLUMNS} FROM api_keys WHERE key_id = ?", [key_id]
        if company_id is not None:
            sql += " AND company_id = ?"
            args.append(company_id)
        row = self._s.db.execute(sql, args).fetchone()
        return None if row is None else _api_key(row)

    async def list(self, company_id: str | None = None) -> list[ApiKey]:
        sql, args = f"SELECT {_KEY_COLUMNS} FROM api_keys", []
        if company_id is not None:
            sql += " WHERE company_id = ?"
            args.append(company_id)
        return [_api_key(r) for r in self._s.db.execute(sql + " ORDER BY created_at, key_id", args)]

    async def revoke(self, key_id: str, at: datetime, company_id: str | None = None) -> ApiKey | None:
        sql, args = "UPDATE api_keys SET revoked_at = COALESCE(revoked_at, ?) WHERE key_id = ?", [_iso(at), key_id]
        if company_id is not None:
            sql += " AND company_id = ?"
            args.append(company_id)
        with self._s.tx() as db:
            db.execute(sql, args)
        return await self.get(key_id, company_id)


_KEY_COLUMNS = "key_id, company_id, role, digest, created_at, revoked_at"


def _api_key(row: tuple[Any, ...]) -> ApiKey:
    key_id, company_id, role, digest, created_at, revoked_at = row
    revoked = datetime.fromisoformat(revoked_at) if revoked_at is not None else None
    return ApiKey(key_id, company_id, role, bytes(digest), datetime.fromisoformat(created_at), revoked)
