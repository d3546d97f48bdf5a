"""What the HTTP routes run on: one small protocol, two backends.

- ``EmbeddedBackend``: the SQLite file and a ``LocalRuntime`` in the server's process; plays
  started over HTTP run here, and those left unfinished resume when it starts.
- ``StreamsBackend``: commands produced to Kafka as ``flow8 produce`` does, reads from MongoDB;
  it holds no state, so any number of instances answer alike.

Reads go through the ``Stores`` port (``backend.stores``); only starting, cancelling, waiting,
reading one play, its events and history, and readiness differ: the streams backend answers a
finished play from the results it reads off Kafka (``http.results``) when it has it, and a
play's events from the events topic (``http.history``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from flow8_streams.audit.checkpoints import SignedCheckpoint
from flow8_streams.audit.verify import Finding, PlayHistory
from flow8_streams.domain.events import Event, event_adapter
from flow8_streams.domain.flow import FlowDefinition
from flow8_streams.domain.limits import Limits
from flow8_streams.domain.state import PlayState
from flow8_streams.errors import Flow8Error
from flow8_streams.modules.registry import ModuleRegistry
from flow8_streams.stores.ports import PlayPage, Stores

if TYPE_CHECKING:
    from flow8_streams.cache import SharedCache
    from flow8_streams.http.history import PlayHistories
    from flow8_streams.http.results import PlayResults
    from flow8_streams.metrics import Metrics
    from flow8_streams.runtimes.local import LocalRuntime
    from flow8_streams.runtimes.streams.client import CommandProducer
    from flow8_streams.settings import Settings
    from flow8_streams.stores.mongo import MongoStore

log = logging.getLogger("flow8.http")
TERMINAL = frozenset({"PlayCompleted", "PlayFailed", "PlayCancelled"})
START_SECONDS = 10.0  # an embedded start not recorded by then was refused (the orchestrator logs why)
STREAMS_POLL_SECONDS = (0.02, 0.2)  # a large play's wait reads the projection this often, backing off to the second
STREAMS_COMING_SECONDS = 2.0  # a play started here, not seen yet, is looked for this long before a 404
STREAMS_LOOK_SECONDS = 0.25  # a streams wait whose result has not come by then looks in the projection once


class Play(Protocol):
    """A play as the API shows it: a ``PlayState``, or a finished play from its result."""

    @property
    def finished(self) -> bool: ...

    def public(self) -> dict[str, Any]: ...


def _newest_first(play: Play) -> tuple[Any, str]:
    """The order of ``plays.list``: by start, ties by play id (both descending)."""
    shown = play.public()
    return shown["started_at"], shown["play_id"]


class PlayBusy(Flow8Error):
    """Another flow8 process drives the play (``flow8 run``, ``plays resume``...): HTTP 409."""

    reason = "play_busy"


class Backend(Protocol):
    name: str
    stores: Stores
    shared_cache: SharedCache | None  # the cache shared between instances (cache.backend: redis), if any
    registry: ModuleRegistry
    limits: Limits

    async def start(self, company_id: str, flow: FlowDefinition, input: Any, play_id: str) -> None:
        """Ask for a play to start (a play id that exists is left as it is)."""

    async def cancel(self, company_id: str, play_id: str) -> None:
        """Ask for a running play of ``company_id`` to be cancelled."""

    async def play(self, company_id: str | None, play_id: str) -> Play | None:
        """``company_id``'s play ``play_id`` (None: no such play in that company; ``company_id``
        None: of any company)."""

    async def plays(self, company_id: str, status: str | None, limit: int, page: PlayPage) -> Sequence[Play]:
        """A page of ``company_id``'s plays, newest first (``PlayProjection.list``)."""

    async def wait(self, company_id: str, play_id: str, timeout: float) -> Play | None:
        """The play once finished, or as it stands when ``timeout`` seconds pass (None: no such play)."""

    async def events(self, company_id: str, play: Play, after_seq: int = 0) -> Sequence[Event]:
        """``play``'s events after ``after_seq``, in seq order (``play``: as ``play`` gave it)."""

    async def history(self, company_id: str, play: Play) -> PlayHistory:
        """``play``'s history as an audit reads it: its events' documents, with its projection
        where the backend compares one."""

    async def checkpoints(self, company_id: str) -> list[SignedCheckpoint | Finding]:
        """The signed checkpoints that may name ``company_id``'s plays (others' are left out by the check)."""

    async def ready(self) -> str | None:
        """None when requests can be served, else why not."""


