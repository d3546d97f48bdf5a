"""The storage interfaces every runtime codes against. Small on purpose.

Adapters: ``stores.sqlite`` (the embedded default, complete) and ``stores.mongo``.
One conformance suite (``tests/stores``) runs against each.
"""

from __future__ import annotations

import builtins
from collections.abc import Sequence
from dataclasses import dataclass
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


class EventLog(Protocol):
    async def append(self, events: Sequence[Event]) -> None:
        """Store events; an event whose ``(play_id, seq)`` is stored already is skipped."""

    async def read(self, play_id: str, after_seq: int = 0, *, company_id: str | None = None) -> list[Event]:
        """One play's events in ``seq`` order; with ``company_id``, none unless the play is that
        company's (what a tenant-facing reader passes)."""


class PlayProjection(Protocol):
    async def apply(self, events: Sequence[Event]) -> ApplyResult:
        """Fold a batch of events (any order, redelivered or not, several plays) into the
        plays by ``engine.projection``'s rules, and write each play's latest state once,
        guarded by ``seq``: a write whose play is stored at a higher ``seq`` changes nothing,
        whoever wrote it and whenever it lands."""

    async def save(self, states: Sequence[PlayState]) -> None:
        """Upsert each play; a state with a lower ``seq`` than the stored one is ignored."""

    async def get(self, company_id: str | None, play_id: str) -> PlayState | None: ...

    async def list(
        self, company_id: str | None = None, status: str | None = None, limit: int = 50
    ) -> builtins.list[PlayState]: ...


class KVStore(Protocol):
    async def get(self, company_id: str, key: str) -> KVEntry | None: ...

    async def set(self, company_id: str, key: str, value: Any) -> KVEntry:
        """Last write wins; every write bumps ``version``."""

    async def cas(self, company_id: str, key: str, value: Any, expected_version: int) -> KVEntry | None:
        """Write only if the stored version is ``expected_version`` (0: absent); None if not."""

    async def incr(self, company_id: str, key: str, by: float, op_id: str) -> KVEntry:
        """Atomic counter; an ``op_id`` seen before returns its first result, uncounted."""


class FlowCatalog(Protocol):
    async def put(self, company_id: str, flow: FlowDefinition) -> FlowDefinition: ...

    async def get(self, company_id: str, name: str, version: int | None = None) -> FlowDefinition | None:
        """A version of a flow; the latest when ``version`` is None."""


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
