"""Channel tests run real worker processes on real ports: a random block of free
high ports (below the ephemeral range) per pool, and every pool closed at the end."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from flow8_streams.channels import ChannelPool, PortInUse
from flow8_streams.channels.ports import port_is_free
from flow8_streams.channels.tokens import completion_token, new_key
from flow8_streams.domain.events import Event
from flow8_streams.domain.flow import FlowDefinition
from flow8_streams.domain.messages import Task

HERE = Path(__file__).resolve().parent
TEST_MODULES = str(HERE / "channel_modules.py")
LOWEST = 20_000
# A guard, not a synchronisation: an awaited result that never comes fails the test
# with a message instead of hanging until the global pytest timeout.
GUARD_S = 30.0
# The token key of every test pool: a test computes the token an outside service is handed.
TOKEN_KEY = new_key()


def token_for(task: Task, key: bytes = TOKEN_KEY) -> str:
    return completion_token(key, task.company_id, task.play_id, task.flowlet, task.attempt)


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port_block(n: int) -> range:
    """``n`` consecutive free ports at random between 20000 and the ephemeral range."""
    top = _ephemeral_low() - n - 1
    for _ in range(500):
        start = random.randint(LOWEST, top)
        ports = range(start, start + n)
        if all(port_is_free(p) for p in ports):
            return ports
    raise RuntimeError(f"no block of {n} free ports found")


def make_task(
    module: str = "sleep",
    input: Any = None,
    *,
    company: str = "acme",
    play_id: str | None = None,
    flowlet: str = "f",
    attempt: int = 1,
    timeout_s: float = 120,
) -> Task:
    return Task(
        play_id=play_id or f"p-{uuid.uuid4().hex[:12]}",
        company_id=company,
        flowlet=flowlet,
        attempt=attempt,
        module_ref=module,
        input=input if input is not None else {},
        timeout_ms=int(timeout_s * 1000),
        deadline=datetime.now(UTC) + timedelta(seconds=timeout_s),
    )


@dataclass
class Dispatches:
    """Records ``on_dispatch`` calls; ``await for_play(id)`` waits for one."""

    seen: dict[tuple[str, int], tuple[str, float]] = field(default_factory=dict)  # -> (channel, loop time)
    _waiting: dict[tuple[str, int], asyncio.Future[str]] = field(default_factory=dict)

    def hook(self, play_id: str, flowlet: str, attempt: int, channel: str) -> None:
        key = (play_id, attempt)
        self.seen[key] = (channel, asyncio.get_running_loop().time())
        fut = self._waiting.get(key)
        if fut is not None and not fut.done():
            fut.set_result(channel)

    async def for_play(self, play_id: str, attempt: int = 1) -> str:
        """The channel (``host:port``) the attempt was dispatched to."""
        key = (play_id, attempt)
        if key in self.seen:
            return self.seen[key][0]
        fut = self._waiting.setdefault(key, asyncio.get_running_loop().create_future())
        async with asyncio.timeout(GUARD_S):
            return await fut


def flow(name: str, *flowlets: dict[str, Any]) -> FlowDefinition:
    return FlowDefinition.model_validate({"name": name, "flowlets": list(flowlets)})


# One flow for the embedded and the streams runtime: a flowlet deferred 300 ms, a channel
# module, one run inline, a kv.incr sent to a channel at once, and a join of the four.
DEFERRED_FLOW = flow(
    "deferred",
    {"name": "later", "module_ref": "pid", "defer_after_ms": 300},
    {"name": "declared", "module_ref": "channel_pid"},
    {"name": "inline", "module_ref": "pid"},
    {"name": "count", "module_ref": "kv.incr", "input": {"key": "hits"}, "defer_after_ms": 0},
    {"name": "join", "module_ref": "echo", "depends_on": ["later", "declared", "inline", "count"]},
)


def new_play() -> str:
    return f"play-{uuid.uuid4().hex[:12]}"


def is_(type_: str, flowlet: str | None = None, attempt: int | None = None) -> Callable[[Event], bool]:
    def predicate(e: Event) -> bool:
        p = e.payload
        return (
            e.type == type_
            and (flowlet is None or getattr(p, "flowlet", None) == flowlet)
            and (attempt is None or getattr(p, "attempt", None) == attempt)
        )

    return predicate


def port_of(channel: str) -> int:
    return int(channel.rsplit(":", 1)[1])


PoolFactory = Callable[..., Awaitable[ChannelPool]]


@pytest.fixture
async def make_pool() -> AsyncIterator[PoolFactory]:
    """``await make_pool(size, spare=0, **kwargs)``: a started pool on a fresh port block
    of ``size + spare`` ports, with the test modules loaded. Closed after the test."""
    pools: list[ChannelPool] = []

    async def make(size: int, spare: int = 0, **kwargs: Any) -> ChannelPool:
        kwargs.setdefault("module_sources", [TEST_MODULES])
        kwargs.setdefault("token_key", TOKEN_KEY)
        for _ in range(3):  # a port taken between the check and the start: another block
            pool = ChannelPool(free_port_block(size + spare), size, **kwargs)
            pools.append(pool)
            try:
                await pool.start()
            except PortInUse:
                continue
            return pool
        raise RuntimeError("could not start a pool on a free block")

    try:
        yield make
    finally:
        for pool in pools:
            await pool.close()
        for pool in pools:  # nothing left behind: every port of every pool is free again
            for slot in pool.slots:
                assert slot.process is None or slot.process.returncode is not None, slot.port


async def closed_by_peer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Return once the other end of the connection is gone (FIN or RST), and close ours."""
    try:
        async with asyncio.timeout(GUARD_S):
            assert await reader.read() == b""
    except ConnectionResetError:
        pass
    writer.close()
    with contextlib.suppress(ConnectionError):
        await writer.wait_closed()


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
