"""One task's conversation with one channel: send ``run``, watch heartbeats and the
deadline, and come back with the result, or with why there is none (lost, timed out)."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from flow8_streams.channels.exceptions import ProtocolError
from flow8_streams.channels.protocol import (
    FROM_WORKER,
    WORKER_LINE_MAX,
    Accepted,
    ErrorReply,
    Heartbeat,
    PendingNote,
    ProgressNote,
    ResultMessage,
    Run,
    RunBody,
    decode,
    encode,
)
from flow8_streams.channels.slot import ChannelSlot, Job
from flow8_streams.channels.tokens import run_mac
from flow8_streams.domain.messages import FlowletResult, Task


@dataclass(frozen=True)
class Lost:
    reason: str


@dataclass(frozen=True)
class TimedOut:
    pass


Outcome = FlowletResult | Lost | TimedOut


def signed_run(task: Task, pool_secret: bytes) -> Run:
    """``task`` as a ``run`` only this pool's channels take, once."""
    body = RunBody(task=task, sent_at=datetime.now(UTC), nonce=secrets.token_hex(16)).model_dump_json()
    return Run(body=body, mac=run_mac(pool_secret, body.encode()))


async def converse(
    job: Job,
    slot: ChannelSlot,
    *,
    deadline: float,
    heartbeat_timeout_s: float,
    on_accepted: Callable[[Accepted], None],
    on_pending: Callable[[PendingNote], None],
    on_progress: Callable[[ProgressNote], None],
) -> Outcome:
    """Run ``job`` on ``slot``'s worker until a result, a missed heartbeat or ``deadline`` (loop time)."""
    loop = asyncio.get_running_loop()
    task = job.task
    writer: asyncio.StreamWriter | None = None
    try:
        try:
            async with asyncio.timeout_at(min(deadline, loop.time() + heartbeat_timeout_s)):
                reader, writer = await asyncio.open_unix_connection(
                    slot.command.control(slot.port), limit=WORKER_LINE_MAX
                )
        except TimeoutError:
            return TimedOut() if loop.time() >= deadline else Lost(f"channel {slot.port} did not accept a connection")
        except OSError as exc:
            return Lost(f"cannot connect to channel {slot.port}'s control socket: {exc.strerror or exc}")
        writer.write(encode(signed_run(task, slot.command.pool_secret)))
        heard = loop.time()
        while True:
            now = loop.time()
            if now >= deadline:
                return TimedOut()
            if now - heard >= heartbeat_timeout_s:
                return Lost(f"no heartbeat from port {slot.port} for {heartbeat_timeout_s:g} s")
            try:
                async with asyncio.timeout_at(min(deadline, heard + heartbeat_timeout_s)):
                    line = await reader.readline()
            except TimeoutError:
                continue
            except ValueError:
                return Lost(f"port {slot.port} sent a line longer than {WORKER_LINE_MAX} bytes")
            except OSError as exc:
                return Lost(f"the connection to port {slot.port} failed: {exc.strerror or exc}")
            if not line:
                return Lost(f"the worker on port {slot.port} closed the connection")
            heard = loop.time()
            try:
                msg = decode(line, FROM_WORKER)
            except ProtocolError as exc:
                return Lost(f"the worker on port {slot.port} sent a bad line: {exc}")
            if isinstance(msg, Accepted):
                on_accepted(msg)
            elif isinstance(msg, Heartbeat):
                pass
            elif isinstance(msg, PendingNote):
                on_pending(msg)
            elif isinstance(msg, ProgressNote):
                on_progress(msg)
            elif isinstance(msg, ResultMessage):
                result = msg.result
                if (result.play_id, result.flowlet, result.attempt) != (task.play_id, task.flowlet, task.attempt):
                    return Lost(
                        f"the worker on port {slot.port} reported {result.play_id}/{result.flowlet} "
                        f"attempt {result.attempt} for {task.play_id}/{task.flowlet} attempt {task.attempt}"
                    )
                return result
            else:
                assert isinstance(msg, ErrorReply)
                return Lost(f"the worker on port {slot.port} refused the task: {msg.error}")
    finally:
        if writer is not None:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
