"""A projection that lost events is repaired from the log: the projector reads the
play's events back from ``flow8.events`` when the next one shows the gap."""

from __future__ import annotations

import uuid

import pytest

from flow8_streams.domain.events import FlowletScheduled
from tests.conformance.streams_harness import StreamsHarness

from .support import fl, make_flow

pytestmark = [pytest.mark.kafka, pytest.mark.mongo, pytest.mark.slow]

FLOW = make_flow(
    "mended",
    fl("start", "echo", input={"n": 1}),
    fl("pause", "sleep", "start", input={"seconds": 1}),
    fl("done", "echo", "pause", input={"n": "${flowlets.start.output.n}"}),
)


async def test_a_projection_missing_its_first_events_is_rebuilt_from_the_log(harness: StreamsHarness) -> None:
    company, play_id = f"co-{uuid.uuid4().hex[:8]}", str(uuid.uuid4())
    await harness.start(FLOW, {}, company_id=company, play_id=play_id)
    await harness.wait_for_event(play_id, lambda e: isinstance(e, FlowletScheduled) and e.payload.flowlet == "pause")
    before = await harness.projection(company, play_id)
    assert before is not None and before.seq == len(await harness.events(play_id))
    # the projection loses the play: the events after the sleep come to a projector that
    # has no seq 1 for it (what a record lost by a consumer across a rebalance looks like)
    deleted = await harness.store.coll("plays_live").delete_many({"play_id": play_id, "company_id": company})
    assert deleted.deleted_count >= 1

    final = await harness.wait(play_id)
    assert final.seq > before.seq  # events came after the loss
    assert await harness.projection(company, play_id) == final
