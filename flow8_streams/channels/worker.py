"""The channel worker: one process behind one port, one task at a time.

    python -m flow8_streams.channels.worker --port 7701 [--modules mods.py] \
        [--kv-db flow8.db | --kv-mongodb-database flow8 [--kv-mongodb-uri URI]]

It listens on ``host:port``; a ``run`` line starts a task, and the same connection
gets ``accepted``, a ``heartbeat`` every ``--heartbeat-s`` while the module runs (or
waits for an outside ``complete``), and the ``result``. Other connections may ask
for ``status`` or complete/progress a pending flowlet at any time. A line that is
not a message gets an ``error`` reply and changes nothing.

Plain (not async) modules run on a thread of this process (``ModuleThreads``), so a
CPU-bound module does not stop the heartbeats. The KV store modules see is a SQLite
file (``--kv-db``, the embedded runtime) or a MongoDB database (``--kv-mongodb-database``, the streams
runtime; the URI from ``--kv-mongodb-uri`` or ``$MONGODB_URI``, so that a password
need not show in the process list). When its ready line is written to stdout
(``{"type": "ready", ...}``) the worker serves; a start that fails writes
``{"type": "error", ...}`` instead and exits 2. With ``--parent-pid`` it exits when
that process is gone, so a killed instance leaves no workers holding its ports.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import logging
import os
import signal
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import orjson

from flow8_streams.channels.exceptions import NoKVStore, ProtocolError
from flow8_streams.channels.pending import Pending
from flow8_streams.channels.ports import DEFAULT_HOST
from flow8_streams.channels.protocol import (
    MAX_LINE,
    TO_WORKER,
    Accepted,
    Ack,
    ChannelState,
    Complete,
    ErrorReply,
    Heartbeat,
    PendingNote,
    Progress,
    ProgressNote,
    ResultMessage,
    Run,
    Status,
    StatusRequest,
    decode,
    encode,
)
from flow8_streams.domain.messages import FlowletResult, Task
from flow8_streams.errors import Flow8Error
from flow8_streams.modules.executor import execute_task
from flow8_streams.modules.registry import ModuleRegistry
from flow8_streams.modules.threads import ModuleThreads
from flow8_streams.stores.ports import KVEntry, KVStore

log = logging.getLogger("flow8.channel.worker")
PARENT_CHECK_S = 1.0
MAX_EARLY = 100  # completions kept for a module that has not yet returned Pending


def utcnow() -> datetime:
    return datetime.now(UTC)


class NoKV:
    """The KV store of a channel started without one: every call fails the flowlet, cleanly."""

    def __init__(self, port: int) -> None:
        self._why = f"the channel on port {port} has no KV store (start it with --kv-db or --kv-mongodb-database)"

    async def get(self, company_id: str, key: str) -> KVEntry | None:
        raise NoKVStore(self._why)

    async def set(self, company_id: str, key: str, value: Any) -> KVEntry:
        raise NoKVStore(self._why)

    async def cas(self, company_id: str, key: str, value: Any, expected_version: int) -> KVEntry | None:
        raise NoKVStore(self._why)

    async def incr(self, company_id: str, key: str, by: float, op_id: str) -> KVEntry:
        raise NoKVStore(self._why)


def load_registry(sources: Sequence[str]) -> ModuleRegistry:
    """The modules a channel runs; none inline: plain ones all run on a thread."""
    loaded = ModuleRegistry.default(sources)
    registry = ModuleRegistry()
    for name in loaded.names():
        spec = loaded.get(name)
        registry.register(name, spec.fn, channel=spec.channel, inline=False)
    return registry


class ChannelWorker:
    def __init__(
        self,
        port: int,
        *,
        host: str = DEFAULT_HOST,
        sources: Sequence[str] = (),
        kv: KVStore | None = None,
        heartbeat_s: float = 1.0,
    ) -> None:
        self.port = port
        self.host = host
        self.sources = tuple(sources)
        self.kv: KVStore = kv if kv is not None else NoKV(port)
        self.heartbeat_s = heartbeat_s
        self.threads = ModuleThreads(1)  # one task at a time; a stuck one dies with the process
        self.state: ChannelState = "idle"
        self.since = utcnow()
        self.task: Task | None = None
        self.token: str | None = None
        self.progress: dict[str, Any] | None = None
        self._registries: dict[tuple[str, ...], ModuleRegistry] = {}
        self._runner: asyncio.Task[None] | None = None
        self._reporter: asyncio.StreamWriter | None = None  # the connection of the running task
        self._waiting: dict[str, asyncio.Future[Complete]] = {}
        self._early: dict[str, Complete] = {}  # completions that came before the module returned Pending
        self._server: asyncio.Server | None = None
        self._connections: dict[asyncio.StreamWriter, asyncio.Task[Any]] = {}

    def registry(self, sources: Sequence[str]) -> ModuleRegistry:
        key = tuple(sources) or self.sources
        if key not in self._registries:
            self._registries[key] = load_registry(key)
        return self._registries[key]

    async def listen(self) -> None:
        self._server = await asyncio.start_server(self._connection, self.host, self.port, limit=MAX_LINE)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        if self._runner is not None:
            self._runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._runner
        # End each connection by closing it: its handler sees EOF and returns (a handler
        # task that ends cancelled trips asyncio's own done-callback in Python 3.11).
        handlers = list(self._connections.values())
        for writer in list(self._connections):
            writer.close()
        if handlers:
            await asyncio.wait(handlers, timeout=2.0)
        if self._server is not None:
            await self._server.wait_closed()
        self.threads.close()

    # ------------------------------------------------------------ connections

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        mine: asyncio.Task[None] | None = None  # a task this connection started
        handler = asyncio.current_task()
        assert handler is not None
        self._connections[writer] = handler
        try:
            while True:
                try:
                    line = await reader.readline()
                except ValueError:  # a line longer than MAX_LINE: the rest of it cannot be framed
                    writer.write(encode(ErrorReply(error=f"line longer than {MAX_LINE} bytes; closing")))
                    break
                if not line:
                    break
                if not line.strip():
                    continue
                reply = self._handle(line, writer)
                if isinstance(reply, asyncio.Task):
                    mine = reply
                elif reply is not None:
                    writer.write(encode(reply))
                await writer.drain()
        except (ConnectionError, OSError, asyncio.CancelledError):
            pass  # cancelled: the loop is shutting down; end normally (see close())
        finally:
            self._connections.pop(writer, None)
            if mine is not None and not mine.done():
                # Whoever asked for the task is gone: nobody would read its result.
                log.info("channel %s: the dispatcher's connection closed mid-task; cancelling it", self.port)
                mine.cancel()
            writer.close()

    def _handle(self, line: bytes, writer: asyncio.StreamWriter) -> Any:
        try:
            msg = decode(line, TO_WORKER)
        except ProtocolError as exc:
            return ErrorReply(error=str(exc))
        if isinstance(msg, StatusRequest):
            return self.status()
        if isinstance(msg, Run):
            if self._runner is not None:
                assert self.task is not None
                busy_with = f"{self.task.play_id}/{self.task.flowlet}"
                return ErrorReply(error=f"channel {self.port} is busy with {busy_with}; one task at a time")
            self._runner = asyncio.create_task(self._run(msg, writer), name=f"channel-{self.port}")
            return self._runner
        if isinstance(msg, Complete):
            return self._complete(msg)
        assert isinstance(msg, Progress)
        return self._progress(msg)

    def status(self) -> Status:
        t = self.task
        return Status(
            port=self.port,
            pid=os.getpid(),
            state=self.state,
            since=self.since,
            company_id=t and t.company_id,
            play_id=t and t.play_id,
            flowlet=t and t.flowlet,
            attempt=t and t.attempt,
            module_ref=t and t.module_ref,
            token=self.token,
            progress=self.progress,
        )

    def _complete(self, msg: Complete) -> Ack | ErrorReply:
        fut = self._waiting.get(msg.token)
        if fut is not None and not fut.done():
            fut.set_result(msg)
            return Ack(detail=f"{self.task.play_id}/{self.task.flowlet} completed" if self.task else None)
        if self.state == "busy" and self.token is None and len(self._early) < MAX_EARLY:
            # The service answered before the module even returned Pending: keep it for the task.
            self._early[msg.token] = msg
            return Ack(detail="kept until the running module hands over this token")
        return ErrorReply(error=f"channel {self.port} has no pending flowlet with token {msg.token!r}")

    def _progress(self, msg: Progress) -> Ack | ErrorReply:
        if self.token != msg.token:
            return ErrorReply(error=f"channel {self.port} has no pending flowlet with token {msg.token!r}")
        self.progress = msg.details()
        if self._reporter is not None:
            self._reporter.write(encode(ProgressNote(token=msg.token, progress=self.progress)))
        return Ack()

    # ------------------------------------------------------------ one task

    def _become(self, state: ChannelState) -> None:
        self.state = state
        self.since = utcnow()

    async def _run(self, msg: Run, writer: asyncio.StreamWriter) -> None:
        task = msg.task
        self.task, self._reporter = task, writer
        self._become("busy")
        beating = asyncio.create_task(self._heartbeats(writer), name=f"channel-{self.port}-heartbeat")
        try:
            writer.write(
                encode(
                    Accepted(
                        port=self.port,
                        pid=os.getpid(),
                        play_id=task.play_id,
                        flowlet=task.flowlet,
                        attempt=task.attempt,
                    )
                )
            )
            result = await self._execute(task, msg.modules)
            if result.ok and isinstance(result.output, Pending):
                result = await self._wait_outside(task, result, result.output, writer)
            writer.write(encode(ResultMessage(result=result)))
            await writer.drain()
        except (ConnectionError, OSError):
            log.warning("channel %s: could not report %s/%s", self.port, task.play_id, task.flowlet)
        finally:
            beating.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await beating
            for fut in self._waiting.values():
                fut.cancel()
            self._waiting.clear()
            self._early.clear()
            self.task = self._reporter = self._runner = None
            self.token = self.progress = None
            self._become("idle")

    async def _execute(self, task: Task, sources: Sequence[str]) -> FlowletResult:
        started = utcnow()
        try:
            registry = self.registry(sources)
        except Flow8Error as exc:
            return _failed(task, f"channel {self.port}: {exc}", started, retryable=False)
        return await execute_task(registry, self.kv, utcnow, task, threads=self.threads)

    async def _wait_outside(
        self, task: Task, handed: FlowletResult, pending: Pending, writer: asyncio.StreamWriter
    ) -> FlowletResult:
        fut: asyncio.Future[Complete] = asyncio.get_running_loop().create_future()
        self._waiting[pending.token] = fut
        early = self._early.pop(pending.token, None)
        if early is not None:
            fut.set_result(early)
        self.token = pending.token
        self._become("pending")
        writer.write(encode(PendingNote(token=pending.token, detail=pending.detail)))
        done = await fut
        ended = utcnow()
        if done.ok:
            try:
                orjson.dumps(done.output)
            except orjson.JSONEncodeError as exc:  # pragma: no cover - it came in as JSON
                return _failed(task, f"outside output is not JSON: {exc}", handed.started_at, retryable=False)
            return handed.model_copy(update={"output": done.output, "ended_at": ended})
        error = done.error or f"failed (reported to channel {self.port} by an outside service)"
        return _failed(task, error, handed.started_at, retryable=done.retryable, ended=ended)

    async def _heartbeats(self, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, OSError):
            while True:
                await asyncio.sleep(self.heartbeat_s)
                writer.write(encode(Heartbeat(state=self.state)))
                await writer.drain()


def _failed(
    task: Task, error: str, started: datetime, *, retryable: bool, ended: datetime | None = None
) -> FlowletResult:
    return FlowletResult.failure(task, error, now=ended or utcnow(), started_at=started, retryable=retryable)


# ---------------------------------------------------------------- the process


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m flow8_streams.channels.worker", description=__doc__.split("\n")[0])
    p.add_argument("--port", type=int, required=True, help="The channel's port.")
    p.add_argument("--host", default=DEFAULT_HOST, help="Address to listen on (default 127.0.0.1).")
    p.add_argument("--modules", action="append", default=[], help="Module source: a .py file or a package.")
    kv = p.add_mutually_exclusive_group()
    kv.add_argument("--kv-db", default=None, help="SQLite file holding the KV store; without a KV store KV calls fail.")
    kv.add_argument("--kv-mongodb-database", default=None, help="MongoDB database holding the KV store.")
    p.add_argument(
        "--kv-mongodb-uri",
        default=os.environ.get("MONGODB_URI"),
        help="MongoDB URI for --kv-mongodb-database (default $MONGODB_URI).",
    )
    p.add_argument("--kv-timeout-ms", type=int, default=10_000, help="Bound on one MongoDB operation.")
    p.add_argument(
        "--kv-incr-dedup-seconds", type=float, default=86_400, help="How long a kv.incr operation id is remembered."
    )
    p.add_argument("--heartbeat-s", type=float, default=1.0, help="Seconds between heartbeats while a task runs.")
    p.add_argument("--parent-pid", type=int, default=None, help="Exit when this process is no longer the parent.")
    p.add_argument("--log-level", default="warning", choices=["debug", "info", "warning", "error"])
    return p


def _say(payload: dict[str, Any]) -> None:
    sys.stdout.buffer.write(orjson.dumps(payload) + b"\n")
    sys.stdout.flush()


async def _serve(args: argparse.Namespace) -> int:
    kv: KVStore | None = None
    store = mongo = None
    try:
        if args.kv_db:
            from flow8_streams.stores.sqlite import SqliteStore

            store = SqliteStore(args.kv_db, kv_incr_dedup_seconds=args.kv_incr_dedup_seconds)
            kv = store.kv
        elif args.kv_mongodb_database:
            if not args.kv_mongodb_uri:
                raise Flow8Error("--kv-mongodb-database needs --kv-mongodb-uri or $MONGODB_URI")
            from flow8_streams.stores.mongo import MongoStore

            mongo = MongoStore(
                args.kv_mongodb_uri,
                args.kv_mongodb_database,
                timeout_ms=args.kv_timeout_ms,
                kv_incr_dedup_seconds=args.kv_incr_dedup_seconds,
            )
            kv = mongo.kv
        worker = ChannelWorker(args.port, host=args.host, sources=args.modules, kv=kv, heartbeat_s=args.heartbeat_s)
        worker.registry(())  # load the modules now: a broken source fails the start, not a task
        try:
            await worker.listen()
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise Flow8Error(
                    f"channel port {args.port} on {args.host} already in use; another flow8 instance's "
                    "CHANNEL_PORT_RANGE probably overlaps this one's"
                ) from None
            raise Flow8Error(f"channel port {args.port} on {args.host}: {exc.strerror or exc}") from None
    except Flow8Error as exc:
        _say({"type": "error", "port": args.port, "error": str(exc)})
        if store is not None:
            store.close()
        if mongo is not None:
            await mongo.close()
        return 2
    _say({"type": "ready", "port": args.port, "pid": os.getpid()})
    os.dup2(2, 1)  # a module's print() must not fill a pipe nobody reads any more

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        if args.parent_pid is None:
            await stop.wait()
        else:
            while os.getppid() == args.parent_pid:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(PARENT_CHECK_S):
                        await stop.wait()
                if stop.is_set():
                    break
            else:
                log.warning("channel %s: parent %s is gone; exiting", args.port, args.parent_pid)
    finally:
        await worker.close()
        if store is not None:
            store.close()
        if mongo is not None:
            await mongo.close()
    return 0


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    raise SystemExit(asyncio.run(_serve(args)))


if __name__ == "__main__":
    main()
