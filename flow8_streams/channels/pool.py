"""The channel pool: at most ``size`` worker processes on the first ``size`` ports of a
range, started as tasks need them, and the dispatch of tasks to them.

The pool starts ``warm`` workers; the others stay ``cold`` (their ports held, nothing
running). When a task waits, no channel is idle and fewer workers are starting than tasks
wait, the next cold slot starts its worker in the background, and once it answers it
takes the head of the queue: tasks keep their fair order whichever channel comes up first.

``submit(task)`` queues the task (one FIFO per company, taken round-robin), hands it
to the first free channel, and returns its ``FlowletResult``. The pool never loses a
submitted task: it comes back with the module's result, or failed and retryable with
``timed out after N ms`` (deadline: the task's own, plus a small grace so the host's
engine records FlowletTimedOut first, or the channel execution timeout, whichever is
first) or ``channel_lost: ...`` (no heartbeat for ``heartbeat_timeout_s``, the worker
died, the connection dropped). Either way the worker is killed (-9) and its slot
restarted on the same port, where it serves again.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import secrets
import shutil
import socket
import sys
import tempfile
from collections import Counter
from collections.abc import Sequence
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flow8_streams.channels.dispatcher import Lost, Outcome, TimedOut, converse
from flow8_streams.channels.exceptions import ChannelError, ChannelSettingsInvalid, PoolClosed
from flow8_streams.channels.fair_queue import FairQueue
from flow8_streams.channels.ports import (
    DEFAULT_HOST,
    check_pool_fits,
    check_pool_warm,
    check_ports_free,
    parse_port_range,
    reserve_port,
)
from flow8_streams.channels.protocol import (
    DEFAULT_IDLE_TIMEOUT_S,
    DEFAULT_MAX_CONNECTIONS,
    MAX_LINE,
    Accepted,
    PendingNote,
    ProgressNote,
)
from flow8_streams.channels.slot import ChannelSlot, DispatchHook, Job, MongoKV, PendingHook, WorkerCommand
from flow8_streams.channels.tokens import new_key
from flow8_streams.clock import utcnow
from flow8_streams.domain.messages import FlowletResult, Task
from flow8_streams.errors import Flow8Error
from flow8_streams.logs import context_for

if TYPE_CHECKING:
    from os import PathLike

    from flow8_streams.metrics import Metrics
    from flow8_streams.settings import Settings

log = logging.getLogger("flow8.channels")
RESTART_BACKOFF_S = (0.5, 30.0)
DEFAULT_WARM = 2


def control_dir() -> Path:
    """A new directory only this user can enter, for the control sockets of one pool's workers."""
    path = Path(tempfile.mkdtemp(prefix="flow8-ch-"))  # mode 0700
    longest = path / "65535.sock"
    if len(str(longest).encode()) > 100:  # a Unix socket path holds at most 107 bytes
        path.rmdir()
        path = Path(tempfile.mkdtemp(prefix="flow8-ch-", dir="/tmp"))
    return path


def job_id(task: Task) -> tuple[str, str]:
    return task.play_id, task.flowlet


def _failed(task: Task, error: str, started: datetime | None, *, retryable: bool) -> FlowletResult:
    return FlowletResult.failure(task, error, now=utcnow(), started_at=started, retryable=retryable)


