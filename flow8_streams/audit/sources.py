"""Where audited histories come from: a SQLite db file, any ``Stores`` (MongoDB), an archive.

Each source yields ``PlayHistory`` per play, filtered by ``Filter`` (a company, or every company
for an operator's run). A source only reads: the SQLite file is opened read-only. Whatever it
reads is hostile: a row or line too large or not JSON is reported (``undecodable``) and skipped.
"""

from __future__ import annotations

import gzip
import itertools
import sqlite3
import zlib
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import IO, Any, cast

import orjson
from pydantic import ValidationError

from flow8_streams.audit import checkpoints as cp
from flow8_streams.audit.verify import PROJECTION, Finding, PlayHistory
from flow8_streams.domain.events import EVENT_TYPES
from flow8_streams.domain.state import PlayState
from flow8_streams.errors import InvalidInput, NotFound, StoreUnavailable
from flow8_streams.stores.ports import Stores

UNDECODABLE = "undecodable"
UNKNOWN_TYPE = "unknown_type"  # an event type this version does not know (from a newer one?): skipped
MAX_EVENT_BYTES = 16 * 1024 * 1024  # an event or archive line larger than this is refused, not parsed
READ_CHUNK = 1024 * 1024  # what an archive is read (and decompressed) by: memory stays bounded
MAX_PLAYS_LISTED = 10_000_000  # what a StoreSource asks the projection for at most
ARCHIVE_FORMAT, ARCHIVE_VERSION = "flow8-audit-export", 1


@dataclass(frozen=True, slots=True)
class Filter:
    company: str | None  # None: every company (an operator's --all-companies run)
    play: str | None = None
    flow: str | None = None
    status: str | None = None
    since: datetime | None = None
    until: datetime | None = None

    def admits(self, history: PlayHistory) -> bool:
        """The filters a source could not apply itself: flow, status and start time."""
        if self.company is not None and history.company_id != self.company:
            return False
        if self.play is not None and history.play_id != self.play:
            return False
        first = history.documents[0] if history.documents else None
        projection = history.projection
        if self.flow is not None:
            flow = first.get("flow_id") if first else (projection.flow.name if projection else None)
            if flow != self.flow:
                return False
        if self.status is not None:
            last = history.documents[-1].get("type") if history.documents else None
            status = {"PlayCompleted": "succeeded", "PlayFailed": "failed", "PlayCancelled": "cancelled"}.get(
                str(last), "running"
            )
            if status != self.status:
                return False
        if self.since is not None or self.until is not None:
            started = _started_at(first, projection)
            if started is None:
                return True  # a play with no readable start is audited, never filtered away
            if self.since is not None and started < self.since:
                return False
            if self.until is not None and started >= self.until:
                return False
        return True


def _started_at(first: dict[str, Any] | None, projection: PlayState | None) -> datetime | None:
    if first is not None and isinstance(first.get("at"), str):
        try:
            return datetime.fromisoformat(first["at"])
        except ValueError:
            return None
    return projection.started_at if projection is not None else None


def known_type(kind: object) -> bool:
    """``kind`` names an event type of this version (a list or an object names none: never hashed)."""
    return type(kind) is str and kind in EVENT_TYPES


def _decode(body: bytes) -> dict[str, Any] | str:
    """A JSON object, or what is wrong with ``body`` (the caller says where it is)."""
    if len(body) > MAX_EVENT_BYTES:
        return f"{len(body)} bytes, over {MAX_EVENT_BYTES}"
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        return f"not JSON ({exc})"
    return doc if type(doc) is dict else "not a JSON object"


