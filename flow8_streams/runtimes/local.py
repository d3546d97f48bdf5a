"""The embedded runtime: one process, asyncio, one SQLite file. No services.

One orchestrator task owns every play's state. It takes messages (starts, results,
cancels, ticks) from an in-process inbox in batches, asks the engine what they
mean, writes the batch's events and projections in one SQLite transaction, and
only then acts on them: start module tasks, cancel timed-out ones, arm timers,
wake waiters. A crash between decision and commit loses nothing that was
promised; on the next start, unfinished plays are folded from the log and their
in-flight flowlets are run again (the same attempt, so KV counters do not double).

A flowlet whose module is inline (quick and pure, ``ModuleSpec.inline``) runs in
place while its message is decided, and its result is decided at once, in the same
transaction: the events are the ones a trip through a module task would give (the
streams orchestrator does the same), without the task, the inbox and a commit per step.

With a ``ChannelPool``, a flowlet that has ``defer_after_ms`` (or whose module is
declared ``channel``) runs on a channel worker process instead of this loop, after
that delay; the channel's acceptance comes back as a ``FlowletDispatch`` (recorded
as FlowletDispatched) before the result. Without a pool such flowlets run in place.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flow8_streams.channels.placement import runs_on_channel, without_pending
from flow8_streams.domain import events as ev
from flow8_streams.domain.flow import FlowDefinition
from flow8_streams.domain.limits import DEFAULT_LIMITS, Limits
from flow8_streams.domain.messages import CancelPlay, FlowletDispatch, FlowletResult, Message, Start, Task, Tick
from flow8_streams.domain.state import PlayState
from flow8_streams.engine import in_flight, next_wakeup, step
from flow8_streams.engine.core import json_size
from flow8_streams.errors import CompanyMismatch, Flow8Error, LimitExceeded, NotFound
from flow8_streams.logs import log_context
from flow8_streams.modules.executor import execute, execute_inline
from flow8_streams.modules.registry import ModuleRegistry
from flow8_streams.modules.threads import DEFAULT_SIZE, ModuleThreads
from flow8_streams.stores.sqlite import SqliteStore

if TYPE_CHECKING:
    from flow8_streams.audit.checkpoints import Checkpointer
    from flow8_streams.channels import ChannelPool
    from flow8_streams.settings import Settings

log = logging.getLogger("flow8.local")
Listener = Callable[[Sequence[ev.Event]], None]
MAX_BATCH = 2048


def utcnow() -> datetime:
    return datetime.now(UTC)


class LocalRuntime:
    """Runs plays in this process. Use as ``async with LocalRuntime(...) as rt``."""

    def __init__(
        self,
        store: SqliteStore,
        registry: ModuleRegistry,
        *,
        clock: Callable[[], datetime] = utcnow,
        max_concurrency: int = 10_000,
        channels: ChannelPool | None = None,
        limits: Limits = DEFAULT_LIMITS,
        module_threads: int = DEFAULT_SIZE,
        checkpointer: Checkpointer | None = None,
        checkpoint_seconds: float = 60.0,
    ) -> None:
        self.store = store
        self.checkpointer = checkpointer  # signs the chain heads this runtime writes (FLOW8_AUDIT_SIGNING_KEY)
        self.checkpoint_seconds = checkpoint_seconds
        self._checkpoint_task: asyncio.Task[None] | None = None
        self.checkpointed = asyncio.Event()  # set each time a periodic checkpoint is written
        self.limits = limits
        self.refused: dict[str, int] = {}  # reason -> messages refused (a company mismatch, a limit)
        self._starting: dict[str, str] = {}  # play_id -> company of a Start still in the inbox
        self.registry = registry
        self.clock = clock
        self.channels = channels
        self.threads = ModuleThreads(module_threads)  # plain modules run there, never on this loop
        self._inbox: asyncio.Queue[Message] = asyncio.Queue()
        self._states: dict[str, PlayState] = {}
        self._waiters: dict[str, list[asyncio.Future[PlayState]]] = {}
        self._tasks: dict[tuple[str, str], asyncio.Task[None]] = {}
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._listeners: list[Listener] = []
        self._slots = asyncio.Semaphore(max_concurrency)
        self._loop_task: asyncio.Task[None] | None = None
        self._failure: BaseException | None = None

    # ------------------------------------------------------------ lifecycle

    @classmethod
    @contextlib.asynccontextmanager
    async def open(
        cls,
        db: str | os.PathLike[str],
        *,
        modules: Sequence[str] = (),
        registry: ModuleRegistry | None = None,
        channels: bool = False,
        settings: Settings | None = None,
    ) -> AsyncIterator[LocalRuntime]:
        """The embedded runtime on the SQLite file ``db`` (made if absent), started; closed with
        its store (and channel pool) at the end of the ``async with``.

        ``modules``: Python files or packages whose ``MODULES`` add to the built-in modules (or
        ``registry`` itself). ``channels``: run channel flowlets on a pool of channel worker
        processes per the settings (``CHANNEL_PORT_RANGE``...). ``settings``: the limits, module
        threads and KV dedup window (default: ``load_settings()``, the environment and
        ``$FLOW8_CONFIG``)."""
        if settings is None:
            from flow8_streams.settings import load_settings

            settings = load_settings()
        path = Path(db)
        registry = registry if registry is not None else ModuleRegistry.default(list(modules))
        store = SqliteStore(path, kv_incr_dedup_seconds=settings.kv_incr_dedup_seconds)
        try:
            pool = None
            if channels:
                from flow8_streams.channels import ChannelPool
                from flow8_streams.channels.tokens import TOKEN_KEY_NAME, new_key, settings_key

                # the db's key unless the settings give one: a resumed play's tokens stay valid
                token_key = settings_key(settings) or store.secret(TOKEN_KEY_NAME, new_key)
                pool = ChannelPool.from_settings(
                    settings, module_sources=list(modules), kv_db=path, token_key=token_key
                )
                await pool.start()  # a port in use: InvalidInput naming it
            try:
                runtime = cls(
                    store,
                    registry,
                    channels=pool,
                    limits=settings.limits,
                    module_threads=settings.module_threads,
                    checkpointer=_checkpointer(store, path, settings),
                    checkpoint_seconds=settings.audit_checkpoint_seconds,
                )
                async with runtime:
                    yield runtime
            finally:
                if pool is not None:
                    await pool.close()
        finally:
            store.close()

    async def __aenter__(self) -> LocalRuntime:
        if self.threads.closed:  # started again after a close
            self.threads = ModuleThreads(self.threads.size)
        self._loop_task = asyncio.create_task(self._orchestrate(), name="flow8-orchestrator")
        if self.checkpointer is not None:
            self._checkpoint_task = asyncio.create_task(self._checkpoints(), name="flow8-checkpoints")
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Stop: cancel running module tasks and timers. Unfinished plays stay
        recorded as running and resume on the next start."""
        for handle in self._timers.values():
            handle.cancel()
        self._timers.clear()
        tasks = list(self._tasks.values())
        if self._loop_task is not None:
            tasks.append(self._loop_task)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._tasks.clear()
        self._loop_task = None
        for futures in self._waiters.values():
            for fut in futures:
                if not fut.done():
                    fut.cancel()
        self._waiters.clear()
        self.threads.close()
        if self._checkpoint_task is not None:
            self._checkpoint_task.cancel()
            await asyncio.gather(self._checkpoint_task, return_exceptions=True)
            self._checkpoint_task = None
        if self.checkpointer is not None and self._failure is None:
            self.checkpointer.flush(self.clock())  # the heads written since the last checkpoint

    async def _checkpoints(self) -> None:
        """A signed checkpoint every ``checkpoint_seconds`` while plays are written."""
        assert self.checkpointer is not None
        while True:
            await asyncio.sleep(self.checkpoint_seconds)  # a period, not a wait for an event
            try:
                if self.checkpointer.flush(self.clock()):
                    self.checkpointed.set()
            except Exception:  # the store or the file failed: tried again next period and at close
                log.exception("writing a signed checkpoint failed")

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        """Call ``listener`` with each committed batch of events; returns an unsubscribe."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener)

    # ------------------------------------------------------------ API

    async def start(self, flow: FlowDefinition, input: Any = None, *, company_id: str, play_id: str) -> None:
        """Ask for a play to start; a ``play_id`` that exists is left as it is (resumed if unfinished).

        Raises ``CompanyMismatch`` if another company holds ``play_id``, ``LimitExceeded`` if
        the input or the flow is over the runtime's limits (``InvalidFlow`` for the latter)."""
        size = json_size(input)
        if size > self.limits.max_input_bytes:
            raise LimitExceeded(
                f"the input of play {play_id!r} is {size} bytes, over the limit of "
                f"{self.limits.max_input_bytes} (limits.max_input_bytes)"
            )
        flow.check(limits=self.limits)
        self._check_company(play_id, company_id, "StartPlay")
        self._starting.setdefault(play_id, company_id)
        self._inbox.put_nowait(Start(play_id=play_id, company_id=company_id, flow=flow, input=input))

    async def cancel(self, play_id: str, company_id: str, reason: str = "cancelled by request") -> None:
        """Ask for a play to be cancelled. Raises ``CompanyMismatch`` if another company holds it."""
        self._check_company(play_id, company_id, "CancelPlay")
        self._inbox.put_nowait(CancelPlay(play_id=play_id, company_id=company_id, reason=reason))

    def _check_company(self, play_id: str, company_id: str, what: str) -> None:
        state = self.state(play_id)
        owner = state.company_id if state is not None else self._starting.get(play_id)
        if owner is not None and owner != company_id:
            self._count_refusal(CompanyMismatch.reason)
            raise CompanyMismatch.of(what, play_id, company_id)

    def _count_refusal(self, reason: str) -> None:
        self.refused[reason] = self.refused.get(reason, 0) + 1

    async def wait(self, play_id: str) -> PlayState:
        """The play's final state, once it has one."""
        self._raise_if_dead()
        state = self._states.get(play_id)
        if state is None:
            stored = self.store.plays.get_sync(play_id)
            if stored is not None and stored.finished:
                return stored
        elif state.finished:
            return state
        fut: asyncio.Future[PlayState] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(play_id, []).append(fut)
        assert self._loop_task is not None
        watched: set[asyncio.Future[Any]] = {fut, self._loop_task}
        done, _ = await asyncio.wait(watched, return_when=asyncio.FIRST_COMPLETED)
        if fut in done:
            return fut.result()
        fut.cancel()
        self._raise_if_dead()
        raise NotFound(f"play {play_id} did not finish")  # pragma: no cover

    async def run(self, flow: FlowDefinition, input: Any = None, *, company_id: str, play_id: str) -> PlayState:
        await self.start(flow, input, company_id=company_id, play_id=play_id)
        return await self.wait(play_id)

    def state(self, play_id: str) -> PlayState | None:
        return self._states.get(play_id) or self.store.plays.get_sync(play_id)

    async def resume_unfinished(self) -> list[str]:
        """Resume every play the database holds as running (after a crash or a stop)."""
        plays = self.store.plays.unfinished()
        for company_id, play_id in plays:
            self._inbox.put_nowait(Tick(play_id=play_id, company_id=company_id))
        return [play_id for _, play_id in plays]

    # ------------------------------------------------------------ orchestrator

    def _raise_if_dead(self) -> None:
        if self._failure is not None:
            raise Flow8Error(f"the local runtime stopped: {self._failure}") from self._failure

    async def _orchestrate(self) -> None:
        try:
            while True:
                batch = [await self._inbox.get()]
                while len(batch) < MAX_BATCH and not self._inbox.empty():
                    batch.append(self._inbox.get_nowait())
                self._process(batch)
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # the store failed: surface it to every waiter
            self._failure = exc
            log.exception("orchestrator stopped")
            raise

    def _process(self, batch: list[Message]) -> None:
        now = self.clock()
        committed: list[ev.Event] = []
        touched: dict[str, PlayState] = {}
        resumed: list[PlayState] = []
        rearm: list[PlayState] = []
        for msg in batch:
            play_id = msg.play_id
            state: PlayState | None = self._states.get(play_id)
            if state is None:
                state = self.store.rebuild(play_id)
                if state is not None and not state.finished:
                    self._states[play_id] = state
                    resumed.append(state)
            if isinstance(msg, Start) and self._starting.get(play_id) == msg.company_id:
                del self._starting[play_id]
            try:
                events, after = self._advance(state, msg, now)
            except Flow8Error as exc:  # a message for another company's play: refused, the others go on
                self._count_refusal(exc.reason)
                with log_context(company_id=msg.company_id, play_id=play_id):
                    log.warning("refused %s for play %s: %s", msg.type, play_id, exc)
                continue
            if not events:
                if isinstance(msg, Tick) and state is not None and not state.finished:
                    rearm.append(state)  # a timer that fired a hair early: arm it again
                continue
            assert after is not None
            self._states[play_id] = touched[play_id] = after
            committed.extend(events)
        if committed:
            self.store.record(committed, list(touched.values()))
            if self.checkpointer is not None:
                self.checkpointer.note(touched.values())
        for state in resumed:
            for name, _ in in_flight(state):
                if (state.play_id, name) not in self._tasks:
                    self._dispatch(Task.in_flight(state, name, self.clock()))
            self._arm_timer(state)
        for state in rearm:
            self._arm_timer(state)
        self._act(committed, touched)

    def _advance(self, state: PlayState | None, msg: Message, now: datetime) -> tuple[list[ev.Event], PlayState | None]:
        """``step`` on ``msg`` at ``now``, then on the result of each inline module it schedules,
        run here, at the time that result is there (so a flowlet never ends after the event that
        records it): every event of the decision, and the state after them."""
        events: list[ev.Event] = []
        queue: deque[Message] = deque([msg])
        while queue:
            message = queue.popleft()
            new, after = step(state, message, now if message is msg else self.clock(), self.limits)
            if not new:
                continue
            events += new
            state = after
            for event in new:
                if isinstance(event, ev.FlowletScheduled) and self._inline(event.payload):
                    p = event.payload
                    result = execute_inline(
                        self.registry,
                        self.clock,
                        play_id=event.play_id,
                        company_id=event.company_id,
                        flowlet=p.flowlet,
                        attempt=p.attempt,
                        module_ref=p.module_ref,
                        task_input=p.input,
                    )
                    queue.append(result)
        return events, state

    def _inline(self, scheduled: ev.FlowletScheduledPayload) -> bool:
        """Whether the flowlet runs in place: an inline module, not sent to a channel."""
        ref = scheduled.module_ref
        if ref not in self.registry or not self.registry.get(ref).inline:
            return False
        return self.channels is None or not self._on_channel(ref, scheduled.defer_after_ms)

    def _act(self, committed: list[ev.Event], touched: dict[str, PlayState]) -> None:
        for event in committed:
            match event:
                case ev.FlowletScheduled(payload=p):
                    if not self._inline(p):  # an inline one ran in ``_advance``
                        self._dispatch(Task.scheduled(event))
                case ev.FlowletTimedOut(payload=p) | ev.FlowletCancelled(payload=p):
                    task = self._tasks.pop((event.play_id, p.flowlet), None)
                    if task is not None:
                        task.cancel()
                    if self.channels is not None:
                        # kill the channel worker running it now; cancelling the task does too,
                        # once it runs, and a second cancel is a no-op
                        self.channels.cancel(event.play_id, p.flowlet, p.attempt)
        for play_id, state in touched.items():
            if state.finished:
                self._states.pop(play_id, None)
                timer = self._timers.pop(play_id, None)
                if timer is not None:
                    timer.cancel()
                for fut in self._waiters.pop(play_id, []):
                    if not fut.done():
                        fut.set_result(state)
            else:
                self._arm_timer(state)
        if committed:
            for listener in list(self._listeners):
                listener(committed)

    def _arm_timer(self, state: PlayState) -> None:
        wake = next_wakeup(state)
        old = self._timers.pop(state.play_id, None)
        if old is not None:
            old.cancel()
        if wake is None:
            return
        # +1 ms: event-loop timers have millisecond resolution and may fire early.
        delay = max(0.0, (wake - self.clock()).total_seconds()) + 0.001
        loop = asyncio.get_running_loop()
        self._timers[state.play_id] = loop.call_later(
            delay, self._inbox.put_nowait, Tick(play_id=state.play_id, company_id=state.company_id)
        )

    def _dispatch(self, task: Task) -> None:
        key = (task.play_id, task.flowlet)
        if self.channels is not None and self._on_channel(task.module_ref, task.defer_after_ms):
            coro = self._execute_on_channel(key, self.channels, task)
        else:
            coro = self._execute(key, task.company_id, task.attempt, task.module_ref, task.input)
        with log_context(company_id=task.company_id, play_id=task.play_id, flowlet=task.flowlet):
            self._tasks[key] = asyncio.create_task(coro, name=f"flow8:{task.play_id}/{task.flowlet}")

    def _on_channel(self, module_ref: str, defer_after_ms: int | None) -> bool:
        return runs_on_channel(self.registry, module_ref, defer_after_ms)

    async def _execute_on_channel(self, key: tuple[str, str], pool: ChannelPool, task: Task) -> None:
        """Wait ``defer_after_ms``, run the task on a channel, and pass on its dispatch and result."""

        def dispatched(play_id: str, flowlet: str, attempt: int, channel: str) -> None:
            self._inbox.put_nowait(
                FlowletDispatch(
                    play_id=play_id, company_id=task.company_id, flowlet=flowlet, attempt=attempt, channel=channel
                )
            )

        try:
            if task.defer_after_ms:
                await asyncio.sleep(task.defer_after_ms / 1000)  # a delay the flow asked for
            try:
                result = await pool.submit(task, on_dispatch=dispatched)
            except Flow8Error as exc:  # the pool closed under us: fail the attempt, retryable
                result = FlowletResult.failure(task, f"channel_lost: {exc}", now=self.clock())
        finally:
            if self._tasks.get(key) is asyncio.current_task():
                del self._tasks[key]
        self._inbox.put_nowait(result)

    async def _execute(
        self, key: tuple[str, str], company_id: str, attempt: int, module_ref: str, task_input: Any
    ) -> None:
        play_id, flowlet = key
        try:
            async with self._slots:
                result: FlowletResult = await execute(
                    self.registry,
                    self.store.kv,
                    self.clock,
                    threads=self.threads,
                    play_id=play_id,
                    company_id=company_id,
                    flowlet=flowlet,
                    attempt=attempt,
                    module_ref=module_ref,
                    task_input=task_input,
                )
        finally:
            if self._tasks.get(key) is asyncio.current_task():
                del self._tasks[key]
        self._inbox.put_nowait(without_pending(result, module_ref, "flow8 run --channels"))