class ChannelPool:
    """Use as ``async with ChannelPool(range(7701, 7800), 20, ...) as pool``, or ``start()``/``close()``.

    ``size`` (default: every port) bounds the channels running at once; ``warm`` of them
    (default 2, capped at ``size``; ``warm=size`` starts them all) start with the pool, the
    others when tasks wait for them. The modules on its channels see the KV store of
    ``kv_db`` (a SQLite file: the embedded runtime) or ``kv_mongodb`` (a ``MongoKV``: the
    streams runtime), or none.

    Its channels take ``run`` only on their control sockets (Unix sockets in a directory of
    the pool's, mode 0700) and signed with the pool's own secret (new for each pool, 32 random
    bytes, handed to each worker on its stdin), and run only ``module_sources``.
    ``token_key`` mints the completion tokens of pending flowlets (``tokens.completion_token``);
    give the deployment's key so a resumed play keeps its tokens (a fresh one otherwise).
    Outside connections: lines of at most ``max_message_bytes``, ``max_connections`` at once
    per channel, closed after ``idle_timeout_s`` without a whole line; what a channel refuses
    is counted in ``refusals`` (and ``flow8_channel_refusals_total``) by reason.
    """

    def __init__(
        self,
        ports: Sequence[int] | str,
        size: int | None = None,
        *,
        execution_timeout_s: float = 1800,
        heartbeat_timeout_s: float = 30,
        module_sources: Sequence[str] = (),
        kv_db: str | PathLike[str] | None = None,
        kv_mongodb: MongoKV | None = None,
        metrics: Metrics | None = None,
        on_dispatch: DispatchHook | None = None,
        on_pending: PendingHook | None = None,
        host: str = DEFAULT_HOST,
        heartbeat_interval_s: float | None = None,
        deadline_grace_s: float = 0.5,
        start_timeout_s: float = 30.0,
        python: str = sys.executable,
        warm: int = DEFAULT_WARM,
        token_key: bytes | None = None,
        max_message_bytes: int = MAX_LINE,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        idle_timeout_s: float = DEFAULT_IDLE_TIMEOUT_S,
        worker_log_level: str = "warning",
    ) -> None:
        port_range = parse_port_range(ports) if isinstance(ports, str) else ports
        self.ports = list(port_range)
        self.size = len(self.ports) if size is None else size
        check_pool_fits(self.ports, self.size)
        self.warm = check_pool_warm(warm, self.size)
        for name, value in (
            ("channel_execution_timeout_seconds", execution_timeout_s),
            ("channel_heartbeat_timeout_seconds", heartbeat_timeout_s),
            ("channel_max_connections", max_connections),
            ("channel_idle_timeout_seconds", idle_timeout_s),
            ("max_message_bytes", max_message_bytes),
        ):
            if not value > 0:
                raise ChannelSettingsInvalid(f"{name} {value!r} must be > 0")
        self.host = host
        self.execution_timeout_s = float(execution_timeout_s)
        self.heartbeat_timeout_s = float(heartbeat_timeout_s)
        self.deadline_grace_s = deadline_grace_s
        self.start_timeout_s = start_timeout_s
        self.module_sources = list(module_sources)
        self.metrics = metrics
        self.on_dispatch = on_dispatch
        self.on_pending = on_pending
        beat = heartbeat_interval_s or max(0.05, min(1.0, self.heartbeat_timeout_s / 4))
        self.command = WorkerCommand(
            host=host,
            module_sources=self.module_sources,
            kv_db=kv_db,
            kv_mongodb=kv_mongodb,
            heartbeat_s=beat,
            python=python,
            log_level=worker_log_level,
            pool_secret=secrets.token_bytes(32),
            token_key=token_key if token_key is not None else new_key(),
            max_line=max_message_bytes,
            max_connections=max_connections,
            idle_timeout_s=idle_timeout_s,
        )
        self.refusals: Counter[str] = Counter()
        self._refused = asyncio.Event()  # set (and replaced) on every refusal counted
        self.slots = [ChannelSlot(port, self.command) for port in self.ports[: self.size]]
        self._queue: FairQueue[Job] = FairQueue(lambda job: job.task.company_id)
        self._background: set[asyncio.Task[Any]] = set()
        self._held: dict[int, socket.socket] = {}  # the ports of cold slots, held until they start
        self._retries: dict[int, asyncio.TimerHandle] = {}  # a pump when a failed slot may be tried again
        self._started = False
        self._closing = False

    @classmethod
    def from_settings(cls, settings: Settings, **kwargs: Any) -> ChannelPool:
        """A pool as CHANNEL_PORT_RANGE, CHANNEL_POOL_SIZE, CHANNEL_POOL_WARM and the ``execution:`` settings say."""
        kwargs.setdefault("warm", settings.channel_pool_warm)
        kwargs.setdefault("max_message_bytes", settings.limits.max_message_bytes)
        kwargs.setdefault("max_connections", settings.execution.channel_max_connections)
        kwargs.setdefault("idle_timeout_s", settings.execution.channel_idle_timeout_seconds)
        return cls(
            settings.channel_ports,
            settings.channel_pool_size,
            execution_timeout_s=settings.execution.channel_execution_timeout_seconds,
            heartbeat_timeout_s=settings.execution.channel_heartbeat_timeout_seconds,
            **kwargs,
        )

    # ------------------------------------------------------------ lifecycle

    async def __aenter__(self) -> ChannelPool:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def start(self) -> None:
        """Check that every port of the pool is free, hold the ports of the cold slots, start
        the ``warm`` workers and return once each answers ``status``.

        A port in use fails the start with ``PortInUse`` (an ``InvalidInput``) naming it.
        A cold slot's port is held by a bound, not listening socket until its worker starts,
        so another instance cannot take it meanwhile (its start fails naming the port). Where
        the port cannot be held (connections of an earlier worker still in TIME_WAIT), or in
        the moment between releasing it and the worker's bind, another process may still
        take it: that slot's start then fails with ``PortInUse`` in the log, the slot shows
        ``down`` and is tried again after a back-off (0.5 s doubling to 30 s) when tasks wait,
        and the task that wanted it stays at its place in the queue for another channel.
        No task is lost to it.
        """
        if self._closing:
            raise PoolClosed("this channel pool was closed; make a new one")
        if self._started:
            return
        check_ports_free((slot.port for slot in self.slots), self.host)
        self.command.control_dir = control_dir()
        warm, cold = self.slots[: self.warm], self.slots[self.warm :]
        for slot in cold:
            held = reserve_port(slot.port, self.host)
            if held is not None:
                self._held[slot.port] = held
        self._started = True
        for slot in warm:
            slot.starting()
        spawned = await asyncio.gather(*(slot.spawn(self.start_timeout_s) for slot in warm), return_exceptions=True)
        failures = [r for r in spawned if isinstance(r, BaseException)]
        if failures:
            await self.close()
            first = next((f for f in failures if isinstance(f, Flow8Error)), failures[0])
            raise first
        for slot in warm:
            slot.up()
            self._watch(slot)
        self._gauges()
        log.info(
            "channels: %d of at most %d workers started on %s ports %s-%s; the others start when tasks wait",
            len(warm),
            self.size,
            self.host,
            self.slots[0].port,
            self.slots[-1].port,
        )

    async def close(self) -> None:
        """Fail what waits, kill what runs, stop every worker; nothing is left running."""
        if self._closing:
            return
        self._closing = True
        for job in self._queue.drain():
            if not job.future.done():
                job.future.set_exception(PoolClosed("the channel pool closed before the task ran"))
        for handle in self._retries.values():
            handle.cancel()
        self._retries.clear()
        tasks = list(self._background)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.gather(*(slot.stop() for slot in self.slots), return_exceptions=True)
        for held in self._held.values():
            held.close()
        self._held.clear()
        if self.command.control_dir is not None:
            shutil.rmtree(self.command.control_dir, ignore_errors=True)
        for slot in self.slots:
            slot.close()
        self._gauges()

    # ------------------------------------------------------------ API

    def submit_nowait(self, task: Task, *, on_dispatch: DispatchHook | None = None) -> asyncio.Future[FlowletResult]:
        """Queue ``task`` now; the future gets its result. Cancelling the future cancels the task
        (taken off the queue, or its worker killed and the slot restarted)."""
        if not self._started or self._closing:
            raise PoolClosed("the channel pool is not running (start it first)" if not self._closing else "closed")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[FlowletResult] = loop.create_future()
        job = Job(task=task, future=future, on_dispatch=on_dispatch, queued_at=loop.time())
        future.add_done_callback(partial(self._future_done, job))
        self._queue.push(job)
        self._pump()
        return future

    async def submit(self, task: Task, *, on_dispatch: DispatchHook | None = None) -> FlowletResult:
        """Run ``task`` on a channel and return its result (see the module doc for failures)."""
        return await self.submit_nowait(task, on_dispatch=on_dispatch)

    def cancel(self, play_id: str, flowlet: str, attempt: int | None = None) -> int:
        """Cancel the flowlet's waiting or running task(s): a running one's worker is killed and
        its slot restarted. Their submitters get a failed, not retryable result. Returns how many."""
        found = 0
        for job in [j for j in self._queue if self._matches(j, play_id, flowlet, attempt)]:
            self._queue.remove(job)
            found += 1
            if not job.future.done():
                job.future.set_result(_failed(job.task, "cancelled before it ran on a channel", None, retryable=False))
        for slot in self.slots:
            running = slot.job
            if running is not None and self._matches(running, play_id, flowlet, attempt):
                found += 1
                if running.runner is not None:
                    running.runner.cancel()
        self._gauges()
        return found

    @property
    def waiting(self) -> int:
        return len(self._queue)

    @property
    def busy(self) -> int:
        return sum(1 for slot in self.slots if slot.state == "busy")

    @property
    def workers(self) -> int:
        """Worker processes running or starting (restarts included): at most ``size``. Cold
        slots and slots whose first start failed have none."""
        return sum(1 for slot in self.slots if not self._startable(slot, None) and slot.state != "closed")

    def snapshot(self) -> list[dict[str, Any]]:
        """Each slot as this process sees it (``flow8 channels status`` asks the ports instead)."""
        rows = []
        for slot in self.slots:
            task = slot.job.task if slot.job is not None else None
            rows.append(
                {
                    "port": slot.port,
                    "state": slot.state,
                    "pid": slot.pid,
                    "since": slot.since,
                    "company_id": task and task.company_id,
                    "play_id": task and task.play_id,
                    "flowlet": task and task.flowlet,
                    "attempt": task and task.attempt,
                    "restarts": slot.restarts,
                    "error": slot.error,
                }
            )
        return rows

    # ------------------------------------------------------------ dispatch

    @staticmethod
    def _matches(job: Job, play_id: str, flowlet: str, attempt: int | None) -> bool:
        t = job.task
        return t.play_id == play_id and t.flowlet == flowlet and (attempt is None or t.attempt == attempt)

    def _spawn_background(self, coro: Any, name: str, context: contextvars.Context | None = None) -> asyncio.Task[Any]:
        # its own play context (none by default), never that of the code that happened to start it
        task = asyncio.create_task(coro, name=name, context=context if context is not None else context_for())
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

    def _gauges(self) -> None:
        if self.metrics is not None:
            self.metrics.channels_started.set(self.workers)
            self.metrics.channels_busy.set(self.busy)
            self.metrics.channel_tasks_waiting.set(len(self._queue))

    def _future_done(self, job: Job, future: asyncio.Future[FlowletResult]) -> None:
        if not future.cancelled():
            return
        if self._queue.remove(job):
            self._gauges()
        elif job.runner is not None and not job.runner.done():
            job.runner.cancel()

    def _pump(self) -> None:
        """Hand waiting tasks to free channels, fairly across companies; start more channels
        for the tasks that still wait."""
        if self._closing:
            return
        while self._queue:
            slot = next((s for s in self.slots if s.state == "idle"), None)
            if slot is None:
                break
            job = self._queue.pop()
            if job.future.done():
                continue
            slot.take(job)
            t = job.task
            context = context_for(company_id=t.company_id, play_id=t.play_id, flowlet=t.flowlet)
            job.runner = self._spawn_background(
                self._run(slot, job), f"channel-{slot.port}:{t.play_id}/{t.flowlet}", context
            )
            job.runner.add_done_callback(partial(self._runner_done, slot, job), context=context)
        self._grow()
        self._gauges()

    def _grow(self) -> None:
        """One more channel for each waiting task that no starting channel will take, as long
        as cold slots are left: never more than ``size`` workers. A starting channel is not
        promised to a task; it takes the head of the queue once it is up."""
        wanted = len(self._queue) - sum(1 for s in self.slots if s.state == "starting")
        if wanted <= 0:
            return
        now = asyncio.get_running_loop().time()
        for slot in self.slots:
            if wanted <= 0:
                break
            if self._startable(slot, now):
                wanted -= 1
                slot.starting()
                self._spawn_background(self._start_cold(slot), f"channel-{slot.port}-start")

    @staticmethod
    def _startable(slot: ChannelSlot, now: float | None) -> bool:
        """Cold, or down after a first start that failed (and, given ``now``, due again)."""
        if slot.state == "cold":
            return True
        if slot.state != "down" or slot.retry_at is None:
            return False
        return now is None or slot.retry_at <= now

    async def _start_cold(self, slot: ChannelSlot) -> None:
        """Start the worker of a slot that never ran one (or whose first start failed)."""
        held = self._held.pop(slot.port, None)
        if held is not None:
            held.close()
        retry = self._retries.pop(slot.port, None)
        if retry is not None:
            retry.cancel()
        try:
            await slot.spawn(self.start_timeout_s)
        except (ChannelError, Flow8Error, OSError) as exc:
            delay = slot.backoff_s = min(slot.backoff_s * 2, RESTART_BACKOFF_S[1]) or RESTART_BACKOFF_S[0]
            slot.failed(str(exc), retry_at=asyncio.get_running_loop().time() + delay)
            log.error("channel %s: cannot start its worker: %s; tasks wait for another channel", slot.port, exc)
            self._retries[slot.port] = asyncio.get_running_loop().call_later(delay, self._pump)
            self._pump()
            return
        self._watch(slot)
        slot.up()
        self._gauges()
        log.info("channel %s: worker started as pid %s (%d of %d)", slot.port, slot.pid, self.workers, self.size)
        self._pump()

    def _runner_done(self, slot: ChannelSlot, job: Job, runner: asyncio.Task[None]) -> None:
        """Whatever ended the runner, the submitter gets an answer. A runner cancelled before
        it ever ran (by ``cancel`` or ``close``) had not touched its worker: the slot is free."""
        if not runner.cancelled() and runner.exception() is not None:  # pragma: no cover - a bug
            log.error("channel %s: the dispatch of %s failed", slot.port, job.task.play_id, exc_info=runner.exception())
        if job.future.done() or job.runner is not runner:  # answered, or back in the queue
            return
        if self._closing:
            job.future.set_exception(PoolClosed("the channel pool closed before the task ran"))
            return
        job.future.set_result(_failed(job.task, "cancelled before it ran on a channel", None, retryable=False))
        if slot.job is job:
            self._free(slot)
            self._pump()

    async def _run(self, slot: ChannelSlot, job: Job) -> None:
        loop = asyncio.get_running_loop()
        task = job.task
        now = loop.time()
        by_task = now + (task.deadline - utcnow()).total_seconds() + self.deadline_grace_s
        by_channel = now + self.execution_timeout_s
        if by_task <= by_channel:
            deadline, timed_out = by_task, f"timed out after {task.timeout_ms} ms"
        else:
            limit_ms = round(self.execution_timeout_s * 1000)
            deadline, timed_out = by_channel, f"timed out after {limit_ms} ms (the channel execution timeout)"
        if deadline <= now:  # expired while it waited: the channel need not be touched
            self._free(slot)
            self._finish(job, _failed(task, timed_out, None, retryable=True), "timed_out")
            self._pump()
            return
        bug = False
        try:
            outcome: Outcome = await converse(
                job,
                slot,
                deadline=deadline,
                heartbeat_timeout_s=self.heartbeat_timeout_s,
                on_accepted=partial(self._accepted, slot, job),
                on_pending=partial(self._pending, slot, job),
                on_progress=partial(self._progress, job),
            )
            if isinstance(outcome, Lost):
                code = await slot.exit_code(within_s=0.2)
                if code is not None:
                    outcome = Lost(f"{outcome.reason} (worker exited with code {code})")
        except asyncio.CancelledError:
            if self._closing:
                if not job.future.done():
                    job.future.set_exception(PoolClosed("the channel pool closed while the task ran"))
                return
            self._finish(job, _failed(task, "cancelled on its channel", job.accepted_at, retryable=False), "cancelled")
            self._restart(slot, "its task was cancelled")
            return
        except Exception as exc:  # a dispatcher bug must not leave a submitter waiting forever
            log.exception("channel %s: dispatching %s/%s failed", slot.port, task.play_id, task.flowlet)
            outcome, bug = Lost(f"dispatcher error: {type(exc).__name__}: {exc}"), True
        if isinstance(outcome, FlowletResult):
            self._free(slot)
            self._finish(job, outcome, "succeeded" if outcome.ok else "failed")
            self._pump()
        elif isinstance(outcome, TimedOut):
            log.warning("channel %s: %s/%s %s; killing its worker", slot.port, task.play_id, task.flowlet, timed_out)
            if self.metrics is not None:
                self.metrics.channel_timeouts.inc()
            self._finish(job, _failed(task, timed_out, job.accepted_at, retryable=True), "timed_out")
            self._restart(slot, timed_out)
        elif job.started is None and not bug and not job.future.done():
            # The worker never accepted it, so the module never ran: not an attempt lost, a
            # channel. The task goes back to the head of the queue; the slot is restarted.
            log.warning("channel %s: %s; %s/%s waits for another channel", slot.port, outcome.reason, *job_id(task))
            job.slot = job.runner = None
            self._queue.push_front(job)
            self._restart(slot, "lost before it accepted a task")
            self._pump()
        else:
            log.warning(
                "channel %s: lost while running %s/%s: %s", slot.port, task.play_id, task.flowlet, outcome.reason
            )
            if self.metrics is not None:
                self.metrics.channels_lost.inc()
            self._finish(job, _failed(task, f"channel_lost: {outcome.reason}", job.accepted_at, retryable=True), "lost")
            self._restart(slot, "lost")

    def _accepted(self, slot: ChannelSlot, job: Job, msg: Accepted) -> None:
        job.accepted_at = utcnow()
        job.started = asyncio.get_running_loop().time()
        slot.since = job.accepted_at
        t = job.task
        for hook in (job.on_dispatch, self.on_dispatch):
            if hook is not None:
                try:
                    hook(t.play_id, t.flowlet, t.attempt, slot.address)
                except Exception:
                    log.exception("channel %s: the on_dispatch hook failed", slot.port)

    def _pending(self, slot: ChannelSlot, job: Job, msg: PendingNote) -> None:
        job.pending = True
        if self.on_pending is not None:
            t = job.task
            try:
                self.on_pending(t.play_id, t.flowlet, t.attempt, slot.address)
            except Exception:
                log.exception("channel %s: the on_pending hook failed", slot.port)

    def _progress(self, job: Job, msg: ProgressNote) -> None:
        job.progress = msg.progress

    def _count_refusal(self, reason: str) -> None:
        self.refusals[reason] += 1
        if self.metrics is not None:
            self.metrics.channel_refusals.labels(reason).inc()
        self._refused.set()
        self._refused = asyncio.Event()

    async def refused(self, reason: str, at_least: int = 1) -> int:
        """Once the channels have refused ``at_least`` lines or connections for ``reason``: how many."""
        while self.refusals[reason] < at_least:
            await self._refused.wait()
        return self.refusals[reason]

    def _finish(self, job: Job, result: FlowletResult, outcome: str) -> None:
        if self.metrics is not None and job.started is not None:
            self.metrics.channel_task_duration.labels(outcome).observe(asyncio.get_running_loop().time() - job.started)
        if not job.future.done():
            job.future.set_result(result)

    def _free(self, slot: ChannelSlot) -> None:
        slot.free()
        self._gauges()

    # ------------------------------------------------------------ worker processes

    def _watch(self, slot: ChannelSlot) -> None:
        proc = slot.process
        if proc is not None:
            self._spawn_background(self._await_exit(slot, proc), f"channel-{slot.port}-watch")

    async def _await_exit(self, slot: ChannelSlot, proc: asyncio.subprocess.Process) -> None:
        async for said in slot.reports(proc):
            if said.get("type") == "refused":
                self._count_refusal(str(said.get("reason", "unknown")))
        code = await proc.wait()
        if self._closing or slot.process is not proc or slot.state != "idle":
            return  # closing, replaced, or busy (its task sees the connection drop and restarts it)
        log.warning("channel %s: idle worker %s exited with code %s", slot.port, proc.pid, code)
        self._restart(slot, f"worker exited with code {code}")

    def _restart(self, slot: ChannelSlot, why: str) -> None:
        slot.restarting()
        self._gauges()
        self._spawn_background(self._respawn(slot, why), f"channel-{slot.port}-restart")

    async def _respawn(self, slot: ChannelSlot, why: str) -> None:
        await slot.kill()
        if self.metrics is not None:
            self.metrics.channel_restarts.inc()
        delay, longest = RESTART_BACKOFF_S
        while not self._closing:
            try:
                await slot.spawn(self.start_timeout_s)
            except (ChannelError, Flow8Error, OSError) as exc:
                slot.failed(str(exc))
                log.error("channel %s: cannot restart its worker (%s): %s; again in %.1f s", slot.port, why, exc, delay)
                await asyncio.sleep(delay)  # a back-off between attempts, not a synchronisation
                delay = min(delay * 2, longest)
                continue
            self._watch(slot)
            slot.up(restarted=True)
            log.info("channel %s: worker restarted (%s) as pid %s", slot.port, why, slot.pid)
            self._pump()
            return