class EmbeddedBackend:
    """Plays of one SQLite file, driven in this process. Like ``flow8 run``, it holds each play's
    ``play_lock`` while it drives it (from its start, or its resume, to its end), so no other
    flow8 process writes that play's events meanwhile; one it cannot lock is refused (409)."""

    name = "embedded"
    shared_cache: SharedCache | None = None  # one process: nothing to share with

    def __init__(self, runtime: LocalRuntime, db: Path) -> None:
        self.runtime = runtime
        self.db = db
        self.stores: Stores = runtime.store
        self.registry = runtime.registry
        self.limits = runtime.limits
        self._locks: dict[str, contextlib.ExitStack] = {}
        runtime.subscribe(self._release_ended)

    @classmethod
    @contextlib.asynccontextmanager
    async def open(cls, db: Path, settings: Settings, modules: Sequence[str] = ()) -> AsyncIterator[EmbeddedBackend]:
        from flow8_streams.runtimes.local import LocalRuntime

        async with LocalRuntime.open(db, modules=modules, settings=settings) as runtime:
            backend = cls(runtime, db)
            try:
                for _, play_id in runtime.store.plays.unfinished():
                    backend._hold(play_id)  # another process drives it: refused before anything runs
                resumed = await runtime.resume_unfinished()
                if resumed:
                    log.info("resumed %d unfinished plays of %s", len(resumed), db)
                yield backend
            finally:
                for stack in backend._locks.values():
                    stack.close()

    def _hold(self, play_id: str) -> None:
        """Take ``play_id``'s lock unless held; ``PlayBusy`` if another process holds it."""
        from flow8_streams.runtimes.local import play_lock

        if play_id in self._locks:
            return
        stack = contextlib.ExitStack()
        try:
            stack.enter_context(play_lock(self.db, play_id))
        except Flow8Error as exc:
            raise PlayBusy(str(exc)) from None
        self._locks[play_id] = stack

    def _release(self, play_id: str) -> None:
        stack = self._locks.pop(play_id, None)
        if stack is not None:
            stack.close()

    def _release_ended(self, events: Sequence[Event]) -> None:
        for event in events:
            if event.type in TERMINAL:
                self._release(event.play_id)

    async def start(self, company_id: str, flow: FlowDefinition, input: Any, play_id: str) -> None:
        """Returns once the play is recorded, so that its Location answers at once."""
        changed, unsubscribe = self._watch(play_id)
        self._hold(play_id)
        try:
            await self.runtime.start(flow, input, company_id=company_id, play_id=play_id)
            async with asyncio.timeout(START_SECONDS):
                while True:
                    changed.clear()
                    if await self.stores.plays.get(None, play_id) is not None:
                        return
                    await changed.wait()
        except BaseException as exc:
            if await self.stores.plays.get(None, play_id) is None:
                self._release(play_id)  # refused before it was recorded: nothing of it to drive
            if isinstance(exc, TimeoutError):
                raise Flow8Error(f"play {play_id} was not recorded within {START_SECONDS:g}s (see the log)") from None
            raise
        finally:
            unsubscribe()

    async def cancel(self, company_id: str, play_id: str) -> None:
        self._hold(play_id)
        await self.runtime.cancel(play_id, company_id, reason="cancelled over the HTTP API")

    def _watch(self, play_id: str) -> tuple[asyncio.Event, Callable[[], None]]:
        """An event set by each committed batch holding an event of ``play_id``, and its unsubscribe."""
        changed = asyncio.Event()

        def listener(events: Sequence[Event]) -> None:
            if any(e.play_id == play_id for e in events):
                changed.set()

        return changed, self.runtime.subscribe(listener)

    async def play(self, company_id: str | None, play_id: str) -> Play | None:
        return await self.stores.plays.get(company_id, play_id)

    async def plays(self, company_id: str, status: str | None, limit: int, page: PlayPage) -> Sequence[Play]:
        return await self.stores.plays.list(company_id, status, limit, page)

    async def wait(self, company_id: str, play_id: str, timeout: float) -> PlayState | None:
        changed, unsubscribe = self._watch(play_id)
        try:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    while True:
                        changed.clear()
                        state = await self.stores.plays.get(company_id, play_id)
                        if state is None or state.finished:
                            return state
                        await changed.wait()
            return await self.stores.plays.get(company_id, play_id)
        finally:
            unsubscribe()

    async def events(self, company_id: str, play: Play, after_seq: int = 0) -> Sequence[Event]:
        return await self.stores.log.read(play.public()["play_id"], after_seq, company_id=company_id)

    async def history(self, company_id: str, play: Play) -> PlayHistory:
        """The log and the projection of the SQLite file (as ``StoreSource`` reads them)."""
        play_id = play.public()["play_id"]
        state = await self.stores.plays.get(company_id, play_id)
        events = await self.stores.log.read(play_id, company_id=company_id)
        docs = [e.model_dump(mode="json") for e in events]
        return PlayHistory(play_id, company_id, docs, projection=state, has_projection=True)

    async def checkpoints(self, company_id: str) -> list[SignedCheckpoint | Finding]:
        """The db's ``audit_checkpoints`` table and ``DB.checkpoints.jsonl`` beside it, read-only."""
        from flow8_streams.audit.sources import SqliteSource

        def read() -> list[SignedCheckpoint | Finding]:
            source = SqliteSource(self.db)
            try:
                return list(source.checkpoints())
            finally:
                source.close()

        return await asyncio.to_thread(read)

    async def ready(self) -> str | None:
        try:
            self.runtime._raise_if_dead()
        except Exception as exc:
            return str(exc)
        return None


