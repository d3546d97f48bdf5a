"""Time travel: a play as it was at a moment (the engine's ``fold`` of its events up to then),
and a company's KV values at that moment as far as a store can tell.

A play's state at ``when`` is the fold of the longest prefix of its log whose events are at or
before ``when`` (the log's order is its truth; an event stamped earlier after a later one does
not reach back). A play whose first event is later had not started.

KV: the SQLite store keeps each key's latest value, its version and when it was written, and no
older values. So a key written at or before ``when`` and not since held that value then
(``known``); a key first written after ``when`` did not exist then (``absent``); a key
rewritten after ``when`` held a value this store no longer has (``unknown``): said, never guessed.
The MongoDB store keeps every version of a key with its write time until it is pruned (older
than the increment dedup window, oldest first): the newest version written by ``when`` is
``known``; none kept by then is ``absent`` when version 1 is still kept, else ``unknown``.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson

from flow8_streams.clock import parse_aware
from flow8_streams.domain.events import Event
from flow8_streams.domain.state import PlayState
from flow8_streams.engine import fold
from flow8_streams.stores.ports import KVEntry

KNOWN, ABSENT, UNKNOWN = "known", "absent", "unknown"


def prefix_at(events: Sequence[Event], when: datetime) -> list[Event]:
    """The events of a play's log up to the first one after ``when``."""
    out: list[Event] = []
    for event in events:
        if event.at > when:
            break
        out.append(event)
    return out


def state_at(events: Sequence[Event], when: datetime) -> PlayState | None:
    """The play as it was at ``when``; None if it had not started. ``EngineError`` if the
    events do not fold (a log that is not one play's history)."""
    return fold(prefix_at(events, when))


@dataclass(frozen=True, slots=True)
class KVAt:
    """A key of a company's KV store at a moment: its value there when ``state`` is ``known``."""

    company_id: str
    key: str
    state: str  # known, absent or unknown
    value: Any = None
    version: int | None = None  # the version that held it (known), or the store's latest (unknown)
    updated_at: datetime | None = None  # when the store's latest version was written
    note: str = ""

    def as_json(self) -> dict[str, Any]:
        return {
            "kv": self.key,
            "company_id": self.company_id,
            "state": self.state,
            "value": self.value if self.state == KNOWN else None,
            "version": self.version,
            "updated_at": self.updated_at,
            "note": self.note,
        }


def sqlite_kv_at(db: sqlite3.Connection, company: str, when: datetime, limit: int) -> tuple[list[KVAt], int]:
    """The company's keys (at most ``limit``, by key) at ``when`` from a flow8 SQLite db, and
    how many keys it holds in all."""
    (total,) = db.execute("SELECT count(*) FROM kv WHERE company_id = ?", (company,)).fetchone()
    rows = db.execute(
        "SELECT key, value, version, updated_at FROM kv WHERE company_id = ? ORDER BY key LIMIT ?", (company, limit)
    )
    out: list[KVAt] = []
    for key, blob, version, updated in rows:
        written = parse_aware(updated)
        if written is None:
            out.append(KVAt(company, key, UNKNOWN, version=version, note="its write time cannot be read"))
        elif written <= when:
            try:
                value = orjson.loads(blob)
            except orjson.JSONDecodeError:
                out.append(KVAt(company, key, UNKNOWN, version=version, updated_at=written, note="not JSON"))
                continue
            out.append(KVAt(company, key, KNOWN, value, version, written, "unchanged since"))
        elif version == 1:
            out.append(KVAt(company, key, ABSENT, version=None, updated_at=written, note="first written after"))
        else:
            note = f"rewritten after (version {version}); the SQLite store keeps only a key's latest value"
            out.append(KVAt(company, key, UNKNOWN, version=version, updated_at=written, note=note))
    return out, int(total)


def kv_from_versions(company: str, keys: Sequence[tuple[KVEntry, KVEntry | None, int]]) -> list[KVAt]:
    """Each key at a moment from what a versioned store keeps of it: (its newest version, its
    newest version written by then or None, the oldest version kept)."""
    out: list[KVAt] = []
    for newest, then, oldest in keys:
        if then is not None:
            note = f"version {then.version} of {newest.version}"
            out.append(KVAt(company, newest.key, KNOWN, then.value, then.version, note=note))
        elif oldest == 1:
            out.append(KVAt(company, newest.key, ABSENT, note="first written after"))
        else:
            note = f"versions before {oldest} of {newest.version} were pruned (older than the increment dedup window)"
            out.append(KVAt(company, newest.key, UNKNOWN, version=newest.version, note=note))
    return out


__all__ = ["ABSENT", "KNOWN", "UNKNOWN", "KVAt", "kv_from_versions", "prefix_at", "sqlite_kv_at", "state_at"]
