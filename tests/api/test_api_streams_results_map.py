"""The map of finished plays ``flow8 serve --streams`` reads off ``flow8.play-results``: a result
round-tripped through its JSON shows the play exactly as the projection does, for its own company
only, and wakes the waits of that company's play alone."""

from __future__ import annotations

import asyncio

import orjson
import pytest

from flow8_streams.domain.results import PlayResult
from flow8_streams.http.common import JSON_OPTIONS
from flow8_streams.http.results import PlayResults
from flow8_streams.metrics import Metrics
from flow8_streams.stores.ports import PlayPage
from tests.stores.contract import final, new_id

pytest.importorskip("cachetools")


def on_the_wire(result: PlayResult) -> PlayResult:
    """``result`` as a reader of the topic gets it."""
    return PlayResult.model_validate_json(result.model_dump_json())


def test_a_result_shows_its_play_as_flow8_run_json_does() -> None:
    for ok in (True, False):
        state = final(new_id("p"), "acme", ok=ok)
        shown = on_the_wire(PlayResult.of(state)).public()
        assert shown is not None
        assert orjson.dumps(shown, option=JSON_OPTIONS) == orjson.dumps(state.public(), option=JSON_OPTIONS)


def test_a_large_play_result_leaves_its_detail_to_the_projection() -> None:
    state = final(new_id("p"), "acme").model_copy(update={"held_bytes": 385 * 1024})
    result = PlayResult.of(state)
    assert result.flowlets is None and result.input is None and result.public() is None
    results = PlayResults(10, 60, Metrics())
    results.put(result)
    assert results.get("acme", state.play_id) is None  # not kept: a GET reads the projection


async def test_a_result_answers_and_wakes_its_own_company_only() -> None:
    results = PlayResults(10, 60, Metrics())
    play_id = new_id("p")
    state = final(play_id, "acme")
    with results.awaiting("globex", play_id) as theirs, results.awaiting("acme", play_id) as ours:
        assert results.waiting == 2
        results.put(on_the_wire(PlayResult.of(state)))
        assert (await asyncio.wait_for(ours, 1)).company_id == "acme"
        assert not theirs.done()
    assert results.waiting == 0
    assert results.get("acme", play_id) is not None and results.get(None, play_id) is not None
    assert results.get("globex", play_id) is None
    assert [f.view["play_id"] for f in results.listed("acme", "succeeded", PlayPage())] == [play_id]
    assert results.listed("acme", "failed", PlayPage()) == results.listed("globex", None, PlayPage()) == []
    assert results.listed("acme", None, PlayPage(flow="other")) == []


def test_the_map_is_bounded_by_count() -> None:
    results = PlayResults(2, 60, Metrics())
    ids = [new_id("p") for _ in range(3)]
    for play_id in ids:
        results.put(PlayResult.of(final(play_id, "acme")))
    assert [results.get("acme", p) is not None for p in ids].count(True) == 2


def test_a_play_started_here_is_coming_until_its_result_is_read() -> None:
    results = PlayResults(10, 60, Metrics())
    play_id = new_id("p")
    assert not results.coming("acme", play_id)  # a wait on it looks in the projection once
    results.starting("acme", play_id)
    assert results.coming("acme", play_id)  # its result cannot have passed unseen: no look
    assert not results.coming("globex", play_id)  # another company's ask tells it nothing
    results.put(PlayResult.of(final(play_id, "acme")))
    assert not results.coming("acme", play_id)
