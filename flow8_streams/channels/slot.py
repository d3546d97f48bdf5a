"""One channel slot: a port, the worker process that serves it (once one is needed), and
the one place its state changes: ``MOVES`` lists every move a slot may make."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import orjson

from flow8_streams.channels import client
from flow8_streams.channels.exceptions import ChannelError, PortInUse, WorkerStartFailed
from flow8_streams.channels.protocol import DEFAULT_IDLE_TIMEOUT_S, DEFAULT_MAX_CONNECTIONS, MAX_LINE
from flow8_streams.clock import utcnow

if TYPE_CHECKING:
    from flow8_streams.domain.messages import FlowletResult, Task

log = logging.getLogger("flow8.channels")
# cold: no worker started yet (its port reserved by the pool); it starts when a task waits for it
SlotState = Literal["cold", "starting", "idle", "busy", "restarting", "down", "closed"]
# Every move a slot makes; any other is a bug. ``down`` after a failed start: a cold slot's
# first start is tried again later (``starting``), a restart again and again (``down`` or ``idle``).
MOVES: dict[SlotState, frozenset[SlotState]] = {
    "cold": frozenset({"starting", "closed"}),
    "starting": frozenset({"idle", "down", "closed"}),
    "idle": frozenset({"busy", "restarting", "closed"}),
    "busy": frozenset({"idle", "restarting", "closed"}),
    "restarting": frozenset({"idle", "down", "closed"}),
    "down": frozenset({"starting", "idle", "down", "closed"}),
    "closed": frozenset(),
}
DispatchHook = Callable[[str, str, int, str], None]
"""``(play_id, flowlet, attempt, channel)``: a channel accepted the attempt (record FlowletDispatched)."""
PendingHook = Callable[[str, str, int, str], None]
"""``(play_id, flowlet, attempt, channel)``: the module handed its work to an outside service."""
WORKER_MODULE = "flow8_streams.channels.worker"


def _source_arg(source: str) -> str:
    """A module file as an absolute path (the worker may resolve it from elsewhere); a package as is."""
    path = Path(source)
    return str(path.resolve()) if source.endswith(".py") or path.exists() else source


@dataclass(frozen=True)
class MongoKV:
    """The MongoDB database whose KV store channel workers use (the streams runtime's)."""

    uri: str
    database: str
    timeout_ms: int = 10_000
    kv_incr_dedup_seconds: float = 86_400


class WorkerCommand:
    """How to start the worker of one port. ``pool_secret`` (signs every ``run``) and
    ``token_key`` (mints completion tokens) go to the worker on its stdin, never in argv
    or the environment."""

    def __init__(
        self,
        *,
        host: str,
        module_sources: Sequence[str],
        kv_db: str | os.PathLike[str] | None,
        heartbeat_s: float,
        pool_secret: bytes,
        token_key: bytes,
        python: str = sys.executable,
        log_level: str = "warning",
        kv_mongodb: MongoKV | None = None,
        max_line: int = MAX_LINE,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        idle_timeout_s: float = DEFAULT_IDLE_TIMEOUT_S,
    ) -> None:
        if kv_db is not None and kv_mongodb is not None:
            raise ValueError("a channel has one KV store: kv_db or kv_mongodb, not both")
        self.host = host
        self.module_sources = [_source_arg(s) for s in module_sources]
        self.kv_db = None if kv_db is None else str(Path(kv_db).resolve())
        self.kv_mongodb = kv_mongodb
        self.heartbeat_s = heartbeat_s
        self.python = python
        self.log_level = log_level
        self.pool_secret = pool_secret
        self._token_key = token_key
        self.max_line = max_line
        self.max_connections = max_connections
        self.idle_timeout_s = idle_timeout_s
        # the pool's private directory (0700) of its workers' control sockets, made by ``start``
        self.control_dir: Path | None = None

    def control(self, port: int) -> str:
        """The Unix socket the pool sends ``port``'s worker its tasks on."""
        if self.control_dir is None:
            raise ChannelError("the pool has no control directory yet (start it first)")
        return str(self.control_dir / f"{port}.sock")

    def secrets_line(self) -> bytes:
        """What the worker reads on its stdin."""
        return orjson.dumps({"pool_secret": self.pool_secret.hex(), "token_key": self._token_key.hex()}) + b"\n"

    def argv(self, port: int) -> list[str]:
        argv = [self.python, "-m", WORKER_MODULE, "--port", str(port), "--host", self.host]
        for source in self.module_sources:
            argv += ["--modules", source]
        if self.kv_db is not None:
            argv += ["--kv-db", self.kv_db]
        if self.kv_mongodb is not None:
            m = self.kv_mongodb
            argv += ["--kv-mongodb-database", m.database, "--kv-timeout-ms", str(m.timeout_ms)]
            argv += ["--kv-incr-dedup-seconds", str(m.kv_incr_dedup_seconds)]
        argv += ["--heartbeat-s", str(self.heartbeat_s), "--parent-pid", str(os.getpid())]
        argv += ["--max-line", str(self.max_line), "--max-connections", str(self.max_connections)]
        argv += ["--idle-timeout-s", str(self.idle_timeout_s), "--control", self.control(port)]
        return [*argv, "--log-level", self.log_level]

    def env(self) -> dict[str, str] | None:
        """The worker's environment: ours, with the MongoDB URI (kept out of the process list)."""
        if self.kv_mongodb is None:
            return None
        return {**os.environ, "MONGODB_URI": self.kv_mongodb.uri}


@dataclass(eq=False)
class Job:
    """A submitted task, from its queueing to its result."""

    task: Task
    future: asyncio.Future[FlowletResult]
    on_dispatch: DispatchHook | None
    queued_at: float  # loop time
    slot: ChannelSlot | None = None
    runner: asyncio.Task[None] | None = None
    accepted_at: datetime | None = None
    started: float | None = None  # loop time the worker accepted it
    pending: bool = False
    progress: dict[str, object] | None = field(default=None)


class ChannelSlot:
    def __init__(self, port: int, command: WorkerCommand) -> None:
        self.port = port
        self.command = command
        self.state: SlotState = "cold"
        self.since = utcnow()
        self.process: asyncio.subprocess.Process | None = None
        self.job: Job | None = None
        self.restarts = 0
        # a first start that failed: why, and when (loop time) a waiting task may try it again
        self.error: str | None = None
        self.retry_at: float | None = None
        self.backoff_s = 0.0

    @property
    def address(self) -> str:
        return f"{self.command.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        return None if self.process is None else self.process.pid

    def _move(self, state: SlotState) -> None:
        if state not in MOVES[self.state]:
            raise RuntimeError(f"channel {self.port}: a slot does not move from {self.state} to {state}")
        self.state = state
        self.since = utcnow()

    def starting(self) -> None:
        """Its worker is being started (a cold slot, or one whose start failed)."""
        self._move("starting")

    def up(self, *, restarted: bool = False) -> None:
        """Its worker answers: idle, ready for a task."""
        self.error = self.retry_at = None
        self.backoff_s = 0.0
        self.restarts += restarted
        self._move("idle")

    def failed(self, error: str, retry_at: float | None = None) -> None:
        """Its worker did not start: ``down``; a waiting task may try it again at ``retry_at`` (loop time)."""
        self.error, self.retry_at = error, retry_at
        self._move("down")

    def take(self, job: Job) -> None:
        self.job, job.slot = job, self
        self._move("busy")

    def free(self) -> None:
        self.job = None
        self._move("idle")

    def restarting(self) -> None:
        """Its worker is killed and started again (the task it ran, if any, is answered already)."""
        self.job = None
        self._move("restarting")

    def close(self) -> None:
        self.job = None
        self._move("closed")

    async def spawn(self, timeout_s: float) -> asyncio.subprocess.Process:
        """Start the worker and return once it answers ``status`` on the port."""
        proc = await asyncio.create_subprocess_exec(
            *self.command.argv(self.port),
            env=self.command.env(),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,  # the worker's report pipe (module output goes to stderr)
            stderr=None,  # the worker's log goes where ours goes
            start_new_session=True,  # a Ctrl-C at the terminal is ours to handle, not each worker's
        )
        self.process = proc
        try:
            assert proc.stdin is not None and proc.stdout is not None
            async with asyncio.timeout(timeout_s):
                proc.stdin.write(self.command.secrets_line())
                with contextlib.suppress(ConnectionError):  # a worker that died at once: said below
                    await proc.stdin.drain()
                proc.stdin.close()
                line = await proc.stdout.readline()
                if not line:
                    code = await proc.wait()
                    raise WorkerStartFailed(
                        f"channel worker on port {self.port} exited with code {code} before it listened"
                    )
                said = orjson.loads(line)
                if said.get("type") != "ready":
                    await proc.wait()
                    error = str(said.get("error", said))
                    if "already in use" in error:
                        raise PortInUse([self.port], self.command.host)
                    raise WorkerStartFailed(f"channel worker on port {self.port} did not start: {error}")
                answer = await client.status(self.port, host=self.command.host, timeout=timeout_s)
                if answer.pid != proc.pid:
                    raise WorkerStartFailed(
                        f"port {self.port} is answered by process {answer.pid}, not by its worker {proc.pid}"
                    )
        except TimeoutError:
            await self.kill()
            raise WorkerStartFailed(f"channel worker on port {self.port} did not answer within {timeout_s} s") from None
        except (ChannelError, orjson.JSONDecodeError) as exc:
            await self.kill()
            if isinstance(exc, ChannelError):
                raise
            raise WorkerStartFailed(f"channel worker on port {self.port} wrote {line!r} instead of ready") from None
        except BaseException:
            await self.kill()
            raise
        return proc

    async def reports(self, proc: asyncio.subprocess.Process) -> AsyncIterator[dict[str, Any]]:
        """What ``proc`` reports after it is ready (refusals), until it exits."""
        assert proc.stdout is not None
        while line := await proc.stdout.readline():
            with contextlib.suppress(orjson.JSONDecodeError):
                said = orjson.loads(line)
                if isinstance(said, dict):
                    yield said

    async def kill(self) -> int | None:
        """kill -9 the worker (and whatever it started) and reap it; its exit code."""
        proc = self.process
        if proc is None:
            return None
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)  # its own session: the group is the worker and its children
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
        return await proc.wait()

    async def stop(self, grace_s: float = 2.0) -> None:
        """SIGTERM, then kill -9 after ``grace_s``."""
        proc = self.process
        if proc is None:
            return
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.terminate()
            try:
                async with asyncio.timeout(grace_s):
                    await proc.wait()
            except TimeoutError:
                log.warning("channel %s: worker %s ignored SIGTERM; killing it", self.port, proc.pid)
        await self.kill()

    async def exit_code(self, within_s: float) -> int | None:
        """The worker's exit code if it exits within ``within_s`` (None while it lives)."""
        proc = self.process
        if proc is None:
            return None
        if proc.returncode is None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(within_s):
                    await proc.wait()
        return proc.returncode
