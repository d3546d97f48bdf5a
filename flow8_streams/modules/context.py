"""What a module sees: its input, the company's KV store, a logger, and who it is."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any, TypeVar

from flow8_streams.errors import ModuleFailed
from flow8_streams.stores.ports import KVEntry, KVStore

T = TypeVar("T")


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


class AttemptOver(ModuleFailed):
    """A stuck module's KV call: its attempt ended (timed out or cancelled) while it ran."""


class SyncKV:
    """The KV of a plain (not async) module, which runs on a thread: the same calls as
    ``KV``, without ``await``. Each call runs on the event loop that owns the store and
    the thread waits for it. Once the attempt is over (``end()``, when its flowlet timed
    out or was cancelled) every call raises ``AttemptOver`` and writes nothing, so a
    thread that runs on past its timeout changes no KV value.
    """

    def __init__(self, kv: KV, loop: asyncio.AbstractEventLoop, what: str) -> None:
        self._kv = kv
        self._loop = loop
        self._what = what
        self._over = threading.Event()

    def end(self) -> None:
        self._over.set()

    def get(self, key: str) -> Any:
        return self._run(self._kv.get(key))

    def entry(self, key: str) -> KVEntry | None:
        return self._run(self._kv.entry(key))

    def set(self, key: str, value: Any) -> KVEntry:
        return self._run(self._kv.set(key, value))

    def cas(self, key: str, value: Any, expected_version: int) -> KVEntry | None:
        return self._run(self._kv.cas(key, value, expected_version))

    def incr(self, key: str, by: float = 1, op_id: str | None = None) -> Any:
        return self._run(self._kv.incr(key, by, op_id))

    def _run(self, call: Coroutine[Any, Any, T]) -> T:
        try:
            on_loop = asyncio.get_running_loop() is self._loop
        except RuntimeError:
            on_loop = False
        if on_loop:  # waiting here for the loop would block it for good
            call.close()
            raise InlineKV(self._what).refusal()

        async def unless_over() -> T:
            if self._over.is_set():  # checked on the loop too: the attempt may end during the hop
                call.close()
                raise AttemptOver(f"{self._what}: the attempt is over (timed out or cancelled); KV call refused")
            return await call

        if self._over.is_set():
            call.close()
            raise AttemptOver(f"{self._what}: the attempt is over (timed out or cancelled); KV call refused")
        return asyncio.run_coroutine_threadsafe(unless_over(), self._loop).result()


class InlineKV:
    """The KV of an inline module, which runs on the event loop, where a wait for the store
    would block it for good: every call fails the attempt, saying so."""

    def __init__(self, what: str) -> None:
        self._what = what

    def refusal(self) -> ModuleFailed:
        return ModuleFailed(
            f"{self._what}: a module that runs on the event loop (inline) cannot use the KV; "
            "make it async or drop flow8_inline",
            retryable=False,
        )

    def get(self, key: str) -> Any:
        raise self.refusal()

    def entry(self, key: str) -> KVEntry | None:
        raise self.refusal()

    def set(self, key: str, value: Any) -> KVEntry:
        raise self.refusal()

    def cas(self, key: str, value: Any, expected_version: int) -> KVEntry | None:
        raise self.refusal()

    def incr(self, key: str, by: float = 1, op_id: str | None = None) -> Any:
        raise self.refusal()


@dataclass
class ModuleContext:
    play_id: str
    company_id: str
    flowlet: str
    attempt: int
    input: Any
    kv: KV | SyncKV | InlineKV  # SyncKV for a plain (not async) module, InlineKV for an inline one
    log: logging.Logger = field(default_factory=lambda: logging.getLogger("flow8.module"))
    # On a channel: the token flow8 minted for this attempt, to hand to an outside service
    # that completes it (see ``Pending``); None elsewhere. A secret: never log or return it.
    completion_token: str | None = field(default=None, repr=False)
