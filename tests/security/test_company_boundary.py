"""A message applies only to a play of its own company: the pure engine and the embedded
runtime. (The streams runtime: ``test_streams_boundary.py``.)"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from flow8_streams.domain.flow import FlowDefinition
from flow8_streams.domain.messages import (
    CancelPlay,
    ChannelHeartbeat,
    FlowletDispatch,
    FlowletResult,
    Message,
    Start,
    StartPlay,
    Tick,
)
from flow8_streams.domain.state import PlayState, PlayStatus
from flow8_streams.engine import step
from flow8_streams.errors import CompanyMismatch
from flow8_streams.modules.registry import ModuleRegistry
from flow8_streams.runtimes.local import LocalRuntime
from flow8_streams.runtimes.streams.channels import ChannelWatch
from flow8_streams.stores.sqlite import SqliteStore

T0 = datetime(2026, 1, 1, tzinfo=UTC)
OWNER, INTRUDER = "owner-co", "intruder-co"
PLAY = "shared-play-id"
FLOW = FlowDefinition.model_validate(
    {
        "name": "pay",
        "flowlets": [
            {"name": "charge", "module_ref": "sleep", "input": {"seconds": 0.3}},
            {"name": "receipt", "module_ref": "echo", "depends_on": ["charge"], "input": {"paid": True}},
        ],
    }
)


def started() -> PlayState:
    _, state = step(None, Start(play_id=PLAY, company_id=OWNER, flow=FLOW, input={}), T0)
    assert state is not None
    return state


def forged(company: str) -> list[Message]:
    later = T0 + timedelta(seconds=1)
    return [
        Start(play_id=PLAY, company_id=company, flow=FLOW, input={"take": "over"}),
        CancelPlay(company_id=company, play_id=PLAY),
        FlowletResult(
            play_id=PLAY,
            company_id=company,
            flowlet="charge",
            attempt=1,
            ok=True,
            output={"paid_to": "intruder"},
            started_at=later,
            ended_at=later,
        ),
        FlowletDispatch(play_id=PLAY, company_id=company, flowlet="charge", attempt=1, channel="evil:1"),
        Tick(play_id=PLAY, company_id=company),
    ]


@pytest.mark.parametrize("message", forged(INTRUDER), ids=lambda m: m.type)
def test_the_engine_refuses_every_message_of_another_company(message: Message) -> None:
    state = started()
    with pytest.raises(CompanyMismatch) as caught:
        step(state, message, T0 + timedelta(seconds=2))
    assert caught.value.reason == "company_mismatch"
    assert OWNER not in str(caught.value), "the refusal must not name the play's owner"


@pytest.mark.parametrize("message", forged(INTRUDER), ids=lambda m: m.type)
def test_a_finished_play_refuses_another_company_too(message: Message) -> None:
    state = started()
    events, state = step(state, CancelPlay(company_id=OWNER, play_id=PLAY), T0)
    assert state is not None and state.finished and events
    with pytest.raises(CompanyMismatch):
        step(state, message, T0 + timedelta(seconds=2))


def test_the_owner_is_served_as_before() -> None:
    state = started()
    _, after = step(state, CancelPlay(company_id=OWNER, play_id=PLAY), T0)
    assert after is not None and after.status is PlayStatus.CANCELLED


def test_generated_play_ids_are_reserved() -> None:
    with pytest.raises(ValueError, match="reserved"):
        StartPlay(company_id=INTRUDER, flow="pay", play_id="flow8-0b6a9e0c-6a40-5d07-9d5c-1f8f8f1d2c3b")


# ---------------------------------------------------------------- the embedded runtime


@pytest.fixture
async def runtime(tmp_path: Path, no_leaked_tasks: None) -> AsyncIterator[LocalRuntime]:
    store = SqliteStore(tmp_path / "flow8.db")
    try:
        async with LocalRuntime(store, ModuleRegistry.default(entry_points=False)) as rt:
            yield rt
    finally:
        store.close()


async def test_local_cancel_of_another_companys_play_is_refused(runtime: LocalRuntime) -> None:
    play = f"p-{uuid.uuid4().hex[:8]}"
    await runtime.start(FLOW, {}, company_id=OWNER, play_id=play)
    with pytest.raises(CompanyMismatch):
        await runtime.cancel(play, INTRUDER)
    final = await runtime.wait(play)
    assert final.status is PlayStatus.SUCCEEDED
    assert final.company_id == OWNER
    assert runtime.refused == {"company_mismatch": 1}


async def test_local_start_reusing_another_companys_play_id_is_refused(runtime: LocalRuntime) -> None:
    play = f"p-{uuid.uuid4().hex[:8]}"
    await runtime.start(FLOW, {}, company_id=OWNER, play_id=play)
    with pytest.raises(CompanyMismatch):  # while it runs
        await runtime.start(FLOW, {"take": "over"}, company_id=INTRUDER, play_id=play)
    final = await runtime.wait(play)
    with pytest.raises(CompanyMismatch):  # and once it is finished
        await runtime.start(FLOW, {"take": "over"}, company_id=INTRUDER, play_id=play)
    assert final.status is PlayStatus.SUCCEEDED and final.input == {}
    events = await runtime.store.log.read(play)
    assert {e.company_id for e in events} == {OWNER}
    assert await runtime.store.log.read(play, company_id=INTRUDER) == []
    assert await runtime.store.plays.get(INTRUDER, play) is None


async def test_local_a_start_still_in_the_inbox_holds_its_play_id(runtime: LocalRuntime) -> None:
    play = f"p-{uuid.uuid4().hex[:8]}"
    await runtime.start(FLOW, {}, company_id=OWNER, play_id=play)  # not decided yet
    with pytest.raises(CompanyMismatch):
        await runtime.start(FLOW, {"take": "over"}, company_id=INTRUDER, play_id=play)
    with pytest.raises(CompanyMismatch):
        await runtime.cancel(play, INTRUDER)
    final = await runtime.wait(play)
    assert final.company_id == OWNER and final.input == {}
    assert runtime.refused == {"company_mismatch": 2}


def test_a_channel_heartbeat_of_another_company_is_refused() -> None:
    deferred = FlowDefinition.model_validate(
        {"name": "long", "flowlets": [{"name": "work", "module_ref": "sleep", "defer_after_ms": 0}]}
    )
    _, state = step(None, Start(play_id=PLAY, company_id=OWNER, flow=deferred, input={}), T0)
    assert state is not None
    now = [100.0]
    watch = ChannelWatch(30.0, lambda module_ref, defer: defer is not None, clock=lambda: now[0])
    watch.track(state, partition=0)
    now[0] = 120.0
    with pytest.raises(CompanyMismatch):
        watch.beat(ChannelHeartbeat(play_id=PLAY, company_id=INTRUDER, flowlet="work", attempt=1))
    now[0] = 131.0  # the refused beat did not keep the flowlet alive: its timeout runs from 100
    assert [key for key, _ in watch.overdue()] == [(PLAY, "work", 1)]
