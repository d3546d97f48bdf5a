"""Modules the channel tests load into their workers (``module_sources``)."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Any

from flow8_streams.channels import Pending


async def hang(ctx: Any) -> Any:
    await asyncio.sleep(3600)


async def hang_first(ctx: Any) -> Any:
    """Hangs on its first attempt; later attempts return at once."""
    if ctx.attempt == 1:
        await asyncio.sleep(3600)
    return {"attempt": ctx.attempt}


async def slow_first(ctx: Any) -> Any:
    """Sleeps ``first`` seconds on attempt 1, ``then`` seconds on later ones."""
    await asyncio.sleep(ctx.input["first"] if ctx.attempt == 1 else ctx.input.get("then", 0))
    return {"attempt": ctx.attempt, "pid": os.getpid()}


def pid(ctx: Any) -> int:
    """The worker's process id (a plain function: it runs on a thread of the worker)."""
    return os.getpid()


def channel_pid(ctx: Any) -> int:
    return os.getpid()


channel_pid.flow8_channel = True  # type: ignore[attr-defined]


def burn(ctx: Any) -> Any:
    """CPU-bound for ``seconds``: the heartbeats must keep coming."""
    end = time.monotonic() + ctx.input["seconds"]
    n = 0
    while time.monotonic() < end:
        n += 1
    return {"loops": n > 0}


async def handoff(ctx: Any) -> Any:
    """Hands the work to an outside service (after ``delay`` seconds): its completion token
    goes to the file ``outbox`` when given (the test plays the service)."""
    await asyncio.sleep(ctx.input.get("delay", 0))
    if ctx.input.get("outbox"):
        Path(ctx.input["outbox"]).write_text(ctx.completion_token)
    return Pending(detail="handed to the test")


async def choose_token(ctx: Any) -> Any:
    """What modules did before flow8 minted tokens: refused."""
    return Pending(token="chosen-by-the-module")


MODULES = {
    "hang": hang,
    "hang_first": hang_first,
    "slow_first": slow_first,
    "pid": pid,
    "channel_pid": channel_pid,
    "burn": burn,
    "handoff": handoff,
    "choose_token": choose_token,
}
