"""A client's own play id is claimed for its company before the play's first event: in
batches with the StartPlays waiting behind it, and remembered."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime

import orjson
import pytest
from mode.utils.queues import FlowControlEvent, ThrowableQueue

from flow8_streams.domain.limits import DEFAULT_LIMITS
from flow8_streams.runtimes.streams.claims import PlayIdClaims, client_claims
from flow8_streams.stores.mongo import MongoStore
from tests.services import require_service

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def start(company: str, play_id: str | None) -> bytes:
    body = {"type": "StartPlay", "company_id": company, "flow": "f"}
    if play_id is not None:
        body["play_id"] = play_id
    return orjson.dumps(body)


def test_only_well_formed_startplays_with_a_clients_id_are_claimed_ahead() -> None:
    raws = [
        start("acme", "p1"),
        start("acme", None),  # flow8 makes its id up: nothing to claim
        orjson.dumps({"type": "CancelPlay", "company_id": "acme", "play_id": "p2"}),
        start("bad company", "p3"),
        start("acme", "flow8-reserved"),
        b"\xff not json",
        None,
        start("globex", "p4"),
    ]
    assert client_claims(raws, DEFAULT_LIMITS) == [("acme", "p1"), ("globex", "p4")]


async def test_one_request_claims_the_waiting_ones_and_answers_are_remembered() -> None:
    requests: list[list[tuple[str, str]]] = []
    held = {"taken": "globex"}

    async def claim(batch: Sequence[tuple[str, str]], at: datetime) -> dict[str, str]:
        requests.append(list(batch))
        return {play_id: held.setdefault(play_id, company) for company, play_id in batch}

    claims = PlayIdClaims(claim, DEFAULT_LIMITS)
    waiting = [start("acme", "b"), start("acme", "taken"), start("initech", "c")]
    assert await claims.holder("acme", "a", waiting, NOW) == "acme"
    assert requests == [[("acme", "a"), ("acme", "b"), ("acme", "taken"), ("initech", "c")]]
    # the ones claimed ahead are answered from memory
    assert await claims.holder("acme", "b", [], NOW) == "acme"
    assert await claims.holder("acme", "taken", [], NOW) == "globex"
    assert await claims.holder("initech", "c", [], NOW) == "initech"
    assert claims.requests == 1


def test_the_agent_queue_keeps_its_items_where_the_orchestrator_peeks() -> None:
    """``Flow8App._commands_waiting`` reads ``asyncio.Queue._queue`` of faust's channel queue."""
    queue: ThrowableQueue = ThrowableQueue(flow_control=FlowControlEvent())
    queue.put_nowait("first")
    queue.put_nowait("second")
    assert list(queue._queue) == ["first", "second"]
    assert queue.get_nowait() == "first"


@pytest.mark.mongo
async def test_mongo_claims_are_first_come_and_atomic() -> None:
    store = MongoStore(require_service("MONGODB_URI"), f"claims-{uuid.uuid4().hex[:8]}")
    await store.open()
    try:
        assert await store.plays.claim([("acme", "x"), ("acme", "y")], NOW) == {"x": "acme", "y": "acme"}
        # x held by acme; z claimed twice in one call goes to the first
        got = await store.plays.claim([("globex", "x"), ("globex", "z"), ("initech", "z")], NOW)
        assert got == {"x": "acme", "z": "globex"}
        # twenty workers racing for one id: one company wins, every one of them is told the same
        racers = [store.plays.claim([(f"co{i}", "race")], NOW) for i in range(20)]
        answers = {answer["race"] for answer in await asyncio.gather(*racers)}
        assert len(answers) == 1
        assert await store.plays.owner("race") == answers.pop()
    finally:
        await store.client.drop_database(store.database)
        await store.close()