class StreamsBackend:
    name = "streams"

    def __init__(
        self,
        store: MongoStore,
        producer: CommandProducer,
        registry: ModuleRegistry,
        limits: Limits,
        results: PlayResults,
        reader: asyncio.Task[None],
        histories: PlayHistories,
    ) -> None:
        self.mongo = store
        self.stores: Stores = store
        self.shared_cache = store.shared_cache
        self.producer = producer
        self.registry = registry
        self.limits = limits
        self.results = results
        self.reader = reader  # reads flow8.play-results into ``results``; done only if it failed
        self.histories = histories  # plays' events, read off the events topic

    @classmethod
    @contextlib.asynccontextmanager
    async def open(
        cls, settings: Settings, modules: Sequence[str] = (), metrics: Metrics | None = None
    ) -> AsyncIterator[StreamsBackend]:
        from flow8_streams.extras import require_streams

        require_streams("flow8 serve --streams")
        from flow8_streams.audit.kafka import Consumers
        from flow8_streams.cache import shared_flow_cache
        from flow8_streams.http.history import PlayHistories
        from flow8_streams.http.results import PlayResults, reading
        from flow8_streams.metrics import Metrics
        from flow8_streams.runtimes.streams.admin import ensure_topics
        from flow8_streams.runtimes.streams.client import CommandProducer
        from flow8_streams.stores.mongo import MongoStore

        await ensure_topics(settings)
        metrics = metrics or Metrics()
        store = MongoStore(
            settings.mongodb_uri,
            settings.mongodb_database,
            flow_cache_max=settings.cache.flows.max_entries,
            **shared_flow_cache(settings, metrics),
            timeout_ms=settings.store_timeout_ms,
        )
        http = settings.http
        results = PlayResults(http.results_max_entries, http.results_ttl_seconds, metrics)
        consumers = Consumers(settings, http.history_consumers)
        try:
            await store.open()
            async with CommandProducer(settings) as producer, reading(settings, results) as reader:
                registry = ModuleRegistry.default(list(modules))
                histories = PlayHistories(settings, consumers, metrics)
                try:
                    yield cls(store, producer, registry, settings.limits, results, reader, histories)
                finally:
                    await histories.close()
        finally:
            await consumers.close()
            await store.close()

    async def start(self, company_id: str, flow: FlowDefinition, input: Any, play_id: str) -> None:
        from flow8_streams.domain.messages import StartPlay

        command = StartPlay(
            company_id=company_id, flow=flow.name, flow_version=flow.version, play_id=play_id, input=input
        )
        self.results.starting(company_id, play_id)  # before the broker has it: its result may come at once
        await (await self.producer.enqueue(command))

    async def cancel(self, company_id: str, play_id: str) -> None:
        from flow8_streams.domain.messages import CancelPlay

        command = CancelPlay(company_id=company_id, play_id=play_id, reason="cancelled over the HTTP API")
        await (await self.producer.enqueue(command))

    async def play(self, company_id: str | None, play_id: str) -> Play | None:
        found = self.results.get(company_id, play_id) or await self.stores.plays.get(company_id, play_id)
        if found is None and company_id is not None and self.results.coming(company_id, play_id):
            return await self._arriving(company_id, play_id)
        return found

    async def _arriving(self, company_id: str, play_id: str) -> Play | None:
        """A play started through this instance moments ago, that neither its result read here
        nor the projection shows yet (another instance may have answered its wait already: the
        result reached that one's reader first): it exists, so it is looked for a little longer
        (``STREAMS_COMING_SECONDS``), its result awaited and the projection read meanwhile,
        rather than called absent."""
        from flow8_streams.http.results import Finished

        loop = asyncio.get_running_loop()
        deadline = loop.time() + STREAMS_COMING_SECONDS
        pause, longest = STREAMS_POLL_SECONDS
        with self.results.awaiting(company_id, play_id) as arrival:
            while (left := deadline - loop.time()) > 0:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(min(pause, left)):
                        result = await asyncio.shield(arrival)
                        return Finished.of(result) or await self.stores.plays.get(company_id, play_id)
                state = await self.stores.plays.get(company_id, play_id)
                if state is not None:
                    return state
                pause = min(pause * 2, longest)
        return None

    async def plays(self, company_id: str, status: str | None, limit: int, page: PlayPage) -> Sequence[Play]:
        """The projection's page, with the finished plays read off Kafka that it does not show
        yet (or shows running): a play listed after its wait answered is listed as ended."""
        shown = await self.stores.plays.list(company_id, status, limit, page)
        listed: dict[str, Play] = {s.play_id: self.results.get(company_id, s.play_id) or s for s in shown}
        listed |= {f.view["play_id"]: f for f in self.results.listed(company_id, status, page)}
        plays = [p for p in listed.values() if status is None or p.public()["status"] == status]
        return sorted(plays, key=_newest_first, reverse=True)[:limit]

    async def wait(self, company_id: str, play_id: str, timeout: float) -> Play | None:
        """The play's result as soon as it is read off Kafka. A play that ended before this
        instance started, or long enough ago to have left the map, is in the projection: looked
        at once, if its result has not come within ``STREAMS_LOOK_SECONDS``, unless the play was
        started through this instance and its result has not been read yet."""
        from flow8_streams.http.results import Finished

        ended = self.results.get(company_id, play_id)
        if ended is not None:
            return ended
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        with self.results.awaiting(company_id, play_id) as arrival:
            if not self.results.coming(company_id, play_id):  # not started here lately: it may have ended unseen
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(min(timeout, STREAMS_LOOK_SECONDS)):
                        await asyncio.shield(arrival)
                if not arrival.done():
                    state = await self.stores.plays.get(company_id, play_id)
                    if (state is not None and state.finished) or loop.time() >= deadline:
                        return state
            try:
                async with asyncio.timeout_at(deadline):
                    result = await arrival
            except TimeoutError:
                return await self.stores.plays.get(company_id, play_id)
        return Finished.of(result) or await self._poll(company_id, play_id, deadline)

    async def _poll(self, company_id: str, play_id: str, deadline: float) -> PlayState | None:
        """The projection read until it shows the play's end: for a result too large to carry the
        play (MongoDB tells no one when a document changes; FerretDB has no change streams)."""
        pause, longest = STREAMS_POLL_SECONDS
        loop = asyncio.get_running_loop()
        while True:
            state = await self.stores.plays.get(company_id, play_id)
            left = deadline - loop.time()
            if (state is not None and state.finished) or left <= 0:
                return state
            await asyncio.sleep(min(pause, left))  # a poll period: there is no event to await
            pause = min(pause * 2, longest)

    async def events(self, company_id: str, play: Play, after_seq: int = 0) -> Sequence[Event]:
        """The events of the play's history off Kafka; a record that is not an event of this
        version is left out here (its audit names it)."""
        events: list[Event] = []
        for doc in (await self._history(company_id, play)).documents:
            seq = doc.get("seq")
            if type(seq) is int and seq > after_seq:
                try:
                    events.append(event_adapter.validate_python(doc))
                except ValueError:
                    continue
        return events

    async def history(self, company_id: str, play: Play) -> PlayHistory:
        """The history off Kafka, compared with the MongoDB projection once the projection has
        caught up with it (the projector writes behind the log: a projection read before the log
        and short of it is not yet a finding)."""
        state = await self.stores.plays.get(company_id, play.public()["play_id"])
        history = await self._history(company_id, play)
        if state is not None and state.seq >= len(history.documents):
            history.projection, history.has_projection = state, True
        return history

    async def checkpoints(self, company_id: str) -> list[SignedCheckpoint | Finding]:
        return await self.histories.checkpoints(company_id)

    async def _history(self, company_id: str, play: Play) -> PlayHistory:
        shown = play.public()
        return await self.histories.get(company_id, shown["play_id"], shown["started_at"])

    async def ready(self) -> str | None:
        if self.reader.done():
            failure = None if self.reader.cancelled() else self.reader.exception()
            return f"the reader of the play-results topic stopped: {failure or 'cancelled'}"
        try:
            await self.mongo.db.command("ping")
        except Exception as exc:
            return f"MongoDB at {self.mongo.hosts} does not answer: {type(exc).__name__}"
        return None
