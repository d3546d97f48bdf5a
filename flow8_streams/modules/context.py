"""What a module sees: its input, the company's KV store, a logger, and who it is."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from flow8_streams.stores.ports import KVEntry, KVStore


class KV:
    """The company's KV store, as one flowlet sees it.

    ``incr`` carries an operation id made of the play, the flowlet and the call's
    position within the flowlet, so a re-run of the flowlet (a redelivered task, a
    retry after a timeout) never counts twice.
    """

    def __init__(self, store: KVStore, company_id: str, op_prefix: str) -> None:
        self._store = store
        self._company = company_id
        self._prefix = op_prefix
        self._calls = 0

    async def get(self, key: str) -> Any:
        entry = await self._store.get(self._company, key)
        return None if entry is None else entry.value

    async def entry(self, key: str) -> KVEntry | None:
        return await self._store.get(self._company, key)

    async def set(self, key: str, value: Any) -> KVEntry:
        return await self._store.set(self._company, key, value)

    async def cas(self, key: str, value: Any, expected_version: int) -> KVEntry | None:
        return await self._store.cas(self._company, key, value, expected_version)

    async def incr(self, key: str, by: float = 1, op_id: str | None = None) -> Any:
        self._calls += 1
        op = op_id or f"{self._prefix}/{self._calls}"
        entry = await self._store.incr(self._company, key, by, op)
        return entry.value


@dataclass
class ModuleContext:
    play_id: str
    company_id: str
    flowlet: str
    attempt: int
    input: Any
    kv: KV
    log: logging.Logger = field(default_factory=lambda: logging.getLogger("flow8.module"))
    # On a channel: the token flow8 minted for this attempt, to hand to an outside service
    # that completes it (see ``Pending``); None elsewhere. A secret: never log or return it.
    completion_token: str | None = field(default=None, repr=False)
