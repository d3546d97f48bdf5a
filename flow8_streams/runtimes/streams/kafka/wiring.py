"""What flow8 hands its faust app's parts: passed in, never set on faust's objects."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from dataclasses import dataclass, field

from flow8_streams.metrics import Metrics
from flow8_streams.runtimes.streams.kafka.transactions import WorkerTransaction


@dataclass(frozen=True)
class Wiring:
    transaction: WorkerTransaction  # the transaction manager's (exactly-once)
    metrics: Metrics  # the web server counts what it refuses
    commit_linger_ms: int  # see Flow8Consumer._commit_handler
    eager_topics: frozenset[str]  # inputs whose records done start a commit soon
    mode: str = "partition"  # Settings.transactions: "partition" or "worker"
    # the orchestrator's gate per partition (mode "partition"; see partition_txn.Flow8Producer)
    partition_gates: defaultdict[int, asyncio.Lock] = field(default_factory=lambda: defaultdict(asyncio.Lock))

    @property
    def per_worker(self) -> bool:
        return self.mode == "worker"