class SqliteSource:
    """The embedded runtime's db file, opened read-only: events, projections, checkpoints (the
    db's table and ``DB.checkpoints.jsonl`` beside it, or ``checkpoints``)."""

    def __init__(self, path: Path, *, checkpoints: Path | None = None) -> None:
        if not path.is_file():
            raise NotFound(f"no database at {path}")
        self.path = path
        self.checkpoints_file = checkpoints if checkpoints is not None else cp.jsonl_path(path)
        try:
            self.db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
            self.db.execute("SELECT 1 FROM events LIMIT 1").fetchall()
        except sqlite3.Error as exc:
            raise InvalidInput(f"{path} is not a flow8 database: {exc}") from None

    def close(self) -> None:
        self.db.close()

    def _where(self, flt: Filter) -> tuple[str, list[Any]]:
        where, args = [], []
        if flt.company is not None:
            where.append("company_id = ?")
            args.append(flt.company)
        if flt.play is not None:
            where.append("play_id = ?")
            args.append(flt.play)
        return (" WHERE " + " AND ".join(where)) if where else "", args

    def histories(self, flt: Filter) -> Iterator[PlayHistory]:
        where, args = self._where(flt)
        try:
            projections = {
                play_id: (company, state)
                for play_id, company, state in self.db.execute(
                    f"SELECT play_id, company_id, state FROM plays{where}", args
                )
            }
            rows = self.db.execute(
                f"SELECT play_id, company_id, seq, body FROM events{where} ORDER BY play_id, seq", args
            )
            for play_id, group in itertools.groupby(rows, key=lambda r: r[0]):
                history = PlayHistory(play_id, "", [], has_projection=True)
                for _, company, seq, body in group:
                    history.company_id = history.company_id or company
                    doc = _decode(body)
                    if isinstance(doc, str):
                        history.problems.append(Finding(UNDECODABLE, f"event row ({play_id!r}, {seq}): {doc}", seq))
                    elif not known_type(doc.get("type")):
                        what = f"event row ({play_id!r}, {seq}): event type {doc.get('type')!r} is unknown"
                        history.problems.append(Finding(UNKNOWN_TYPE, what, seq))
                    else:
                        history.documents.append(doc)
                self._project(history, projections.pop(play_id, None))
                if flt.admits(history):
                    yield history
            for play_id, (company, state) in projections.items():  # projected, but no event left
                history = PlayHistory(play_id, company, [], has_projection=True)
                self._project(history, (company, state))
                if flt.admits(history):
                    yield history
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"SQLite database {self.path}: {exc}") from None

    @staticmethod
    def _project(history: PlayHistory, row: tuple[str, bytes] | None) -> None:
        if row is None:
            return
        try:
            history.projection = PlayState.model_validate_json(row[1])
        except ValidationError as exc:
            problem = exc.errors(include_url=False)[0]["msg"]
            history.problems.append(Finding(PROJECTION, f"the projection row cannot be read: {problem}", None))

    def checkpoints(self) -> Iterator[cp.SignedCheckpoint | Finding]:
        yield from cp.read_db(self.db)
        if self.checkpoints_file.is_file():
            yield from cp.read_jsonl(self.checkpoints_file)


class StoreSource:
    """Any ``Stores`` (MongoDB through ``stores.mongo``), read through its ports: the plays its
    projection lists, each with its log. A play whose projection row is gone is not listed."""

    def __init__(self, stores: Stores) -> None:
        self.stores = stores

    async def histories(self, flt: Filter) -> AsyncIterator[PlayHistory]:
        if flt.play is not None:
            one = await self.stores.plays.get(flt.company, flt.play)
            plays = [one] if one is not None else []
        else:
            plays = await self.stores.plays.list(flt.company, flt.status, MAX_PLAYS_LISTED)
        for state in plays:
            events = await self.stores.log.read(state.play_id, company_id=flt.company)
            docs = [e.model_dump(mode="json") for e in events]
            history = PlayHistory(state.play_id, state.company_id, docs, projection=state, has_projection=True)
            if flt.admits(history):
                yield history


