"""What ``flow8 channels status`` shows: every port of a range, asked for its status.

A port that does not answer is ``cold`` when it is held but refuses connections (a pool
holds the ports of the channels it has not started yet; they start when tasks wait), and
``down`` otherwise (nothing there, or a worker that does not answer).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from flow8_streams.channels import client
from flow8_streams.channels.ports import DEFAULT_HOST, held_not_listening
from flow8_streams.channels.protocol import Status

DOWN = "down"
COLD = "cold"


async def probe_range(
    ports: Sequence[int], *, host: str = DEFAULT_HOST, timeout: float = 0.5, concurrency: int = 200
) -> list[tuple[int, Status | None]]:
    """Each port with its status, or None when nothing answers it within ``timeout`` seconds."""
    gate = asyncio.Semaphore(concurrency)

    async def one(port: int) -> tuple[int, Status | None]:
        async with gate:
            return port, await client.probe(port, host=host, timeout=timeout)

    return list(await asyncio.gather(*(one(p) for p in ports)))


def silent_state(port: int, host: str = DEFAULT_HOST) -> str:
    """The state of a port that did not answer: ``cold`` or ``down``."""
    return COLD if held_not_listening(port, host) else DOWN


def row(port: int, status: Status | None, *, silent: str = DOWN) -> dict[str, Any]:
    """One port as a flat record (a JSON line of ``flow8 channels status --json``); ``silent``
    is the state of a port that did not answer."""
    if status is None:
        return {"port": port, "state": silent}
    return {
        "port": port,
        "state": status.state,
        "since": status.since,
        "pid": status.pid,
        "company_id": status.company_id,
        "play_id": status.play_id,
        "flowlet": status.flowlet,
        "attempt": status.attempt,
        "module_ref": status.module_ref,
        "token_fingerprint": status.token_fingerprint,
        "progress": status.progress,
    }


def age(since: datetime, now: datetime) -> str:
    seconds = max(0, int((now - since).total_seconds()))
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
