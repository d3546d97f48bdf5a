"""The channel worker: one process behind one port, one task at a time.

    python -m flow8_streams.channels.worker --port 7701 [--modules mods.py] \
        [--kv-db flow8.db | --kv-mongodb-database flow8 [--kv-mongodb-uri URI]] < secrets

It is started by a ``ChannelPool``, which writes one JSON line to its stdin,
``{"pool_secret": HEX, "token_key": HEX}``, and closes it: secrets never go in the process
list or the environment. It listens on ``host:port`` and on ``--control``, a Unix socket in
the pool's private directory; a ``run`` line there, signed with the pool secret, starts a
task (any other ``run``, and every ``run`` on the port, is refused and nothing is loaded or
run), and the same connection gets ``accepted``, a ``heartbeat`` every ``--heartbeat-s`` while the module
runs (or waits for an outside ``complete``), and the ``result``. Other connections may ask
for ``status`` or complete/progress a pending flowlet with the token flow8 minted for it.
A line that is not a message gets an ``error`` reply and changes nothing. The modules are
the ``--modules`` sources, loaded once at start.

Connections on the port are bounded: a line of at most ``--max-line`` bytes, at most
``--max-connections`` at once (the pool's, on the control socket, are not counted, so outside
clients never lock the pool out), each closed after ``--idle-timeout-s`` without a whole line.
Every refusal is an ``error`` reply (then a close where the connection cannot go on), and is
reported to the pool, which counts it.

Plain (not async) modules run on a thread of this process (``ModuleThreads``), so a
CPU-bound module does not stop the heartbeats. The KV store modules see is a SQLite
file (``--kv-db``, the embedded runtime) or a MongoDB database (``--kv-mongodb-database``, the streams
runtime; the URI from ``--kv-mongodb-uri`` or ``$MONGODB_URI``, so that a password
need not show in the process list). The worker's stdout is its report pipe to the pool:
``{"type": "ready", ...}`` once it serves (or ``{"type": "error", ...}`` and exit 2), then
``{"type": "refused", "reason": ...}`` lines. Whatever else writes to fd 1 (a module's
``print``, at import or later) goes to stderr instead. With ``--parent-pid`` it exits when
that process is gone, so a killed instance leaves no workers holding its ports.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import functools
import logging
import os
import signal
import sys
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import IO, Any

import orjson

from flow8_streams.channels.exceptions import NoKVStore, ProtocolError
from flow8_streams.channels.pending import Pending
from flow8_streams.channels.ports import DEFAULT_HOST
from flow8_streams.channels.protocol import (
    DEFAULT_IDLE_TIMEOUT_S,
    DEFAULT_MAX_CONNECTIONS,
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
    RunBody,
    Status,
    StatusRequest,
    decode,
    encode,
)
from flow8_streams.channels.tokens import completion_token, fingerprint, run_mac_ok, same_token
from flow8_streams.clock import utcnow
from flow8_streams.domain.messages import FlowletResult, Task
from flow8_streams.errors import Flow8Error
from flow8_streams.logs import configure as configure_logs
from flow8_streams.logs import format_from_env, log_context
from flow8_streams.modules.executor import execute_task
from flow8_streams.modules.registry import ModuleRegistry
from flow8_streams.modules.threads import ModuleThreads
from flow8_streams.stores.ports import KVEntry, KVStore

log = logging.getLogger("flow8.channel.worker")
PARENT_CHECK_S = 1.0
RUN_FRESH_S = 120.0  # a run signed longer ago (or ahead) than this is refused: no replays
Refused = Callable[[str], None]


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

    async def keys(self, company_id: str, prefix: str = "", limit: int = 50, after: str | None = None) -> list[str]:
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
        pool_secret: bytes,
        token_key: bytes,
        host: str = DEFAULT_HOST,
        sources: Sequence[str] = (),
        kv: KVStore | None = None,
        heartbeat_s: float = 1.0,
        max_line: int = MAX_LINE,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        idle_timeout_s: float = DEFAULT_IDLE_TIMEOUT_S,
        on_refused: Refused | None = None,
        control: str | None = None,
    ) -> None:
        self.port = port
        self.host = host
        self.control = control
        self.registry = load_registry(sources)
        self.kv: KVStore = kv if kv is not None else NoKV(port)
        self.heartbeat_s = heartbeat_s
        self.max_line = max_line
        self.max_connections = max_connections
        self.idle_timeout_s = idle_timeout_s
        self._pool_secret = pool_secret
        self._token_key = token_key
        self._on_refused = on_refused
        self.threads = ModuleThreads(1)  # one task at a time; a stuck one dies with the process
        self.state: ChannelState = "idle"
        self.since = utcnow()
        self.task: Task | None = None
        self._token: str | None = None  # the running attempt's completion token
        self.progress: dict[str, Any] | None = None
        self._runner: asyncio.Task[None] | None = None
        self._reporter: asyncio.StreamWriter | None = None  # the connection of the running task
        self._waiting: asyncio.Future[Complete] | None = None
        self._early: Complete | None = None  # a completion that came before the module returned Pending
        self._nonces: dict[str, datetime] = {}  # nonces of signed runs within RUN_FRESH_S
        self._servers: list[asyncio.Server] = []
        self._connections: dict[asyncio.StreamWriter, asyncio.Task[Any]] = {}
        self._from_pool: set[asyncio.StreamWriter] = set()  # connections on the control socket

    async def listen(self) -> None:
        """The port, for anyone; and the control socket (in the pool's 0700 directory), for the pool."""
        self._servers.append(await asyncio.start_server(self._connection, self.host, self.port, limit=self.max_line))
        if self.control is not None:
            pool = functools.partial(self._connection, from_pool=True)
            self._servers.append(await asyncio.start_unix_server(pool, self.control, limit=self.max_line))
            os.chmod(self.control, 0o600)

    async def close(self) -> None:
        for server in self._servers:
            server.close()
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
        for server in self._servers:
            await server.wait_closed()
        self.threads.close()

    # ------------------------------------------------------------ connections

    def _refuse(self, reason: str, error: str) -> ErrorReply:
        log.debug("channel %s: refused (%s): %s", self.port, reason, error)
        if self._on_refused is not None:
            self._on_refused(reason)
        return ErrorReply(error=error)

    def _outside(self) -> int:
        """Open connections on the port (the pool's, on the control socket, are not counted)."""
        return len(self._connections) - len(self._from_pool)

    async def _read_line(self, reader: asyncio.StreamReader, timeout_s: float | None) -> bytes | ErrorReply:
        """The next line (b"" at EOF), or the refusal that ends the connection."""
        try:
            async with asyncio.timeout(timeout_s):
                return await reader.readline()
        except ValueError:  # longer than max_line: the rest of it cannot be framed
            return self._refuse("line_too_long", f"a line is at most {self.max_line} bytes; closing")
        except TimeoutError:
            return self._refuse("idle_timeout", f"no whole line for {timeout_s:g} s; closing")

    async def _connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, from_pool: bool = False
    ) -> None:
        mine: asyncio.Task[None] | None = None  # a task this connection started
        handler = asyncio.current_task()
        assert handler is not None
        if not from_pool and self._outside() >= self.max_connections:
            refused = self._refuse(
                "too_many_connections", f"channel {self.port} has {self.max_connections} connections open, its cap"
            )
            with contextlib.suppress(ConnectionError, OSError):
                writer.write(encode(refused))
                await writer.drain()
            writer.close()
            return
        self._connections[writer] = handler
        if from_pool:
            self._from_pool.add(writer)
        try:
            while True:
                # The pool is trusted to be quiet while its task runs; anyone else must send
                # a whole line within the idle timeout.
                line = await self._read_line(reader, None if from_pool else self.idle_timeout_s)
                if isinstance(line, ErrorReply):
                    writer.write(encode(line))
                    await writer.drain()
                    break
                if not line:
                    break
                if not line.strip():
                    continue
                reply = self._handle(line, writer, from_pool)
                if isinstance(reply, asyncio.Task):
                    mine = reply
                elif reply is not None:
                    writer.write(encode(reply))
                await writer.drain()
        except (ConnectionError, OSError, asyncio.CancelledError):
            pass  # cancelled: the loop is shutting down; end normally (see close())
        finally:
            self._connections.pop(writer, None)
            self._from_pool.discard(writer)
            if mine is not None and not mine.done():
                # Whoever asked for the task is gone: nobody would read its result.
                log.info("channel %s: the dispatcher's connection closed mid-task; cancelling it", self.port)
                mine.cancel()
            writer.close()

    def _handle(self, line: bytes, writer: asyncio.StreamWriter, from_pool: bool) -> Any:
        try:
            msg = decode(line, TO_WORKER)
        except ProtocolError as exc:
            return self._refuse("bad_message", str(exc))
        if isinstance(msg, StatusRequest):
            return self.status()
        if isinstance(msg, Run):
            if not from_pool:
                return self._refuse(
                    "unauthenticated",
                    f"run refused: channel {self.port} takes tasks from its pool's control socket only; "
                    "nothing was run",
                )
            body = self._authenticate(msg)
            if isinstance(body, ErrorReply):
                return body
            if self._runner is not None:
                assert self.task is not None
                busy_with = f"{self.task.play_id}/{self.task.flowlet}"
                return ErrorReply(error=f"channel {self.port} is busy with {busy_with}; one task at a time")
            task = body.task
            with log_context(company_id=task.company_id, play_id=task.play_id, flowlet=task.flowlet):
                self._runner = asyncio.create_task(self._run(task, writer), name=f"channel-{self.port}")
            return self._runner
        if isinstance(msg, Complete):
            return self._complete(msg)
        assert isinstance(msg, Progress)
        return self._progress(msg)

    def _authenticate(self, msg: Run) -> RunBody | ErrorReply:
        """The run's body if the pool signed exactly these bytes, recently, once; else the refusal."""
        body = msg.body.encode()
        if not run_mac_ok(self._pool_secret, body, msg.mac):
            return self._refuse(
                "unauthenticated", f"run refused: not signed by the pool of channel {self.port}; nothing was run"
            )
        try:
            run = RunBody.model_validate_json(body)
        except ValueError as exc:  # signed by the pool, yet not a run: a version mismatch
            return self._refuse("bad_message", f"run refused: its body is not a run ({exc})")
        now = utcnow()
        while self._nonces:  # oldest first (they come in the order the pool signed them)
            oldest, at = next(iter(self._nonces.items()))
            if (now - at).total_seconds() <= RUN_FRESH_S:
                break
            del self._nonces[oldest]
        if abs((now - run.sent_at).total_seconds()) > RUN_FRESH_S or run.nonce in self._nonces:
            why = f"run refused: sent before, or over {RUN_FRESH_S:g} s from now; nothing was run"
            return self._refuse("replayed", why)
        self._nonces[run.nonce] = run.sent_at
        return run

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
            token_fingerprint=fingerprint(self._token) if self.state == "pending" and self._token else None,
            progress=self.progress,
        )

    def _no_such_token(self) -> ErrorReply:
        return self._refuse("bad_token", f"channel {self.port} has no flowlet waiting for that token")

    def _complete(self, msg: Complete) -> Ack | ErrorReply:
        if self.task is None or not same_token(msg.token, self._token):
            return self._no_such_token()
        done = f"{self.task.play_id}/{self.task.flowlet} completed"
        if self._waiting is not None:
            if self._waiting.done():
                return ErrorReply(error=f"{self.task.play_id}/{self.task.flowlet} is already completed")
            self._waiting.set_result(msg)
            return Ack(detail=done)
        if self._early is not None:
            return ErrorReply(error=f"{self.task.play_id}/{self.task.flowlet} is already completed")
        # The service answered before the module even returned Pending: kept for the task.
        self._early = msg
        return Ack(detail="kept until the running module returns Pending")

    def _progress(self, msg: Progress) -> Ack | ErrorReply:
        if self.state != "pending" or not same_token(msg.token, self._token):
            return self._no_such_token()
        self.progress = msg.details()
        if self._reporter is not None:
            self._reporter.write(encode(ProgressNote(progress=self.progress)))
        return Ack()

    # ------------------------------------------------------------ one task

    def _become(self, state: ChannelState) -> None:
        self.state = state
        self.since = utcnow()

    async def _run(self, task: Task, writer: asyncio.StreamWriter) -> None:
        self.task, self._reporter = task, writer
        self._token = completion_token(self._token_key, task.company_id, task.play_id, task.flowlet, task.attempt)
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
            result = await execute_task(
                self.registry, self.kv, utcnow, task, threads=self.threads, completion_token=self._token
            )
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
            if self._waiting is not None:
                self._waiting.cancel()
            self._waiting = self._early = None
            self.task = self._reporter = self._runner = None
            self._token = self.progress = None
            self._become("idle")

    async def _wait_outside(
        self, task: Task, handed: FlowletResult, pending: Pending, writer: asyncio.StreamWriter
    ) -> FlowletResult:
        fut: asyncio.Future[Complete] = asyncio.get_running_loop().create_future()
        self._waiting = fut
        if self._early is not None:
            fut.set_result(self._early)
        self._become("pending")
        writer.write(encode(PendingNote(detail=pending.detail)))
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
    p.add_argument("--max-line", type=int, default=MAX_LINE, help="Longest line accepted, in bytes.")
    p.add_argument("--max-connections", type=int, default=DEFAULT_MAX_CONNECTIONS, help="Outside connections at once.")
    p.add_argument(
        "--idle-timeout-s", type=float, default=DEFAULT_IDLE_TIMEOUT_S, help="A connection without a whole line closes."
    )
    p.add_argument("--control", default=None, help="Unix socket path the pool sends tasks to (in a 0700 directory).")
    p.add_argument("--parent-pid", type=int, default=None, help="Exit when this process is no longer the parent.")
    p.add_argument("--log-level", default="warning", choices=["debug", "info", "warning", "error"])
    return p


