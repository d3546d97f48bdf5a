"""The dead-letter topic: a refused input goes there with its original bytes and why."""

from __future__ import annotations

import logging
from typing import Any

from faust.types import EventT

from flow8_streams.metrics import Metrics

log = logging.getLogger("flow8.streams")
MAX_DETAIL_BYTES = 4000  # the flow8-error header, cut: a reason, not a copy of the input


class DeadLetters:
    """Sends a refused record to the dead-letter topic, on the partition it came from, with
    its key, value and headers as they were and ``flow8-*`` headers saying why and where from."""

    def __init__(self, topic: Any, metrics: Metrics) -> None:
        self.topic = topic
        self.metrics = metrics

    async def send(self, event: EventT[bytes], reason: str, detail: str) -> None:
        message = event.message
        headers = [
            ("flow8-error", detail.encode()[:MAX_DETAIL_BYTES]),
            ("flow8-reason", reason.encode()),
            ("flow8-source-topic", message.topic.encode()),
            ("flow8-source-partition", str(message.partition).encode()),
            ("flow8-source-offset", str(message.offset).encode()),
        ]
        raw_headers: Any = message.headers or []
        original: list[tuple[str, Any]] = list(raw_headers.items() if isinstance(raw_headers, dict) else raw_headers)
        headers += [
            (k, v if isinstance(v, bytes) else str(v).encode()) for k, v in original if not k.startswith("flow8-")
        ]
        await self.topic.send(key=event.key, value=event.value, headers=headers, partition=message.partition)
        self.metrics.dlq.labels(message.topic, reason).inc()
        log.warning("dead-lettered %s[%d]@%d: %s", message.topic, message.partition, message.offset, detail)
