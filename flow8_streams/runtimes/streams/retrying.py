"""Calls to MongoDB that wait out an outage instead of skipping the input that needs them.

A worker has one ``StoreOutage``: every agent's calls go through it, so an outage is told
once however many calls wait in it, a line when it is first seen ("MongoDB at HOST
unreachable since HH:MM:SS UTC; projector waiting, retrying every 3 s") and one when a call
passes again ("MongoDB at HOST back after 31.2 s"), with a reminder every minute between.
``flow8_store_retries_total{store,operation}`` counts the retries, ``flow8_store_waiting{store}``
the calls waiting now, and ``/readyz`` names the outage in its failing ``mongodb`` check.

How long a call waits is the caller's rule:
- the projector and the orchestrator wait as long as MongoDB is down (``within=None``): their
  input cannot be skipped, and the message that needs the call stays unacked meanwhile (a
  crash reads it again), so the agent falls behind and loses nothing. The worker stays alive
  and not ready (``/readyz`` 503), and goes on by itself when MongoDB is back;
- a flowlet's KV call waits ``store_wait_seconds`` (``WaitingKV``); past that its attempt
  fails as the store's failure, which the engine retries by the flowlet's retry policy.
Each try is itself bounded: by the client's server selection (``SERVER_SELECTION_S`` while the
server is down) and ``FLOW8_STORE_TIMEOUT_MS`` (a server that answers no more).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

from pymongo.errors import ConnectionFailure, ServerSelectionTimeoutError
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, stop_after_delay, stop_never, wait_exponential

from flow8_streams.errors import StoreUnavailable
from flow8_streams.logs import context_for
from flow8_streams.metrics import Metrics
from flow8_streams.stores.ports import KVEntry, KVStore

log = logging.getLogger("flow8.streams")
T = TypeVar("T")
SERVER_SELECTION_S = 2.0  # a worker's try finds MongoDB down within this (its client's serverSelectionTimeoutMS)
PAUSE_S = 1.0  # the longest pause between two tries of a call (from 0.1 s, doubling)
REMIND_EVERY_S = 60.0  # while an outage lasts, a line this often says it still does
# The outage is over when calls pass this long with no new failure: a server that stops cleanly
# refuses new connections a moment before it drops the open ones, so a call can pass in between
SETTLE_S = 5.0


def unreachable(exc: BaseException) -> bool:
    """The store could not be reached at all (not: it answered with an error)."""
    return isinstance(exc.__cause__, ConnectionFailure)


def never_sent(exc: BaseException) -> bool:
    """No server was selected, so the operation never left: trying it again cannot repeat it.
    (pymongo raises the first error, not this one, when the retry of a sent write finds none.)"""
    return isinstance(exc.__cause__, ServerSelectionTimeoutError)


class StoreOutage:
    """What a worker knows of its store being down: since when, what waits for it, said once."""

    def __init__(
        self,
        where: str,
        metrics: Metrics,
        *,
        store: str = "mongodb",
        name: str = "MongoDB",
        pause_s: float = PAUSE_S,
        try_s: float = SERVER_SELECTION_S,
        settle_s: float = SETTLE_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.where = where  # hosts only: never a URI, which may carry a password
        self.metrics = metrics
        self.store = store
        self.name = name
        self.pause_s = pause_s
        self.retry_every_s = try_s + pause_s  # what a person is told: a try, then a pause
        self.settle_s = settle_s
        self.clock = clock
        self.since: float | None = None  # monotonic time of the first failure of this outage
        self.since_utc: datetime | None = None
        self.retries = 0  # of this outage
        self.waiting = 0  # calls waiting now
        self._said_at = 0.0
        self._last_success = float("-inf")  # when a call last passed: a try begun before it tells nothing new
        self._back_at: float | None = None  # when a call passed again, while it settles
        self._settling: asyncio.TimerHandle | None = None  # says the outage is over, unless a call fails first
        self.over = asyncio.Event()  # set when an outage was said to be over (for tests), cleared at the next

    @staticmethod
    def _say(message: str, *args: object) -> None:
        """A line about the store, not about the play whose call noticed: without its play context."""
        context_for().run(log.warning, message, *args)

    def note(self) -> dict[str, Any] | None:
        """For ``/readyz``: the outage under way, if any."""
        if self.since_utc is None or self.since is None:
            return None
        return {
            "unreachable_since": self.since_utc.isoformat(timespec="seconds"),
            "seconds": round(self.clock() - self.since, 1),
            "calls_waiting": self.waiting,
        }

    def failed(self, waiter: str, operation: str, exc: BaseException, tried_at: float) -> None:
        """A try of ``waiter``'s ``operation`` failed with ``exc``; it is tried again."""
        self.metrics.store_retries.labels(self.store, operation).inc()
        now = self.clock()
        if tried_at < self._last_success:
            return  # began before the store came back: no news
        if self._settling is not None:  # it failed again before it settled: the same outage goes on
            self._settling.cancel()
            self._settling = self._back_at = None
        elif self.since is None:
            self.since, self.since_utc, self.retries, self._said_at = now, datetime.now(UTC), 0, now
            self.over.clear()
            state = "unreachable" if unreachable(exc) else "failing"
            self._say(
                "%s at %s %s since %s UTC; %s waiting, retrying every %g s (%s)",
                self.name,
                self.where,
                state,
                self.since_utc.strftime("%H:%M:%S"),
                waiter,
                self.retry_every_s,
                exc,
            )
        elif now - self._said_at >= REMIND_EVERY_S:
            self._said_at = now
            self._say(
                "%s at %s still down after %.0f s (%d calls waiting, %d retries)",
                self.name,
                self.where,
                now - self.since,
                self.waiting,
                self.retries,
            )
        self.retries += 1

    def passed(self) -> None:
        """A call that had failed passed: the outage, if there was one, is over once it settled."""
        now = self.clock()
        self._last_success = now
        if self.since is None or self._settling is not None:
            return
        self._back_at = now
        if self.settle_s > 0:
            self._settling = asyncio.get_running_loop().call_later(self.settle_s, self._settled)
        else:
            self._settled()

    def _settled(self) -> None:
        if self.since is not None and self._back_at is not None:
            self._say(
                "%s at %s back after %.1f s (%d retries while it was down)",
                self.name,
                self.where,
                self._back_at - self.since,
                self.retries,
            )
        self.since = self.since_utc = self._settling = self._back_at = None
        self.over.set()

    async def call(
        self,
        waiter: str,
        operation: str,
        call: Callable[[], Awaitable[T]],
        *,
        within: float | None = None,
        retry_if: Callable[[BaseException], bool] = lambda exc: True,
    ) -> T:
        """``call()``, tried again while it raises ``StoreUnavailable`` (and ``retry_if`` of it):
        for ``within`` seconds at most (None: as long as it takes), then its error is raised."""
        tried_at = self.clock()
        failures = 0

        def before_sleep(state: RetryCallState) -> None:
            nonlocal failures
            exc = state.outcome.exception() if state.outcome else None
            if exc is not None:
                failures += 1
                self.failed(waiter, operation, exc, tried_at)

        self.waiting += 1
        self.metrics.store_waiting.labels(self.store).inc()
        try:
            async for attempt in AsyncRetrying(
                retry=retry_if_exception(lambda exc: isinstance(exc, StoreUnavailable) and retry_if(exc)),
                wait=wait_exponential(multiplier=0.1, max=self.pause_s),
                stop=stop_never if within is None else stop_after_delay(within),
                before_sleep=before_sleep,
                reraise=True,
            ):
                with attempt:
                    tried_at = self.clock()
                    result = await call()
        finally:
            self.waiting -= 1
            self.metrics.store_waiting.labels(self.store).dec()
        if failures:  # a call that never failed may not have reached the store (a cache hit): it tells nothing
            self.passed()
        return result