class Report:
    """The pool's end of this process's stdout: ready or error, then refusals. A report the
    pool is too slow to take is dropped: it never blocks the channel."""

    def __init__(self, out: IO[bytes]) -> None:
        self._out = out

    def say(self, payload: dict[str, Any]) -> None:
        with contextlib.suppress(BlockingIOError, BrokenPipeError):
            self._out.write(orjson.dumps(payload) + b"\n")
            self._out.flush()

    def serving(self) -> None:
        os.set_blocking(self._out.fileno(), False)

    def refused(self, reason: str) -> None:
        self.say({"type": "refused", "reason": reason})


def _take_stdout() -> Report:
    """The original stdout as the report pipe; fd 1 (``print``, a module's output) goes to stderr."""
    sys.stdout.flush()
    report = os.fdopen(os.dup(1), "wb", buffering=0)
    os.dup2(2, 1)
    return Report(report)


def _read_secrets(stream: IO[bytes]) -> tuple[bytes, bytes]:
    """The pool secret and the token key from the one line on stdin."""
    line = stream.readline(4096)
    try:
        given = orjson.loads(line)
        pool_secret, token_key = bytes.fromhex(given["pool_secret"]), bytes.fromhex(given["token_key"])
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
        raise Flow8Error(
            'a channel worker reads {"pool_secret": HEX, "token_key": HEX} from stdin (its pool writes it); '
            "got none or something else"
        ) from None
    if len(pool_secret) < 32 or len(token_key) < 32:
        raise Flow8Error("the pool secret and the token key are at least 32 bytes each")
    return pool_secret, token_key