def _checkpointer(store: SqliteStore, db: Path, settings: Settings) -> Checkpointer | None:
    """The signer of ``db``'s checkpoints when the settings name a signing key."""
    if settings.audit_signing_key is None:
        return None
    from flow8_streams.audit.checkpoints import Checkpointer, jsonl_path, load_private_key

    key = load_private_key(settings.audit_signing_key)
    return Checkpointer(store.db, key, writer=db.name, jsonl=jsonl_path(db))


@contextlib.contextmanager
def play_lock(db: str | os.PathLike[str], play_id: str) -> Iterator[None]:
    """Held while this process drives ``play_id`` of ``db``: one process at a time writes a play's
    events (another would fork its history).

    A byte-range lock (``lockf``) of ``DB.lock`` at an offset of the play id's hash: the kernel
    drops it when the process ends, however it ends. Held by another process: ``Flow8Error``."""
    import fcntl

    path = Path(db)
    offset = int.from_bytes(hashlib.sha256(play_id.encode()).digest()[:7])
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path.with_name(path.name + ".lock"), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, offset)
        except OSError:
            raise Flow8Error(
                f"play {play_id} is being run by another flow8 process on {path}; stop that one first (Ctrl-C)"
            ) from None
        yield
    finally:
        os.close(fd)  # releases the lock
