"""The store conformance suite: what every adapter of ``stores.ports`` must do.

``StoreContract`` uses nothing but the four ports (``store.log``, ``store.plays``,
``store.kv``, ``store.flows``) and their methods in ``stores/ports.py``. An adapter
joins by subclassing it with a ``store`` fixture (see ``test_sqlite.py``).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from flow8_streams.domain.events import Event, verify_chain
from flow8_streams.domain.flow import FlowDefinition
from flow8_streams.domain.messages import FlowletResult, Start
from flow8_streams.domain.state import PlayState, PlayStatus
from flow8_streams.engine import decide, fold
from flow8_streams.errors import InvalidInput
from flow8_streams.stores.ports import KVEntry

T0 = datetime(2030, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)
FLOW = FlowDefinition.model_validate(
    {
        "name": "contract",
        "flowlets": [
            {"name": "a", "module_ref": "echo"},
            {"name": "b", "module_ref": "echo", "depends_on": ["a"]},
        ],
    }
)


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def history(play_id: str, company_id: str, *, ok: bool = True, start: datetime = T0) -> list[Event]:
    """A real, chained history from the engine: a succeeds, then b succeeds (or fails)."""
    events = decide(None, Start(play_id=play_id, company_id=company_id, flow=FLOW, input={"n": 1}), start)
    for step, (name, succeeds) in enumerate((("a", True), ("b", ok)), start=1):
        at = start + timedelta(seconds=step)
        result = FlowletResult(
            play_id=play_id,
            company_id=company_id,
            flowlet=name,
            attempt=1,
            ok=succeeds,
            output={"from": name} if succeeds else None,
            error=None if succeeds else "no",
            started_at=at,
            ended_at=at,
        )
        events += decide(fold(events), result, at)
    return events


def states(events: list[Event]) -> list[PlayState]:
    """The state after each event (seq 1, 2, ...)."""
    out: list[PlayState] = []
    state: PlayState | None = None
    for event in events:
        state = fold([event], state)
        assert state is not None
        out.append(state)
    return out


def final(play_id: str, company_id: str, *, ok: bool = True, start: datetime = T0) -> PlayState:
    state = fold(history(play_id, company_id, ok=ok, start=start))
    assert state is not None
    return state


def running(play_id: str, company_id: str, *, start: datetime = T0) -> PlayState:
    return states(history(play_id, company_id, start=start))[1]


class StoreContract:
    """The contract. Subclass with a ``store`` fixture yielding a ready, empty store."""

    @pytest.fixture
    async def store(self) -> AsyncIterator[Any]:  # pragma: no cover - overridden
        raise NotImplementedError(f"{type(self).__name__} must override the `store` fixture")
        yield

    @pytest.fixture
    def company(self) -> str:
        return new_id("co")

    # ------------------------------------------------------------ event log

    async def test_log_reads_a_play_in_seq_order(self, store: Any, company: str) -> None:
        play = new_id("play")
        events = history(play, company)
        assert len(events) >= 6
        await store.log.append(list(reversed(events[3:])))
        await store.log.append(events[:3])

        read = await store.log.read(play)
        assert read == events
        assert verify_chain(read) == []
        assert await store.log.read(play, after_seq=4) == events[4:]
        assert await store.log.read(play, after_seq=len(events)) == []
        assert await store.log.read(new_id("unknown")) == []

    async def test_log_append_is_idempotent_on_play_and_seq(self, store: Any, company: str) -> None:
        play = new_id("play")
        events = history(play, company)
        await store.log.append(events[:4])
        await store.log.append(events)  # a redelivery of the first four, then the rest
        await store.log.append(events)
        assert await store.log.read(play) == events

        # an event at a stored (play_id, seq) is skipped, even with another body: first write wins
        forged = events[2].model_copy(update={"at": events[2].at + timedelta(hours=1)})
        assert forged != events[2]
        await store.log.append([forged])
        assert await store.log.read(play) == events

    async def test_log_keeps_plays_apart(self, store: Any, company: str) -> None:
        one, two = new_id("one"), new_id("two")
        first, second = history(one, company), history(two, company, ok=False)
        await store.log.append([e for pair in zip(first, second, strict=False) for e in pair])
        await store.log.append(second[len(first) :])
        assert await store.log.read(one) == first
        assert await store.log.read(two) == second

    # ------------------------------------------------------------ play projection

    async def test_projection_save_and_get(self, store: Any, company: str) -> None:
        play = new_id("play")
        state = final(play, company)
        await store.plays.save([state])
        assert await store.plays.get(company, play) == state
        assert await store.plays.get(None, play) == state
        assert await store.plays.get(new_id("other"), play) is None
        assert await store.plays.get(company, new_id("unknown")) is None

    async def test_projection_ignores_a_state_with_a_lower_seq(self, store: Any, company: str) -> None:
        play = new_id("play")
        steps = states(history(play, company))
        await store.plays.save([steps[3]])
        await store.plays.save([steps[1]])  # a late redelivery
        assert await store.plays.get(company, play) == steps[3]
        await store.plays.save([steps[3]])  # the same again
        assert await store.plays.get(company, play) == steps[3]
        await store.plays.save([steps[2], steps[-1], steps[0]])  # out of order in one call
        got = await store.plays.get(company, play)
        assert got == steps[-1] and got.status is PlayStatus.SUCCEEDED

    async def test_projection_list_filters_by_company_and_status(self, store: Any) -> None:
        acme, other = new_id("acme"), new_id("other")
        plays = {
            "acme-ok": final(new_id("p"), acme, start=T0),
            "acme-failed": final(new_id("p"), acme, ok=False, start=T0 + timedelta(minutes=1)),
            "acme-running": running(new_id("p"), acme, start=T0 + timedelta(minutes=2)),
            "other-running": running(new_id("p"), other, start=T0 + timedelta(minutes=3)),
        }
        await store.plays.save(list(plays.values()))

        def ids(found: list[PlayState]) -> set[str]:
            return {p.play_id for p in found}

        def want(*names: str) -> set[str]:
            return {plays[n].play_id for n in names}

        assert ids(await store.plays.list(acme)) == want("acme-ok", "acme-failed", "acme-running")
        assert ids(await store.plays.list(other)) == want("other-running")
        assert ids(await store.plays.list(acme, "failed")) == want("acme-failed")
        assert ids(await store.plays.list(acme, "succeeded")) == want("acme-ok")
        assert ids(await store.plays.list(acme, "cancelled")) == set()
        assert want("acme-running", "other-running") <= ids(await store.plays.list(status="running"))
        assert want(*plays) <= ids(await store.plays.list())
        assert await store.plays.list(new_id("nobody")) == []
        # newest first (by start), as `flow8 plays list` shows them
        assert ids(await store.plays.list(acme, limit=2)) == want("acme-running", "acme-failed")
        assert [p.play_id for p in await store.plays.list(acme)] == [
            plays[n].play_id for n in ("acme-running", "acme-failed", "acme-ok")
        ]
        # what is listed is the stored state itself
        assert await store.plays.list(other) == [plays["other-running"]]

    # ------------------------------------------------------------ KV

    async def test_kv_set_bumps_the_version_and_the_last_write_wins(self, store: Any, company: str) -> None:
        assert await store.kv.get(company, "k") is None
        assert await store.kv.set(company, "k", {"a": 1}) == KVEntry("k", {"a": 1}, 1)
        assert await store.kv.set(company, "k", [1, "two", None]) == KVEntry("k", [1, "two", None], 2)
        assert await store.kv.set(company, "k", "last") == KVEntry("k", "last", 3)
        assert await store.kv.get(company, "k") == KVEntry("k", "last", 3)
        # keys are per company
        assert await store.kv.get(new_id("other"), "k") is None

    async def test_kv_cas(self, store: Any, company: str) -> None:
        # 0 means "absent": creates the key once
        assert await store.kv.cas(company, "k", "first", 0) == KVEntry("k", "first", 1)
        assert await store.kv.cas(company, "k", "again", 0) is None
        assert await store.kv.get(company, "k") == KVEntry("k", "first", 1)
        # a wrong version writes nothing
        assert await store.kv.cas(company, "k", "stale", 2) is None
        assert await store.kv.get(company, "k") == KVEntry("k", "first", 1)
        # the right version writes and bumps it
        assert await store.kv.cas(company, "k", "second", 1) == KVEntry("k", "second", 2)
        assert await store.kv.get(company, "k") == KVEntry("k", "second", 2)
        assert await store.kv.cas(company, "k", "stale", 1) is None
        # an absent key has no version but 0
        assert await store.kv.cas(company, "absent", "x", 1) is None
        assert await store.kv.get(company, "absent") is None

    async def test_kv_incr_counts_each_op_id_once(self, store: Any, company: str) -> None:
        first = await store.kv.incr(company, "n", 2, "op-1")
        assert first == KVEntry("n", 2, 1)
        assert await store.kv.incr(company, "n", 3, "op-2") == KVEntry("n", 5, 2)
        # a redelivered op returns its first result and counts nothing
        assert await store.kv.incr(company, "n", 2, "op-1") == first
        assert await store.kv.incr(company, "n", 100, "op-1") == first
        assert await store.kv.get(company, "n") == KVEntry("n", 5, 2)
        assert await store.kv.incr(company, "n", 0.5, "op-3") == KVEntry("n", 5.5, 3)
        # set and incr share the version
        await store.kv.set(company, "n", 10)
        assert await store.kv.incr(company, "n", -1, "op-4") == KVEntry("n", 9, 5)
        # an absent key counts from 0
        assert await store.kv.incr(company, "fresh", 1, "op-5") == KVEntry("fresh", 1, 1)

    async def test_kv_incr_remembers_an_op_past_1000_writes_of_its_key(self, store: Any, company: str) -> None:
        # op ids are kept by age, not by count: a hot counter does not forget its young ops
        first = await store.kv.incr(company, "hot", 1, "op-0")
        for i in range(1, 1_200):  # MongoDB's count window (1,000) pruned at 1,100
            await store.kv.incr(company, "hot", 1, f"op-{i}")
        assert await store.kv.incr(company, "hot", 1, "op-0") == first
        assert await store.kv.get(company, "hot") == KVEntry("hot", 1_200, 1_200)

    async def test_kv_op_ids_are_per_company(self, store: Any, company: str) -> None:
        other = new_id("other")
        assert (await store.kv.incr(company, "n", 1, "op")).value == 1
        assert (await store.kv.incr(other, "n", 1, "op")).value == 1
        assert (await store.kv.get(other, "n")).value == 1

    @pytest.mark.parametrize("value", ["text", True, None, {"n": 1}, [1]])
    async def test_kv_incr_on_a_non_number_raises(self, store: Any, company: str, value: Any) -> None:
        await store.kv.set(company, "k", value)
        with pytest.raises(InvalidInput, match="not a number"):
            await store.kv.incr(company, "k", 1, "op-1")
        assert await store.kv.get(company, "k") == KVEntry("k", value, 1)
        # the failed op was not recorded: once the key holds a number it counts
        await store.kv.set(company, "k", 1)
        assert await store.kv.incr(company, "k", 1, "op-1") == KVEntry("k", 2, 3)

    async def test_kv_concurrent_incr_sums_exactly(self, store: Any, company: str) -> None:
        ops = [f"op-{i}" for i in range(200)]
        # every op twice, concurrently: each must count once
        results = await asyncio.gather(*(store.kv.incr(company, "hits", 1, op) for op in ops + ops))
        assert await store.kv.get(company, "hits") == KVEntry("hits", 200, 200)
        assert sorted(r.value for r in results[: len(ops)]) == list(range(1, 201))
        assert results[len(ops) :] == results[: len(ops)]

    # ------------------------------------------------------------ flow catalog

    async def test_flow_catalog_versions(self, store: Any, company: str) -> None:
        v1 = FLOW.model_copy(update={"version": 1})
        v2 = FlowDefinition.model_validate({**FLOW.model_dump(), "version": 2, "description": "second"})
        assert await store.flows.get(company, FLOW.name) is None
        assert await store.flows.put(company, v1) == v1
        assert await store.flows.get(company, FLOW.name) == v1
        assert await store.flows.put(company, v2) == v2

        assert await store.flows.get(company, FLOW.name) == v2  # latest when version is None
        assert await store.flows.get(company, FLOW.name, None) == v2
        assert await store.flows.get(company, FLOW.name, 1) == v1
        assert await store.flows.get(company, FLOW.name, 2) == v2
        assert await store.flows.get(company, FLOW.name, 3) is None
        assert await store.flows.get(company, "unknown") is None
        assert await store.flows.get(new_id("other"), FLOW.name) is None

    async def test_flow_catalog_latest_is_the_highest_version_not_the_last_put(self, store: Any, company: str) -> None:
        v3 = FlowDefinition.model_validate({**FLOW.model_dump(), "version": 3})
        v1 = FlowDefinition.model_validate({**FLOW.model_dump(), "version": 1})
        await store.flows.put(company, v3)
        await store.flows.put(company, v1)
        assert await store.flows.get(company, FLOW.name) == v3