class WaitingKV:
    """The KV store of a worker's flowlets: each call waits out an outage for ``within`` seconds
    (``store_wait_seconds``), then fails the attempt (the engine retries the flowlet).

    A call is tried again only where a repeat does no harm: reads; ``incr``, which counts an
    operation id once; ``set``, whose repeat writes the same value again. A ``cas`` only when it
    was never sent: a repeat of one that landed would find its own version and say it lost."""

    def __init__(self, kv: KVStore, outage: StoreOutage, within: float) -> None:
        self.kv = kv
        self.outage = outage
        self.within = within

    async def _call(self, operation: str, call: Callable[[], Awaitable[T]], **options: Any) -> T:
        return await self.outage.call("flowlets", operation, call, within=self.within, **options)

    async def get(self, company_id: str, key: str) -> KVEntry | None:
        return await self._call("kv_get", lambda: self.kv.get(company_id, key))

    async def set(self, company_id: str, key: str, value: Any) -> KVEntry:
        return await self._call("kv_set", lambda: self.kv.set(company_id, key, value))

    async def cas(self, company_id: str, key: str, value: Any, expected_version: int) -> KVEntry | None:
        return await self._call(
            "kv_cas", lambda: self.kv.cas(company_id, key, value, expected_version), retry_if=never_sent
        )

    async def incr(self, company_id: str, key: str, by: float, op_id: str) -> KVEntry:
        return await self._call("kv_incr", lambda: self.kv.incr(company_id, key, by, op_id))

    async def keys(self, company_id: str, prefix: str = "", limit: int = 50, after: str | None = None) -> list[str]:
        return await self._call("kv_keys", lambda: self.kv.keys(company_id, prefix, limit, after))
