"""The pause after a failed metadata update (``kafka.metadata``), against a real aiokafka
client with no broker behind its address: the loops that wait on an update ask once a
second, not thousands of times."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from aiokafka.client import AIOKafkaClient

from flow8_streams.runtimes.streams.kafka.metadata import PAUSE_S, pause_failed_metadata_updates, paused


async def test_a_failed_update_is_followed_by_the_pause_and_a_good_one_is_not() -> None:
    outcomes = [False, True]

    async def update(client: Any, cluster: Any, topics: Any) -> bool:
        return outcomes.pop(0)

    wrapped = paused(update, 0.2)
    t0 = time.monotonic()
    assert await wrapped(None, None, None) is False  # type: ignore[arg-type]
    assert time.monotonic() - t0 >= 0.2
    t1 = time.monotonic()
    assert await wrapped(None, None, None) is True  # type: ignore[arg-type]
    assert time.monotonic() - t1 < 0.2


async def test_a_client_whose_broker_is_gone_asks_once_a_pause() -> None:
    """What the fetcher and the sender do while the broker is down: force an update, await it,
    again. Without the pause each round ends as fast as the connection is refused."""
    pause_failed_metadata_updates()
    pause_failed_metadata_updates()  # idempotent: one pause, not two
    client = AIOKafkaClient(bootstrap_servers="127.0.0.1:1")  # nothing listens on port 1
    client._md_update_waiter = asyncio.get_running_loop().create_future()
    sync = asyncio.create_task(client._md_synchronizer())
    rounds = 0
    try:
        async with asyncio.timeout(2.5 * PAUSE_S):
            while True:
                await client.force_metadata_update()
                rounds += 1
    except TimeoutError:
        pass
    finally:
        sync.cancel()
        await client.close()
    assert 1 <= rounds <= 3, rounds
