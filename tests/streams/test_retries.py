"""Timers under exactly-once: a retry is due by a tick the worker sends itself, and must
be seen on a partition that has no other traffic."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator

import pytest

from tests.conformance.streams_harness import StreamsHarness, WorkerGroup

from .support import fl, make_flow

pytestmark = [pytest.mark.kafka, pytest.mark.mongo, pytest.mark.slow]

FLOW = make_flow(
    "flaky",
    fl("once", "fail", input={"times": 1, "message": "first try fails"}, retry={"max_attempts": 2, "backoff_ms": 100}),
)


@pytest.fixture
async def harness(worker_group: WorkerGroup, no_leaked_tasks: None) -> AsyncIterator[StreamsHarness]:
    harness = await StreamsHarness(worker_group).open()
    harness.wait_timeout = 20  # far below a transaction timeout: a stuck tick fails, not waits it out
    try:
        yield harness
    finally:
        await harness.close()


async def test_a_retry_on_an_idle_partition_is_run(harness: StreamsHarness) -> None:
    t0 = time.monotonic()
    final = await harness.run(FLOW, {}, company_id=f"co-{uuid.uuid4().hex[:8]}", play_id=str(uuid.uuid4()))
    took = time.monotonic() - t0
    assert final.status.value == "succeeded", final.error
    types = [e.type for e in await harness.events(final.play_id)]
    assert types.count("FlowletFailed") == 1 and types.count("FlowletRetryScheduled") == 1, types
    assert took < 10, f"a 100 ms backoff took {took:.1f} s"