async def _serve(args: argparse.Namespace, report: Report) -> int:
    kv: KVStore | None = None
    store = mongo = None
    try:
        pool_secret, token_key = _read_secrets(sys.stdin.buffer)
        if args.kv_db:
            from flow8_streams.stores.sqlite import SqliteStore

            store = SqliteStore(args.kv_db, kv_incr_dedup_seconds=args.kv_incr_dedup_seconds)
            kv = store.kv
        elif args.kv_mongodb_database:
            if not args.kv_mongodb_uri:
                raise Flow8Error("--kv-mongodb-database needs --kv-mongodb-uri or $MONGODB_URI")
            from flow8_streams.extras import require_streams

            require_streams("--kv-mongodb-database")
            from flow8_streams.stores.mongo import MongoStore

            mongo = MongoStore(
                args.kv_mongodb_uri,
                args.kv_mongodb_database,
                timeout_ms=args.kv_timeout_ms,
                kv_incr_dedup_seconds=args.kv_incr_dedup_seconds,
            )
            kv = mongo.kv
        # the modules load now: a broken source fails the start, not a task
        worker = ChannelWorker(
            args.port,
            pool_secret=pool_secret,
            token_key=token_key,
            host=args.host,
            sources=args.modules,
            kv=kv,
            heartbeat_s=args.heartbeat_s,
            max_line=args.max_line,
            max_connections=args.max_connections,
            idle_timeout_s=args.idle_timeout_s,
            on_refused=report.refused,
            control=args.control,
        )
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
        report.say({"type": "error", "port": args.port, "error": str(exc)})
        if store is not None:
            store.close()
        if mongo is not None:
            await mongo.close()
        return 2
    report.say({"type": "ready", "port": args.port, "pid": os.getpid()})
    report.serving()

    stop = asyncio.Event()
    orphaned = False
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
                orphaned = True
    finally:
        if args.control is not None:  # before the connections close: whoever sees them close sees this done
            with contextlib.suppress(OSError):
                os.unlink(args.control)
                if orphaned:  # nobody is left to remove the pool's directory: the last worker does
                    os.rmdir(os.path.dirname(args.control))
        await worker.close()
        if store is not None:
            store.close()
        if mongo is not None:
            await mongo.close()
    return 0


def main(argv: list[str] | None = None) -> None:
    report = _take_stdout()
    args = _parser().parse_args(argv)
    try:
        configure_logs(format_from_env(), args.log_level)  # the format of the flow8 that started it
    except Flow8Error as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    raise SystemExit(asyncio.run(_serve(args, report)))


if __name__ == "__main__":
    main()
