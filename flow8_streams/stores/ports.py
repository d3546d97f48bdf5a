"""The storage interfaces every runtime codes against. Small on purpose.

Adapters: ``stores.sqlite`` (the embedded default, complete) and ``stores.mongo``.
One conformance suite (``tests/stores``) runs against each.
"""

from __future__ import annotations

import builtins
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from flow8_streams.domain.events import Event
from flow8_streams.domain.flow import FlowDefinition
from flow8_streams.domain.state import PlayState
from flow8_streams.engine.projection import ApplyResult


@dataclass(frozen=True, slots=True)
class KVEntry:
    key: str
    value: Any
    version: int


@dataclass(frozen=True, slots=True)
class PlayPage:
    """What ``plays.list`` narrows to besides company and status: a flow, a start-time range
    (``since`` inclusive, ``until`` exclusive) and, to page, the ``(started_at, play_id)`` of the
    last play of the page before (plays come newest first, ties by play id descending)."""

    flow: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    after: tuple[datetime, str] | None = None

    def admits(self, state: PlayState) -> bool:
        return self.admits_play(state.flow.name, state.started_at, state.play_id)

    def admits_play(self, flow: str, started_at: datetime, play_id: str) -> bool:
        if self.flow is not None and flow != self.flow:
            return False
        if self.since is not None and started_at < self.since:
            return False
        if self.until is not None and started_at >= self.until:
            return False
        return self.after is None or (started_at, play_id) < self.after


@dataclass(frozen=True, slots=True)
class ApiKey:
    """An HTTP API key's record; the key itself is never stored, only its SHA-256 (``digest``)."""

    key_id: str
    company_id: str
    role: str
    digest: bytes
    created_at: datetime
    revoked_at: datetime | None = None


class EventLog(Protocol):
    async def append(self, events: Sequence[Event]) -> None:
        """Store events; an event whose ``(play_id, seq)`` is stored already is skipped."""

    async def read(self, play_id: str, after_seq: int = 0, *, company_id: str | None = None) -> list[Event]:
        """One play's events in ``seq`` order; with ``company_id``, none unless the play is that
        company's (what a tenant-facing reader passes)."""


class PlayProjection(Protocol):
    async def apply(self, events: Sequence[Event], *, absent: Collection[str] = ()) -> ApplyResult:
        """Fold a batch of events (any order, redelivered or not, several plays) into the
        plays by ``engine.projection``'s rules, and write each play's latest state once,
        guarded by ``seq``: a write whose play is stored at a higher ``seq`` changes nothing,
        whoever wrote it and whenever it lands. ``absent``: plays the caller listed and found
        missing just before (a rebuild), which an adapter may then leave unread."""

    async def save(self, states: Sequence[PlayState]) -> None:
        """Upsert each play; a state with a lower ``seq`` than the stored one is ignored."""

    async def get(self, company_id: str | None, play_id: str) -> PlayState | None: ...

    async def list(
        self, company_id: str | None = None, status: str | None = None, limit: int = 50, page: PlayPage | None = None
    ) -> builtins.list[PlayState]:
        """Newest first by ``started_at``, ties by ``play_id`` descending."""


class KVStore(Protocol):
    async def get(self, company_id: str, key: str) -> KVEntry | None: ...

    async def set(self, company_id: str, key: str, value: Any) -> KVEntry:
        """Last write wins; every write bumps ``version``."""

    async def cas(self, company_id: str, key: str, value: Any, expected_version: int) -> KVEntry | None:
        """Write only if the stored version is ``expected_version`` (0: absent); None if not."""

    async def incr(self, company_id: str, key: str, by: float, op_id: str) -> KVEntry:
        """Atomic counter; an ``op_id`` seen before returns its first result, uncounted."""

    async def keys(self, company_id: str, prefix: str = "", limit: int = 50, after: str | None = None) -> list[str]:
        """The company's keys that start with ``prefix``, ascending by code point: at most
        ``limit``, past ``after``. A range read of the store's index, never a scan."""


class FlowCatalog(Protocol):
    async def put(self, company_id: str, flow: FlowDefinition) -> FlowDefinition: ...

    async def get(self, company_id: str, name: str, version: int | None = None) -> FlowDefinition | None:
        """A version of a flow; the latest when ``version`` is None."""

    async def versions(self, company_id: str, name: str) -> builtins.list[int]:
        """The stored versions of a flow, ascending (empty: no such flow)."""

    async def names(self, company_id: str, limit: int = 500, after: str | None = None) -> builtins.list[str]:
        """The company's flow names, ascending, each once: at most ``limit``, past ``after``."""


class ApiKeys(Protocol):
    async def add(self, key: ApiKey) -> None: ...

    async def get(self, key_id: str, company_id: str | None = None) -> ApiKey | None:
        """A key, revoked or not; with ``company_id``, none unless it is that company's."""

    async def list(self, company_id: str | None = None) -> builtins.list[ApiKey]:
        """Oldest first."""

    async def revoke(self, key_id: str, at: datetime, company_id: str | None = None) -> ApiKey | None:
        """Mark a key revoked (a key revoked before keeps its first date); None if there is none."""


class RetentionPort(Protocol):
    """What retention needs of a store: the finished plays past their time, and their deletion."""

    async def companies(self) -> builtins.list[str]:
        """Every company with a play in the projection, ascending."""

    async def expired(self, company_id: str, ended_before: datetime, limit: int) -> builtins.list[str]:
        """Ids of the company's FINISHED plays that ended before ``ended_before``, oldest start
        first, at most ``limit``. A running play is never listed."""

    async def prune(self, company_id: str, play_id: str, last_seq: int) -> bool:
        """Delete a finished play's events and projection, idempotently; nothing when its log
        has grown past ``last_seq`` (the head archived) or it is running. True: it is gone."""


class Stores(Protocol):
    """One deployment's stores: the SQLite file of the embedded runtime, or MongoDB."""

    @property
    def log(self) -> EventLog: ...

    @property
    def plays(self) -> PlayProjection: ...

    @property
    def kv(self) -> KVStore: ...

    @property
    def flows(self) -> FlowCatalog: ...

    @property
    def keys(self) -> ApiKeys: ...