class ArchiveSource:
    """A ``flow8 audit export`` file (JSONL, gzip or not): a header, then each play's events
    together, then the checkpoints."""

    def __init__(self, path: Path) -> None:
        if not path.is_file():
            raise NotFound(f"no archive at {path}")
        self.path = path
        self.header: dict[str, Any] = {}
        self.problems: list[Finding] = []  # lines skipped: reported in the summary
        self._stream = self._records()
        self._pending: tuple[int, dict[str, Any]] | None = None  # the first event line, once reached

    def _open(self) -> IO[bytes]:
        with self.path.open("rb") as f:
            gzipped = f.read(2) == b"\x1f\x8b"
        return cast(IO[bytes], gzip.open(self.path, "rb")) if gzipped else self.path.open("rb")

    def _lines(self) -> Iterator[tuple[int, bytes]]:
        """Numbered non-blank lines, read (and decompressed) a bounded chunk at a time; a line over
        ``MAX_EVENT_BYTES`` is reported and skipped."""
        n, rest, skipping = 0, b"", False
        try:
            with self._open() as f:
                while chunk := f.read(READ_CHUNK):
                    lines = (rest + chunk).split(b"\n")
                    rest = lines.pop()
                    for line in lines:
                        n += 1
                        if skipping:  # the end of a line too long to keep
                            skipping = False
                        elif len(line) > MAX_EVENT_BYTES:
                            self._too_long(n)
                        elif line and not line.isspace():
                            yield n, line
                    if len(rest) > MAX_EVENT_BYTES:
                        if not skipping:
                            self._too_long(n + 1)
                        rest, skipping = b"", True
        except (OSError, EOFError, zlib.error) as exc:
            raise InvalidInput(f"{self.path} cannot be read as an archive: {exc}") from None
        if rest and not skipping and not rest.isspace():
            yield n + 1, rest

    def _too_long(self, n: int) -> None:
        self.problems.append(Finding(UNDECODABLE, f"{self.path}:{n}: a line over {MAX_EVENT_BYTES} bytes: skipped"))

    def _records(self) -> Iterator[tuple[int, bytes, dict[str, Any]]]:
        for n, line in self._lines():
            record = _decode(line)
            if isinstance(record, str):
                self.problems.append(Finding(UNDECODABLE, f"{self.path}:{n}: {record}"))
            else:
                yield n, line, record

    def checkpoints(self) -> Iterator[cp.SignedCheckpoint | Finding]:
        """The header's and the checkpoints before the first event (where export writes them)."""
        if self._pending is not None:
            return
        for n, line, record in self._stream:
            if "header" in record:
                header = record["header"]
                self.header = header if isinstance(header, dict) else {}
                if self.header.get("format") != ARCHIVE_FORMAT:
                    raise InvalidInput(
                        f"{self.path} is not a flow8 audit export (format {self.header.get('format')!r})"
                    )
            elif "checkpoint" in record:
                yield cp.parse_line(line, f"{self.path}:{n}")
            else:
                self._pending = (n, record)
                return
        self._pending = (0, {})

    def histories(self, flt: Filter) -> Iterator[PlayHistory]:
        """Each play's events; call after ``checkpoints``."""
        if self._pending is None:
            for _ in self.checkpoints():
                pass
        assert self._pending is not None
        first = [(self._pending[0], b"", self._pending[1])] if self._pending[1] else []
        done: set[str] = set()
        current: PlayHistory | None = None
        for n, _, record in itertools.chain(first, self._stream):
            doc = record.get("event")
            if not isinstance(doc, dict) or not isinstance(doc.get("play_id"), str):
                what = "a checkpoint after the events" if "checkpoint" in record else "not an event"
                self.problems.append(Finding(UNDECODABLE, f"{self.path}:{n}: {what}: skipped"))
                continue
            if not known_type(doc.get("type")):
                what = f"event type {doc.get('type')!r} is unknown to this version"
                self.problems.append(Finding(UNKNOWN_TYPE, f"{self.path}:{n}: {what}: skipped", doc.get("seq")))
                continue
            play_id = doc["play_id"]
            if current is None or current.play_id != play_id:
                if current is not None:
                    done.add(current.play_id)
                    if flt.admits(current):
                        yield current
                if play_id in done:
                    self.problems.append(
                        Finding("reordered", f"{self.path}:{n}: events of play {play_id!r} after other plays'")
                    )
                current = PlayHistory(play_id, str(doc.get("company_id")), [])
            current.documents.append(doc)
        if current is not None and flt.admits(current):
            yield current
