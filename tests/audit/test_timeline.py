"""The timeline model over histories the real embedded runtime wrote: attempts as bars with
their outcomes, the waits between retries, channel time, skipped and cancelled flowlets; and at
every point of every history it agrees with the engine's own fold."""

from __future__ import annotations

from datetime import timedelta

import pytest

from flow8_streams.audit.timeline import Outcome, Timeline, build
from flow8_streams.domain.events import (
    FlowletCancelled,
    FlowletCompleted,
    FlowletCompletedPayload,
    FlowletRetryScheduled,
)
from flow8_streams.domain.state import FlowletStatus
from flow8_streams.engine import fold
from tests.audit.report_plays import COMPANY, FLOWS, HOSTILE, PLAY_IDS, Recorded, recorded

__all__ = ["recorded"]  # the session fixture, used by name


def _timeline(recorded: Recorded, name: str) -> Timeline:
    return build(recorded.events(PLAY_IDS[name]))


def _inside(tl: Timeline) -> None:
    """Every bar and wait lies inside the play's span, start before end."""
    for lane in tl.lanes:
        for a in lane.attempts:
            assert a.end is not None
            assert tl.start <= a.start <= a.end <= tl.until, (lane.name, a)
        for w in lane.waits:
            assert tl.start <= w.start <= w.end <= tl.until, (lane.name, w)


def test_retries_are_attempts_with_the_backoff_between_them(recorded: Recorded) -> None:
    tl = _timeline(recorded, "retries")
    assert (tl.play_id, tl.company_id, tl.flow_id, tl.status) == (PLAY_IDS["retries"], COMPANY, "retries", "succeeded")
    flaky, after = tl.lanes
    assert flaky.name == "flaky" and flaky.module_ref == "fail" and flaky.status == "succeeded"
    assert [(a.number, a.outcome) for a in flaky.attempts] == [
        (1, Outcome.FAILED),
        (2, Outcome.FAILED),
        (3, Outcome.SUCCEEDED),
    ]
    assert flaky.retries == 2
    assert all("flaky (attempt" in (a.error or "") for a in flaky.attempts[:2]) and flaky.attempts[2].error is None
    assert [(w.after, w.backoff_ms) for w in flaky.waits] == [(1, 40), (2, 80)]
    for w, before, nxt in zip(flaky.waits, flaky.attempts, flaky.attempts[1:], strict=False):
        assert before.end is not None and before.end <= w.start  # the wait follows the failure
        assert w.end == nxt.scheduled_at  # and lasts until the next attempt is scheduled
        assert w.end - w.start >= timedelta(milliseconds=w.backoff_ms)  # the engine waits out the backoff
    assert after.depends_on == ("flaky",) and [a.outcome for a in after.attempts] == [Outcome.SUCCEEDED]
    assert flaky.attempts[-1].end is not None and after.attempts[0].start >= flaky.attempts[-1].end
    assert tl.end is not None and tl.end == tl.last_at and tl.duration_ms > 0
    assert tl.attempts == 4 and tl.events == len(recorded.events(PLAY_IDS["retries"]))
    _inside(tl)


def test_a_flowlet_failing_for_good_cancels_its_sibling_and_skips_its_dependant(recorded: Recorded) -> None:
    tl = _timeline(recorded, "failing")
    lanes = {lane.name: lane for lane in tl.lanes}
    assert tl.status == "failed" and tl.error is not None and "'bad' failed after 2 attempts" in tl.error
    bad, slow, downstream = lanes["bad"], lanes["slow"], lanes["downstream"]
    assert [a.outcome for a in bad.attempts] == [Outcome.FAILED, Outcome.FAILED]
    assert all(
        HOSTILE in (a.error or "") and a.retryable for a in bad.attempts
    )  # kept verbatim: escaping is the page's
    assert len(bad.waits) == 1
    assert slow.status == "cancelled" and [a.outcome for a in slow.attempts] == [Outcome.CANCELLED]
    cancelled = next(e for e in recorded.events(PLAY_IDS["failing"]) if isinstance(e, FlowletCancelled))
    assert slow.attempts[0].end == cancelled.at and cancelled.payload.flowlet == "slow"
    assert slow.reason is not None and "'bad' failed" in slow.reason
    assert downstream.status == "skipped" and downstream.attempts == () and downstream.skipped_at is not None
    assert downstream.reason is not None and tl.start <= downstream.skipped_at <= tl.until
    _inside(tl)


