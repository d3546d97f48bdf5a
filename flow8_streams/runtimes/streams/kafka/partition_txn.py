"""faust's own exactly-once mode, one transaction per input partition (``transactions =
"partition"``, the default): a zombie is fenced by the new owner's ``InitProducerId`` on the
partition's transactional id. ``WorkerTransactions`` is the other mode (one per worker)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping
from typing import Any, cast

from faust.assignor import PartitionAssignor
from faust.transport.drivers import aiokafka as kafka_driver

TRANSACTION_TIMEOUT_MS = 300_000  # see Flow8Producer


class Flow8Assignor(PartitionAssignor):
    """Topics we only write to (results, DLQ) join the transaction group of the inputs.

    faust picks a partition's transactional producer by the topic's co-partitioned
    group, known only for subscribed topics. Ours all have the same partition count,
    so they belong with the inputs' group: the group of ``anchor`` (the commands
    topic). Not the lowest group: that is faust's one-partition leader topic, whose
    producers exist for partition 0 only.
    """

    anchor: str | None = None

    def group_for_topic(self, topic: str) -> int:
        groups = self._topic_groups
        if topic in groups:
            return groups[topic]
        if self.anchor is not None and self.anchor in groups:
            return groups[self.anchor]
        return max(groups.values(), default=0)


class Flow8Producer(kafka_driver.Producer):
    """A partition's transaction commits only once its input offsets can advance, so no
    sooner than the slowest task in flight there ends (see ``Flow8Consumer._new_offset``).
    With aiokafka's 60 s transaction timeout the broker aborted the transaction of a
    partition busy with slow tasks, and the worker crashed (ProducerFenced) at its next
    commit. The timeout is the default flowlet timeout (300 s); a dead worker's open
    transaction is aborted when its successor takes the partition, not by this timeout."""

    def _settings_extra(self) -> Any:
        return {**super()._settings_extra(), "transaction_timeout_ms": TRANSACTION_TIMEOUT_MS}

    # Records sent in a partition's transaction since its last commit. faust commits a
    # transaction only together with input offsets that moved on. A task still running
    # when a rebalance came could find its input offset committed past it already (the
    # fault test: two kv.incr tasks finished 3 and 6 s after the kill's rebalance): its
    # completion then sat in a transaction nothing committed, until the broker aborted
    # it at the transaction timeout, and its play never finished. ``commit_unsettled``
    # commits such transactions on faust's commit interval; a record so committed before
    # its input's offset can be read again after a crash, which the engine takes as a
    # repeat.
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.unsettled: set[str] = set()
        super().__init__(*args, **kwargs)

    async def send(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        partition: int | None,
        timestamp: float | None,
        headers: Any,
        *,
        transactional_id: str | None = None,
    ) -> Any:
        if transactional_id:
            self.unsettled.add(transactional_id)
        return await super().send(topic, key, value, partition, timestamp, headers, transactional_id=transactional_id)

    def _gate(self, tid: str) -> contextlib.AbstractAsyncContextManager[Any]:
        """The orchestrator's gate of a transaction's partition (see ``commit_transactions``)."""
        gates: Mapping[int, asyncio.Lock] = cast(Any, self.app).wiring.partition_gates
        return gates[int(tid.rsplit("-", 1)[1])]  # "<group id>-<topic group>-<partition>"

    async def commit_unsettled(self) -> None:
        """Commit each transaction that holds records sent since its last commit."""
        for tid in sorted(self.unsettled):
            if tid not in self._trn_locks:
                continue
            async with self._gate(tid), self._trn_locks[tid]:
                producer = self._transaction_producers.get(tid)
                if producer is None or tid not in self.unsettled:
                    continue
                self.unsettled.discard(tid)
                await producer.commit_transaction()
                await producer.begin_transaction()

    async def commit_transactions(
        self, tid_to_offset_map: Mapping[str, Mapping[Any, int]], group_id: str, start_new_transaction: bool = True
    ) -> None:
        """Commit each partition's transaction between two orchestrator decisions, never
        inside one: a decision holds its partition's gate while it sends (``Flow8App``).
        A decision that comes during the commit waits for it (one partition's commit,
        milliseconds) and goes whole into the next transaction."""
        for tid, offsets in tid_to_offset_map.items():
            async with self._gate(tid):
                self.unsettled.discard(tid)
                await super().commit_transactions({tid: offsets}, group_id, start_new_transaction)
