"""The projection keeps up with the engine: within 30 s of the last play result, every
play's MongoDB document is final and agrees with its result (one real worker, real Kafka
and FerretDB, 300 diamond plays at 50 in flight)."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import pytest

from flow8_streams.bench import DIAMOND, _drive_streams
from flow8_streams.domain.state import PlayState
from flow8_streams.runtimes.streams.client import CommandProducer, tail_results
from tests.conformance.streams_harness import StreamsHarness, metric

pytestmark = [pytest.mark.kafka, pytest.mark.mongo, pytest.mark.slow]

PLAYS, CONCURRENCY = 300, 50
CATCH_UP_S = 30.0


async def _final_documents(harness: StreamsHarness, companies: list[str]) -> dict[str, PlayState]:
    states = await asyncio.gather(*(harness.store.plays.list(c, limit=PLAYS) for c in companies))
    return {s.play_id: s for found in states for s in found if s.finished}


@pytest.mark.timeout(300)
async def test_every_document_is_final_and_agrees_with_its_result_within_30_s(harness: StreamsHarness) -> None:
    settings = harness.group.settings
    companies = [f"keeps-up-{uuid.uuid4().hex[:6]}-{i}" for i in range(8)]
    for company in companies:
        await harness.store.flows.put(company, DIAMOND)
    consumed: dict[str, asyncio.Future[float]] = {}
    results: dict[str, Any] = {}
    ready = asyncio.Event()

    async def collect() -> None:
        async for result, consumed_at in tail_results(settings, on_ready=ready.set):
            results[result.play_id] = result
            waiting = consumed.get(result.play_id)
            if waiting is not None and not waiting.done():
                waiting.set_result(consumed_at)

    collector = asyncio.create_task(collect())
    try:
        await ready.wait()
        async with CommandProducer(settings) as producer:
            engine = await _drive_streams(producer, consumed, companies, PLAYS, CONCURRENCY, None)
    finally:
        collector.cancel()
    last_result = time.monotonic()
    play_ids = {p for p, r in results.items() if r.company_id in companies}
    assert len(play_ids) == PLAYS, f"{len(play_ids)} results of {PLAYS} plays"

    documents: dict[str, PlayState] = {}
    while time.monotonic() - last_result < CATCH_UP_S:
        behind = sorted({results[p].company_id for p in play_ids - documents.keys()})
        documents |= await _final_documents(harness, behind)
        if play_ids <= documents.keys():
            break
        await asyncio.sleep(1.0)  # polling MongoDB (nothing tells when a document lands), not often: reads load it
    caught_up = time.monotonic() - last_result
    print(
        f"\n{PLAYS} plays at {CONCURRENCY} in flight: {engine.plays_per_s:.1f} plays/s through the engine; "
        f"{len(play_ids & documents.keys())} final in MongoDB {caught_up:.1f} s after the last result"
    )
    missing = play_ids - documents.keys()
    assert not missing, f"{len(missing)} of {PLAYS} plays not final in MongoDB {CATCH_UP_S} s after the last result"
    for play_id in play_ids:
        state, result = documents[play_id], results[play_id]
        assert (state.status.value, state.output, state.error) == (result.status, result.output, result.error)

    samples = harness.group.metrics()
    assert metric(samples, "flow8_projection_lag_seconds_count") >= PLAYS * 10  # 10 events per diamond play