def test_a_timed_out_attempt_lasts_at_least_its_timeout(recorded: Recorded) -> None:
    tl = _timeline(recorded, "timeout")
    (stuck,) = tl.lanes
    (attempt,) = stuck.attempts
    assert attempt.outcome is Outcome.TIMED_OUT and attempt.timeout_ms == 150 and stuck.status == "timed_out"
    assert attempt.duration_ms(tl.until) >= 150  # the engine times it out at its deadline, never before
    assert tl.status == "failed"
    _inside(tl)


def test_a_deferred_flowlet_shows_its_channel_and_its_wait_for_it(recorded: Recorded) -> None:
    tl = _timeline(recorded, "channel")
    lanes = {lane.name: lane for lane in tl.lanes}
    (deferred,) = lanes["deferred"].attempts
    host, port = (deferred.channel or "").rsplit(":", 1)
    assert host and int(port) in recorded.channel_ports and lanes["deferred"].on_channel
    assert deferred.defer_after_ms == 60 and deferred.scheduled_at is not None and deferred.dispatched_at is not None
    assert deferred.dispatched_at - deferred.scheduled_at >= timedelta(milliseconds=60)  # deferred, then handed over
    assert deferred.queued_ms >= 60 and deferred.outcome is Outcome.SUCCEEDED
    (inline,) = lanes["inline"].attempts
    assert inline.channel is None and not lanes["inline"].on_channel and inline.dispatched_at is None
    assert tl.status == "succeeded"
    _inside(tl)


@pytest.mark.parametrize("name", list(FLOWS))
def test_at_every_seq_the_lanes_agree_with_the_engines_fold(recorded: Recorded, name: str) -> None:
    """Each prefix of a history is what the log held at that moment: its timeline's play status,
    lane statuses and attempt counts are the fold's."""
    events = recorded.events(PLAY_IDS[name])
    for n in range(1, len(events) + 1):
        tl, state = build(events[:n]), fold(events[:n])
        assert state is not None and tl.status == state.status.value, n
        for lane in tl.lanes:
            f = state.flowlets[lane.name]
            assert lane.status is f.status, (n, lane.name)
            assert len(lane.attempts) == f.attempts, (n, lane.name)
            running = [a for a in lane.attempts if a.outcome is Outcome.RUNNING]
            assert (len(running) == 1) == (f.status in {FlowletStatus.SCHEDULED, FlowletStatus.RUNNING}), (n, lane)
            assert all(a.end is None for a in running)
        if not state.finished:
            assert tl.end is None and tl.until == events[n - 1].at


def test_a_log_that_contradicts_itself_still_gives_a_timeline(recorded: Recorded) -> None:
    """An outcome for an attempt never scheduled, of a flowlet the flow does not name, and a retry
    whose next attempt never came: drawn as the events say, never refused."""
    events = recorded.events(PLAY_IDS["retries"])
    first, last = events[0], events[-1]
    stray = FlowletCompleted(
        **{**first.model_dump(exclude={"type", "payload"}), "seq": 2},
        payload=FlowletCompletedPayload(
            flowlet="ghost", attempt=7, output=None, started_at=first.at, ended_at=first.at + timedelta(milliseconds=5)
        ),
    )
    retry = next(e for e in events if isinstance(e, FlowletRetryScheduled))
    tl = build([first, stray, retry])
    lanes = {lane.name: lane for lane in tl.lanes}
    (ghost,) = lanes["ghost"].attempts
    assert (ghost.number, ghost.outcome, ghost.scheduled_at, lanes["ghost"].module_ref) == (
        7,
        Outcome.SUCCEEDED,
        None,
        None,
    )
    (wait,) = lanes["flaky"].waits
    assert wait.end == retry.payload.due_at and lanes["flaky"].attempts == ()
    assert tl.status == "running" and tl.end is None and last.at >= tl.until


def test_no_events_is_refused() -> None:
    with pytest.raises(ValueError, match="at least one event"):
        build([])
