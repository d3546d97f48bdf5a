"""What flow8 hands its faust app's parts: passed in, never set on faust's objects."""

from __future__ import annotations

from dataclasses import dataclass

from flow8_streams.metrics import Metrics
from flow8_streams.runtimes.streams.kafka.transactions import WorkerTransaction


@dataclass(frozen=True)
class Wiring:
    transaction: WorkerTransaction  # the transaction manager's (exactly-once)
    metrics: Metrics  # the web server counts what it refuses
    commit_linger_ms: int  # see Flow8Consumer._commit_handler
    eager_topics: frozenset[str]  # inputs whose records done start a commit soon
