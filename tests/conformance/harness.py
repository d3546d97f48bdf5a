"""What the conformance scenarios need from a runtime, and its local implementation.

``Harness`` is the whole surface the scenarios touch: start, run, cancel, wait,
read a play's events, await one event, read the KV store and the projection, and
crash-restart the runtime. A runtime joins the suite by implementing it (the
streams runtime over Kafka + MongoDB will add ``StreamsHarness``) and subclassing
``RuntimeScenarios`` with a ``harness`` fixture.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from flow8_streams.domain.events import Event
from flow8_streams.domain.flow import FlowDefinition
from flow8_streams.domain.state import PlayState
from flow8_streams.modules.registry import ModuleRegistry
from flow8_streams.runtimes.local import LocalRuntime
from flow8_streams.stores.sqlite import SqliteStore

EventPredicate = Callable[[Event], bool]

# A guard, not a synchronisation: an awaited event that never comes fails the test
# with a message instead of hanging until the global pytest timeout.
EVENT_TIMEOUT_S = 20.0


class Harness(Protocol):
    async def start(self, flow: FlowDefinition, input: Any = None, *, company_id: str, play_id: str) -> None:
        """Send StartPlay; returns once the command is accepted, not when the play ends."""

    async def run(self, flow: FlowDefinition, input: Any = None, *, company_id: str, play_id: str) -> PlayState:
        """Start the play and return its final state."""

    async def cancel(self, play_id: str, company_id: str) -> None:
        """Send CancelPlay."""

    async def wait(self, play_id: str) -> PlayState:
        """The play's final state, once it has one."""

    async def events(self, play_id: str) -> list[Event]:
        """Every event of the play recorded so far, in ``seq`` order."""

    async def wait_for_event(self, play_id: str, predicate: EventPredicate) -> Event:
        """The first event of the play matching ``predicate``: recorded already, or awaited."""

    async def projection(self, company_id: str, play_id: str) -> PlayState | None:
        """The stored projection of a finished play, as its readers see it.

        An eventually consistent projection (the streams runtime's MongoDB) must be
        awaited up to the play's last ``seq`` before it is returned.
        """

    async def kv_get(self, company_id: str, key: str) -> Any:
        """The value under ``key`` (None when absent)."""

    async def restart(self) -> None:
        """Crash the runtime where it stands and start a fresh one on the same storage."""

    async def close(self) -> None: ...


class LocalHarness:
    """``LocalRuntime`` over a ``SqliteStore`` in a file of its own."""

    def __init__(self, db_path: Path) -> None:
        self.db_path = db_path
        self.store = SqliteStore(db_path)
        self.runtime = LocalRuntime(self.store, ModuleRegistry.default(entry_points=False))

    async def open(self) -> LocalHarness:
        await self.runtime.__aenter__()
        return self

    async def close(self) -> None:
        await self.runtime.close()
        self.store.close()

    async def start(self, flow: FlowDefinition, input: Any = None, *, company_id: str, play_id: str) -> None:
        await self.runtime.start(flow, input, company_id=company_id, play_id=play_id)

    async def run(self, flow: FlowDefinition, input: Any = None, *, company_id: str, play_id: str) -> PlayState:
        return await self.runtime.run(flow, input, company_id=company_id, play_id=play_id)

    async def cancel(self, play_id: str, company_id: str) -> None:
        await self.runtime.cancel(play_id, company_id)

    async def wait(self, play_id: str) -> PlayState:
        return await self.runtime.wait(play_id)

    async def events(self, play_id: str) -> list[Event]:
        return await self.store.log.read(play_id)

    async def wait_for_event(self, play_id: str, predicate: EventPredicate) -> Event:
        found: asyncio.Future[Event] = asyncio.get_running_loop().create_future()

        def listener(batch: Any) -> None:
            # Runs inside the orchestrator: it must never raise.
            if found.done():
                return
            for event in batch:
                if event.play_id == play_id and predicate(event):
                    found.set_result(event)
                    return

        # Subscribe before reading the log, so an event committed in between is not missed.
        unsubscribe = self.runtime.subscribe(listener)
        try:
            for event in await self.events(play_id):
                if predicate(event):
                    return event
            async with asyncio.timeout(EVENT_TIMEOUT_S):
                return await found
        except TimeoutError:
            raise AssertionError(f"play {play_id}: no matching event within {EVENT_TIMEOUT_S} s") from None
        finally:
            unsubscribe()

    async def projection(self, company_id: str, play_id: str) -> PlayState | None:
        return await self.store.plays.get(company_id, play_id)

    async def kv_get(self, company_id: str, key: str) -> Any:
        entry = await self.store.kv.get(company_id, key)
        return None if entry is None else entry.value

    async def restart(self) -> None:
        # close() is as abrupt as a crash for what is recorded: it cancels module
        # tasks and drops the in-memory inbox (results not yet committed) and
        # writes nothing. Then a fresh process-equivalent opens the same file.
        await self.close()
        self.store = SqliteStore(self.db_path)
        self.runtime = LocalRuntime(self.store, ModuleRegistry.default(entry_points=False))
        await self.open()
        await self.runtime.resume_unfinished()
