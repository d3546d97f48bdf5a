"""The projection's pure part (``engine.projection``): no store, no services."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from flow8_streams.domain.events import Event
from flow8_streams.engine import fold
from flow8_streams.engine.projection import Batch, Gap, Stored, latest, project
from tests.stores.contract import T0, history, states

ONE = history("one", "acme")
TWO = history("two", "acme", ok=False)
OTHER = history("three", "globex")
LOGS = {"one": ONE, "two": TWO, "three": OTHER}


def stored_at(events: list[Event], seq: int) -> Stored:
    return Stored(events[0].company_id, seq, states(events)[seq - 1] if seq else None)


def test_one_state_per_play_the_latest_whatever_the_order() -> None:
    mixed = [e for pair in zip(ONE, TWO, strict=False) for e in pair] + TWO[len(ONE) :]
    out = project(Batch.of(list(reversed(mixed))), {})
    assert out.states == {"one": fold(ONE), "two": fold(TWO)}
    result = out.result()
    assert (result.applied, result.skipped, result.plays, result.gaps, result.rejected) == (len(mixed), 0, 2, [], {})
    assert sorted(result.appended_at) == sorted(e.at for e in mixed)


def test_redelivered_seqs_are_skipped_and_the_rest_continues_the_stored_play() -> None:
    out = project(Batch.of(ONE[1:] + ONE[2:4]), {"one": stored_at(ONE, 3)})  # 2 and 3 stored; 3, 4 twice
    assert out.states == {"one": fold(ONE)}
    assert out.applied["one"] == ONE[3:]
    assert out.skipped == 2 + 2  # seqs 2, 3 below the stored seq; 3, 4 repeated in the batch
    nothing = project(Batch.of(ONE[:3]), {"one": stored_at(ONE, 3)})
    assert (nothing.states, nothing.skipped, nothing.result().plays) == ({}, 3, 0)


def test_a_gap_stops_the_play_after_the_run_before_it() -> None:
    out = project(Batch.of([ONE[2], ONE[3], ONE[5], *TWO]), {"one": stored_at(ONE, 2)})
    assert out.gaps == [Gap("one", "acme", expected_seq=5, got_seq=6)]
    assert out.states == {"one": states(ONE)[3], "two": fold(TWO)}  # the other play is written all the same
    stalled = project(Batch.of(ONE[3:]), {"one": stored_at(ONE, 2)})
    assert (stalled.states, stalled.gaps) == ({}, [Gap("one", "acme", expected_seq=3, got_seq=4)])


def test_a_play_the_store_does_not_hold_must_start_at_seq_1() -> None:
    out = project(Batch.of(ONE[2:]), {})
    assert out.states == {} and out.gaps == [Gap("one", "acme", expected_seq=1, got_seq=3)]


def test_another_companys_play_and_two_companies_in_one_play_are_rejected() -> None:
    theirs = Stored("globex", 2, states(history("one", "globex"))[1])
    out = project(Batch.of(ONE + TWO), {"one": theirs})
    assert out.rejected == {"one": "the play id belongs to another company"}
    assert list(out.states) == ["two"]
    forged = OTHER[1].model_copy(update={"company_id": "acme"})
    mixed = project(Batch.of([*OTHER, forged]), {})
    assert list(mixed.rejected) == ["three"] and "two companies" in mixed.rejected["three"]
    assert mixed.states == {}


def test_a_run_the_engine_refuses_is_rejected_and_a_refused_write_is_not_applied() -> None:
    restart = ONE[0].model_copy(update={"seq": 2})  # a second PlayStarted
    broken = project(Batch.of([restart]), {"one": stored_at(ONE, 1)})
    assert broken.states == {} and "PlayStarted" in broken.rejected["one"]
    stateless = project(Batch.of(ONE[1:]), {"one": Stored("acme", 1, None)})
    assert stateless.states == {} and "without its state" in stateless.rejected["one"]
    refused = project(Batch.of(ONE + TWO), {}).result({"two": "the play id belongs to another company"})
    assert (refused.plays, refused.applied, list(refused.rejected)) == (1, len(ONE), ["two"])


def test_latest_keeps_the_highest_seq_of_each_play() -> None:
    steps = states(ONE)
    assert latest([steps[3], steps[1], steps[-1], steps[0], *states(TWO)[:2]]) == {
        "one": steps[-1],
        "two": states(TWO)[1],
    }


@st.composite
def deliveries(draw: st.DrawFn) -> list[list[Event]]:
    """The three logs, each event delivered one or more times, shuffled, cut into batches."""
    events = [e for log in LOGS.values() for e in log]
    delivered = [e for e in events for _ in range(draw(st.integers(1, 3)))]
    delivered = draw(st.permutations(delivered))
    cuts = sorted(draw(st.sets(st.integers(0, len(delivered)), max_size=6)))
    return [delivered[a:b] for a, b in zip([0, *cuts], [*cuts, len(delivered)], strict=True)]


@settings(max_examples=150, deadline=None)
@given(deliveries())
def test_any_redelivery_and_order_projects_to_the_clean_logs_states(batches: list[list[Event]]) -> None:
    """Batches applied one after another, each onto what the last wrote, with gaps filled
    by reading the log again (what the streams runtime's repair does), end where the clean
    log ends; a play never moves backwards on the way."""
    stored: dict[str, Stored] = {}
    for batch in [*batches, []]:
        out = project(Batch.of(batch), stored)
        assert not out.rejected
        for play_id, state in out.states.items():
            before = stored.get(play_id)
            assert before is None or state.seq > before.seq
            stored[play_id] = Stored(state.company_id, state.seq, state)
        if out.gaps:  # repair: the whole log of the gapped plays, as the log gives it
            repaired = project(Batch.of([e for gap in out.gaps for e in LOGS[gap.play_id]]), stored)
            assert not repaired.gaps
            for play_id, state in repaired.states.items():
                stored[play_id] = Stored(state.company_id, state.seq, state)
    seen = {e.play_id for batch in batches for e in batch}
    assert {p: s.state for p, s in stored.items()} == {p: fold(LOGS[p]) for p in seen}


def test_the_fixtures_are_real_histories() -> None:
    assert all(log[0].type == "PlayStarted" and log[0].at == T0 for log in LOGS.values())
    assert len(ONE) >= 6 and fold(TWO) is not None
