"""One channel slot: a port and the worker process that serves it (once one is needed)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import orjson

from flow8_streams.channels import client
from flow8_streams.channels.exceptions import ChannelError, PortInUse, WorkerStartFailed

if TYPE_CHECKING:
    from flow8_streams.channels.dispatcher import Job

log = logging.getLogger("flow8.channels")
# cold: no worker started yet (its port reserved by the pool); it starts when a task waits for it
SlotState = Literal["cold", "starting", "idle", "busy", "restarting", "down", "closed"]
WORKER_MODULE = "flow8_streams.channels.worker"


def utcnow() -> datetime:
    return datetime.now(UTC)


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
    """How to start the worker of one port."""

    def __init__(
        self,
        *,
        host: str,
        module_sources: Sequence[str],
        kv_db: str | os.PathLike[str] | None,
        heartbeat_s: float,
        python: str = sys.executable,
        log_level: str = "warning",
        kv_mongodb: MongoKV | None = None,
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
        return [*argv, "--log-level", self.log_level]

    def env(self) -> dict[str, str] | None:
        """The worker's environment: ours, with the MongoDB URI (kept out of the process list)."""
        if self.kv_mongodb is None:
            return None
        return {**os.environ, "MONGODB_URI": self.kv_mongodb.uri}


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

    def become(self, state: SlotState) -> None:
        self.state = state
        self.since = utcnow()

    async def spawn(self, timeout_s: float) -> asyncio.subprocess.Process:
        """Start the worker and return once it answers ``status`` on the port."""
        proc = await asyncio.create_subprocess_exec(
            *self.command.argv(self.port),
            env=self.command.env(),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=None,  # the worker's log goes where ours goes
            start_new_session=True,  # a Ctrl-C at the terminal is ours to handle, not each worker's
        )
        self.process = proc
        try:
            assert proc.stdout is not None
            async with asyncio.timeout(timeout_s):
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
