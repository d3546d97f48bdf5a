"""Talking to one channel port: one request line, one reply line."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from pydantic import BaseModel

from flow8_streams.channels.exceptions import ChannelError, ProtocolError
from flow8_streams.channels.ports import DEFAULT_HOST
from flow8_streams.channels.protocol import (
    MAX_LINE,
    REPLY,
    Ack,
    Complete,
    ErrorReply,
    Progress,
    Reply,
    Status,
    StatusRequest,
    decode,
    encode,
)


async def request(port: int, message: BaseModel, *, host: str = DEFAULT_HOST, timeout: float = 2.0) -> Reply:
    """Send ``message`` to ``host:port`` and return the reply; ``ChannelError`` when the port
    does not answer within ``timeout`` seconds (connect included)."""
    writer: asyncio.StreamWriter | None = None
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(host, port, limit=MAX_LINE)
            writer.write(encode(message))
            await writer.drain()
            line = await reader.readline()
    except TimeoutError:
        raise ChannelError(f"channel {host}:{port} did not answer within {timeout} s") from None
    except OSError as exc:
        raise ChannelError(f"channel {host}:{port} cannot be reached: {exc.strerror or exc}") from None
    finally:
        if writer is not None:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
    if not line:
        raise ChannelError(f"channel {host}:{port} closed the connection without a reply")
    try:
        return decode(line, REPLY)
    except ProtocolError as exc:
        raise ChannelError(f"channel {host}:{port} replied with something else than a reply: {exc}") from None


async def status(port: int, *, host: str = DEFAULT_HOST, timeout: float = 2.0) -> Status:
    reply = await request(port, StatusRequest(), host=host, timeout=timeout)
    if not isinstance(reply, Status):
        raise ChannelError(f"channel {host}:{port} answered status with {reply.type}: {getattr(reply, 'error', '')}")
    return reply


async def probe(port: int, *, host: str = DEFAULT_HOST, timeout: float = 0.5) -> Status | None:
    """The port's status, or None when nothing answers it (a port that is down)."""
    try:
        return await status(port, host=host, timeout=timeout)
    except ChannelError:
        return None


async def complete(
    port: int,
    token: str,
    *,
    ok: bool = True,
    output: Any = None,
    error: str | None = None,
    retryable: bool = True,
    host: str = DEFAULT_HOST,
    timeout: float = 2.0,
) -> Ack | ErrorReply:
    """What an outside service does when it finished the work it was handed under ``token``."""
    message = Complete(token=token, ok=ok, output=output, error=error, retryable=retryable)
    reply = await request(port, message, host=host, timeout=timeout)
    assert not isinstance(reply, Status)
    return reply


async def progress(port: int, token: str, *, host: str = DEFAULT_HOST, timeout: float = 2.0, **details: Any) -> Reply:
    return await request(port, Progress(token=token, **details), host=host, timeout=timeout)
