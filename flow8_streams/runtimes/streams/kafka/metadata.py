"""A pause after a metadata update that reached no broker: aiokafka retries it at once.

While the broker is down, a consumer's fetcher that lost a partition's leader, and a
producer's sender with records for one, each ask for a metadata update and wait for it; the
update fails as fast as the connection is refused, and they ask again: thousands of updates
(and two error lines each) a second, on a core the worker needs (aio-libs/aiokafka#496; seen
in the broker-restart test: 130,000 log lines in 20 s). With the pause, an update that reached
no broker takes ``PAUSE_S`` at least, so those loops ask once a second until the broker is back.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from aiokafka.client import AIOKafkaClient

PAUSE_S = 1.0  # after a failed update: how soon a broker back from a restart is seen, at worst
_MARK = "_flow8_pauses_after_failure"

Update = Callable[[AIOKafkaClient, Any, Any], Awaitable[bool]]


def paused(update: Update, pause_s: float = PAUSE_S) -> Update:
    """``update`` (``AIOKafkaClient._metadata_update``), then a pause when it failed."""

    async def _metadata_update(self: AIOKafkaClient, cluster_metadata: Any, topics: Any) -> bool:
        updated = await update(self, cluster_metadata, topics)
        if not updated:
            await asyncio.sleep(pause_s)
        return updated

    setattr(_metadata_update, _MARK, True)
    return _metadata_update


def pause_failed_metadata_updates() -> None:
    """Give every aiokafka client of this process the pause (idempotent): the worker calls it
    before it starts its clients."""
    current = AIOKafkaClient._metadata_update
    if not getattr(current, _MARK, False):
        AIOKafkaClient._metadata_update = paused(current)
