"""Where a changelog partition's restore ends: the offset of its last committed record.

faust restores a table partition until it has read the record at ``highwater - 1``, the
offset before the partition's last stable offset. A changelog written in transactions
ends with a commit marker, which is never delivered: the restore then waited until its
queue had been idle for two rounds of 5 s and only then took the marker for the end.
Every rebalance stopped the worker for 10 s that way (after a ``kill -9`` of a worker,
its successors sat idle 10 s on top of Kafka noticing the death). Reading the few
offsets before the last stable offset finds the last record a restore will deliver.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

from aiokafka import AIOKafkaConsumer, TopicPartition

FIRST_WINDOW = 16  # offsets read back from the end at first: a marker or two, a few aborted records
READ_TIMEOUT_S = 30.0


async def last_records(consumer: AIOKafkaConsumer, ends: Mapping[TopicPartition, int]) -> dict[TopicPartition, int]:
    """For each partition, the offset of its last record before ``ends[tp]`` (its last
    stable offset) that a read_committed consumer gets, or -1 when it has none.

    ``consumer`` is a read_committed consumer of no group; its assignment is replaced.
    The window read back grows eightfold while it holds no record (a long aborted
    transaction, or only markers left by compaction)."""
    found = dict.fromkeys(ends, -1)
    begins = await consumer.beginning_offsets(list(ends))
    window = FIRST_WINDOW
    pending = {tp for tp, end in ends.items() if end > begins[tp]}
    while pending:
        starts = {tp: max(begins[tp], ends[tp] - window) for tp in pending}
        consumer.assign(list(pending))
        for tp, start in starts.items():
            consumer.seek(tp, start)
        async with asyncio.timeout(READ_TIMEOUT_S):
            last = await _read_until(consumer, {tp: ends[tp] for tp in pending})
        for tp in list(pending):
            if tp in last:
                found[tp] = last[tp]
                pending.discard(tp)
            elif starts[tp] == begins[tp]:
                pending.discard(tp)  # no record at all
        window *= 8
    consumer.assign([])
    return found


async def _read_until(consumer: AIOKafkaConsumer, ends: Mapping[TopicPartition, int]) -> dict[TopicPartition, int]:
    """The offset of the last record below ``ends[tp]`` read from each partition's position."""
    last: dict[TopicPartition, int] = {}
    todo = set(ends)
    while todo:
        for tp in list(todo):
            if await consumer.position(tp) >= ends[tp]:
                todo.discard(tp)
        if not todo:
            break
        batches = await consumer.getmany(*todo, timeout_ms=200)
        for tp, records in batches.items():
            below = [r.offset for r in records if r.offset < ends[tp]]
            if below:
                last[tp] = max(below)
    return last
