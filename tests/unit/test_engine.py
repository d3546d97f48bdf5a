"""The pure engine: ``decide`` / ``evolve`` / ``fold`` driven by hand with a fixed fake clock."""

from __future__ import annotations

import itertools
import json
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from _helpers import COMPANY, PLAY, T0, Clock, Play, diamond, fl, flow, replay_messages, summary, types

from flow8_streams.domain import events as ev
from flow8_streams.domain.messages import CancelPlay, FlowletDispatch, FlowletResult, Start, Tick
from flow8_streams.domain.state import FlowletStatus, PlayStatus
from flow8_streams.engine import EngineError, decide, evolve, fold, in_flight, next_wakeup

S = FlowletStatus


def payloads(events: list[ev.Event], kind: type[ev._Event]) -> list[Any]:
    return [e.payload for e in events if isinstance(e, kind)]


def statuses(play: Play) -> dict[str, FlowletStatus]:
    return {name: f.status for name, f in play.st.flowlets.items()}


def run_diamond(clock: Clock | None = None) -> Play:
    """A full happy diamond, used by the log-level tests below."""
    play = Play(diamond(), {"order": 42}, clock=clock)
    play.start()
    play.clock.advance(100)
    play.ok("a", {"v": 1})
    play.clock.advance(100)
    play.ok("c", "C")
    play.clock.advance(100)
    play.ok("b", ["B"])
    play.clock.advance(100)
    play.ok("d", {"done": True})
    return play


# ------------------------------------------------------------------ happy paths


def test_diamond_happy_path() -> None:
    play = Play(diamond(), {"order": 42})

    assert summary(play.start()) == [("PlayStarted", None), ("FlowletScheduled", "a")]
    assert play.st.status is PlayStatus.RUNNING
    assert statuses(play) == {"a": S.SCHEDULED, "b": S.PENDING, "c": S.PENDING, "d": S.PENDING}

    play.clock.advance(100)
    step = play.ok("a", {"v": 1})
    # b and c are released by the same decision: they run in parallel
    assert summary(step) == [("FlowletCompleted", "a"), ("FlowletScheduled", "b"), ("FlowletScheduled", "c")]
    assert {e.at for e in step} == {play.clock.now}

    play.clock.advance(100)
    assert summary(play.ok("c", "C")) == [("FlowletCompleted", "c")]  # d still waits for b
    assert play.st.flowlets["d"].status is S.PENDING

    play.clock.advance(100)
    assert summary(play.ok("b", ["B"])) == [("FlowletCompleted", "b"), ("FlowletScheduled", "d")]

    play.clock.advance(100)
    last = play.ok("d", {"done": True})
    assert summary(last) == [("FlowletCompleted", "d"), ("PlayCompleted", None)]

    assert types(play.events) == [
        "PlayStarted",
        "FlowletScheduled",
        "FlowletCompleted",
        "FlowletScheduled",
        "FlowletScheduled",
        "FlowletCompleted",
        "FlowletCompleted",
        "FlowletScheduled",
        "FlowletCompleted",
        "PlayCompleted",
    ]
    assert [e.seq for e in play.events] == list(range(1, 11))
    state = play.st
    assert state.status is PlayStatus.SUCCEEDED
    assert state.output == {"d": {"done": True}}
    assert state.ended_at == T0 + timedelta(milliseconds=400)
    assert state.started_at == T0
    assert all(f.status is S.SUCCEEDED and f.attempts == 1 for f in state.flowlets.values())
    assert state.flowlets["b"].output == ["B"]
    assert next_wakeup(state) is None
    assert in_flight(state) == []


def test_default_input_shape() -> None:
    play = Play(diamond(), {"order": 42})
    (scheduled_a,) = payloads(play.start(), ev.FlowletScheduled)
    assert scheduled_a.input == {"input": {"order": 42}, "deps": {}}
    play.ok("a", {"v": 1})
    assert [p.input for p in payloads(play.events, ev.FlowletScheduled)][1:] == [
        {"input": {"order": 42}, "deps": {"a": {"v": 1}}},
        {"input": {"order": 42}, "deps": {"a": {"v": 1}}},
    ]
    play.ok("b", "B")
    play.ok("c", None)
    (scheduled_d,) = payloads(play.events[-1:], ev.FlowletScheduled)
    assert scheduled_d.input == {"input": {"order": 42}, "deps": {"b": "B", "c": None}}
    assert play.st.flowlets["d"].task_input == scheduled_d.input


def test_scheduled_payload_carries_module_timeout_deadline() -> None:
    definition = flow(fl("a", module_ref="http.get", timeout="30s", defer_after_ms=250))
    play = Play(definition)
    play.clock.advance(5)
    (p,) = payloads(play.start(), ev.FlowletScheduled)
    assert (p.flowlet, p.attempt, p.module_ref, p.timeout_ms, p.defer_after_ms) == ("a", 1, "http.get", 30_000, 250)
    assert p.deadline == play.clock.now + timedelta(seconds=30)
    assert play.st.flowlets["a"].deadline == p.deadline
    assert play.st.flowlets["a"].started_at == play.clock.now


def test_templated_inputs() -> None:
    definition = flow(
        fl("a"),
        fl(
            "b",
            "a",
            input={
                "doc": "${input.docs.0}",
                "v": "${flowlets.a.output.value}",
                "msg": "a said ${flowlets.a.output}",
                "both": ["${input.n}", {"n": "${flowlets.a.output.value}"}],
                "literal": 7,
            },
        ),
    )
    play = Play(definition, {"docs": [{"id": 1}, {"id": 2}], "n": 3})
    play.start()
    play.ok("a", {"value": 10})
    (p,) = payloads(play.events, ev.FlowletScheduled)[1:]
    assert p.input == {
        "doc": {"id": 1},
        "v": 10,
        "msg": 'a said {"value":10}',
        "both": [3, {"n": 10}],
        "literal": 7,
    }


def test_play_output_is_every_sink_output() -> None:
    play = Play(flow(fl("a"), fl("b", "a"), fl("c", "a"), fl("lone")))
    play.start()
    play.ok("lone", 0)
    play.ok("a", "A")
    play.ok("c", {"c": 1})
    last = play.ok("b", None)
    assert types(last)[-1] == "PlayCompleted"
    assert last[-1].payload == ev.PlayCompletedPayload(output={"b": None, "c": {"c": 1}, "lone": 0})
    assert play.st.output == {"b": None, "c": {"c": 1}, "lone": 0}


def test_multiple_roots_scheduled_by_start() -> None:
    play = Play(flow(fl("x"), fl("y"), fl("z", "x", "y")))
    assert summary(play.start()) == [("PlayStarted", None), ("FlowletScheduled", "x"), ("FlowletScheduled", "y")]


# ------------------------------------------------------------------ retries


def test_retry_with_backoff() -> None:
    retry = {"max_attempts": 3, "backoff_ms": 1_000, "multiplier": 3}
    play = Play(flow(fl("a", retry=retry, timeout="1h")))
    play.start()

    play.clock.advance(50)
    step = play.fail("a", "boom1")
    assert summary(step) == [("FlowletFailed", "a"), ("FlowletRetryScheduled", "a")]
    failed, retry1 = step[0].payload, step[1].payload
    assert (failed.attempt, failed.error, failed.retryable) == (1, "boom1", True)
    assert (retry1.attempt, retry1.backoff_ms) == (2, 1_000)
    assert retry1.due_at == play.clock.now + timedelta(milliseconds=1_000)
    assert play.st.flowlets["a"].status is S.RETRY_WAIT
    assert play.st.flowlets["a"].retry_at == retry1.due_at
    assert next_wakeup(play.st) == retry1.due_at
    assert in_flight(play.st) == []

    play.clock.set(retry1.due_at - timedelta(milliseconds=1))
    assert play.tick() == []  # not due yet

    play.clock.set(retry1.due_at)
    (scheduled,) = play.tick()
    assert isinstance(scheduled, ev.FlowletScheduled)
    assert (scheduled.payload.attempt, scheduled.payload.deadline) == (2, play.clock.now + timedelta(hours=1))
    assert play.st.flowlets["a"].attempts == 2
    assert play.st.flowlets["a"].started_at == T0  # the first attempt's start is kept

    play.clock.advance(10)
    step = play.fail("a", "boom2")
    retry2 = step[1].payload
    assert (retry2.attempt, retry2.backoff_ms) == (3, 3_000)  # 1000 * 3 ** (2 - 1)
    assert retry2.due_at == play.clock.now + timedelta(milliseconds=3_000)

    play.clock.set(retry2.due_at)
    assert summary(play.tick()) == [("FlowletScheduled", "a")]
    assert play.st.flowlets["a"].attempts == 3

    step = play.fail("a", "boom3")
    assert summary(step) == [("FlowletFailed", "a"), ("PlayFailed", "a")]
    assert step[-1].payload == ev.PlayFailedPayload(error="flowlet 'a' failed after 3 attempts: boom3", flowlet="a")
    assert play.st.status is PlayStatus.FAILED
    assert play.st.error == "flowlet 'a' failed after 3 attempts: boom3"
    assert play.st.flowlets["a"].status is S.FAILED


def test_retry_backoff_is_capped() -> None:
    retry = {"max_attempts": 4, "backoff_ms": 400, "multiplier": 10, "max_backoff_ms": 5_000}
    play = Play(flow(fl("a", retry=retry)))
    play.start()
    backoffs = []
    for _ in range(3):
        step = play.fail("a")
        (r,) = payloads(step, ev.FlowletRetryScheduled)
        backoffs.append(r.backoff_ms)
        play.clock.set(r.due_at)
        play.tick()
    assert backoffs == [400, 4_000, 5_000]


def test_zero_backoff_reschedules_in_the_same_decision() -> None:
    play = Play(flow(fl("a", retry={"max_attempts": 2, "backoff_ms": 0})))
    play.start()
    step = play.fail("a")
    assert summary(step) == [("FlowletFailed", "a"), ("FlowletRetryScheduled", "a"), ("FlowletScheduled", "a")]
    assert step[1].payload.due_at == play.clock.now
    assert step[2].payload.attempt == 2
    assert play.st.flowlets["a"].status is S.SCHEDULED


def test_success_on_a_retry_completes() -> None:
    play = Play(flow(fl("a", retry={"max_attempts": 2, "backoff_ms": 0}), fl("b", "a")))
    play.start()
    play.fail("a")
    assert summary(play.ok("a", 1)) == [("FlowletCompleted", "a"), ("FlowletScheduled", "b")]
    assert play.st.flowlets["a"].attempts == 2
    assert play.st.flowlets["a"].error is None
    play.ok("b", 2)
    assert play.st.status is PlayStatus.SUCCEEDED


def test_failure_message_defaults() -> None:
    play = Play(flow(fl("a")))
    play.start()
    step = play.send(play.result("a", ok=False, error=None))
    assert step[0].payload.error == "failed"
    assert step[-1].payload.error == "flowlet 'a' failed after 1 attempt: failed"


# ------------------------------------------------------------------ fail fast: skip downstream, cancel siblings


def test_retries_exhausted_fails_play_skips_downstream_cancels_siblings() -> None:
    definition = flow(
        fl("a", retry={"max_attempts": 2, "backoff_ms": 100}),
        fl("slow"),
        fl("waiting", retry={"max_attempts": 3, "backoff_ms": 10_000}),
        fl("down", "a"),
        fl("deeper", "down", "slow"),
    )
    play = Play(definition)
    play.start()
    play.fail("waiting")  # now in retry_wait
    play.dispatch("slow")  # now running on a channel
    play.fail("a")
    play.clock.advance(100)
    play.tick()
    assert statuses(play) == {
        "a": S.SCHEDULED,
        "slow": S.RUNNING,
        "waiting": S.RETRY_WAIT,
        "down": S.PENDING,
        "deeper": S.PENDING,
    }

    step = play.fail("a", "gave up")
    assert summary(step) == [
        ("FlowletFailed", "a"),
        ("FlowletCancelled", "slow"),
        ("FlowletCancelled", "waiting"),
        ("FlowletSkipped", "down"),
        ("FlowletSkipped", "deeper"),
        ("PlayFailed", "a"),
    ]
    cancelled = payloads(step, ev.FlowletCancelled)
    assert [(c.flowlet, c.attempt) for c in cancelled] == [("slow", 1), ("waiting", 1)]
    assert {c.reason for c in cancelled} == {"play failed: 'a' failed"}
    assert {s.reason for s in payloads(step, ev.FlowletSkipped)} == {"play failed: 'a' failed"}
    assert step[-1].payload == ev.PlayFailedPayload(error="flowlet 'a' failed after 2 attempts: gave up", flowlet="a")
    assert statuses(play) == {
        "a": S.FAILED,
        "slow": S.CANCELLED,
        "waiting": S.CANCELLED,
        "down": S.SKIPPED,
        "deeper": S.SKIPPED,
    }
    assert all(f.deadline is None and f.task_input is None for f in play.st.flowlets.values())
    assert next_wakeup(play.st) is None
    assert in_flight(play.st) == []

    # the cancelled sibling's late result, a retry tick: nothing changes
    assert play.ok("slow", "late") == []
    play.clock.advance(60_000)
    assert play.tick() == []


def test_non_retryable_failure_skips_retries() -> None:
    play = Play(flow(fl("a", retry={"max_attempts": 5, "backoff_ms": 10}), fl("b", "a")))
    play.start()
    step = play.fail("a", "bad request", retryable=False)
    assert summary(step) == [("FlowletFailed", "a"), ("FlowletSkipped", "b"), ("PlayFailed", "a")]
    assert step[0].payload.retryable is False
    assert step[-1].payload.error == "flowlet 'a' failed after 1 attempt: bad request"


# ------------------------------------------------------------------ stale and duplicate results


def test_duplicate_delivery_is_ignored() -> None:
    play = Play(diamond())
    play.start()
    first = play.result("a", ok=True, output=1)
    assert len(play.send(first)) == 3
    state = play.st
    assert play.send(first) == []
    assert play.send(first.model_copy(update={"ok": False, "error": "late failure"})) == []
    assert play.st is state


def test_result_for_wrong_attempt_is_ignored() -> None:
    play = Play(flow(fl("a", retry={"max_attempts": 3, "backoff_ms": 100})))
    play.start()
    assert play.ok("a", "future", attempt=2) == []  # not yet scheduled
    play.fail("a")
    play.clock.advance(100)
    play.tick()
    assert play.st.flowlets["a"].attempts == 2
    assert play.ok("a", "old", attempt=1) == []  # the failed attempt reports again
    assert play.ok("a", "future", attempt=3) == []
    assert summary(play.ok("a", "now", attempt=2))[0] == ("FlowletCompleted", "a")
    assert play.st.output == {"a": "now"}


def test_result_while_waiting_for_retry_is_ignored() -> None:
    play = Play(flow(fl("a", retry={"max_attempts": 2, "backoff_ms": 100})))
    play.start()
    play.fail("a")
    assert play.ok("a", "x", attempt=1) == []
    assert play.st.flowlets["a"].status is S.RETRY_WAIT


def test_result_for_pending_or_unknown_flowlet_is_ignored() -> None:
    play = Play(diamond())
    play.start()
    assert play.ok("b", 1, attempt=1) == []
    assert play.ok("nope", 1, attempt=1) == []


def test_result_after_timeout_is_ignored() -> None:
    play = Play(flow(fl("a", timeout="1s", retry={"max_attempts": 2, "backoff_ms": 500})))
    play.start()
    play.clock.advance(1_000)
    assert summary(play.tick()) == [("FlowletTimedOut", "a"), ("FlowletRetryScheduled", "a")]
    assert play.ok("a", "too late", attempt=1) == []
    play.clock.advance(500)
    play.tick()
    assert play.ok("a", "still too late", attempt=1) == []
    assert summary(play.ok("a", "in time", attempt=2)) == [("FlowletCompleted", "a"), ("PlayCompleted", None)]


def test_result_after_cancel_is_ignored() -> None:
    play = Play(diamond())
    play.start()
    play.cancel()
    assert play.ok("a", 1, attempt=1) == []
    assert play.fail("a", attempt=1) == []


# ------------------------------------------------------------------ timeouts


def test_timeout_via_tick_then_retry_policy() -> None:
    play = Play(flow(fl("a", timeout="2s", retry={"max_attempts": 2, "backoff_ms": 300}), fl("b", "a")))
    play.start()
    deadline = T0 + timedelta(seconds=2)
    assert next_wakeup(play.st) == deadline

    play.clock.set(deadline - timedelta(milliseconds=1))
    assert play.tick() == []

    play.clock.set(deadline)
    step = play.tick()
    assert summary(step) == [("FlowletTimedOut", "a"), ("FlowletRetryScheduled", "a")]
    assert step[0].payload == ev.FlowletTimedOutPayload(flowlet="a", attempt=1, timeout_ms=2_000)
    assert step[1].payload.due_at == deadline + timedelta(milliseconds=300)
    assert play.st.flowlets["a"].error == "timed out after 2000 ms"

    play.clock.advance(300)
    (scheduled,) = play.tick()
    assert scheduled.payload.attempt == 2
    assert scheduled.payload.deadline == play.clock.now + timedelta(seconds=2)

    play.clock.advance(2_500)  # long after the second deadline
    step = play.tick()
    assert summary(step) == [("FlowletTimedOut", "a"), ("FlowletSkipped", "b"), ("PlayFailed", "a")]
    assert step[-1].payload.error == "flowlet 'a' failed after 2 attempts: timed out after 2000 ms"
    assert play.st.flowlets["a"].status is S.TIMED_OUT


def test_tick_times_out_only_expired_flowlets() -> None:
    play = Play(flow(fl("fast", timeout="1s", retry={"max_attempts": 2, "backoff_ms": 0}), fl("slow", timeout="1m")))
    play.start()
    play.clock.advance(1_000)
    step = play.tick()
    assert summary(step) == [
        ("FlowletTimedOut", "fast"),
        ("FlowletRetryScheduled", "fast"),
        ("FlowletScheduled", "fast"),
    ]
    assert play.st.flowlets["slow"].status is S.SCHEDULED
    assert next_wakeup(play.st) == play.clock.now + timedelta(seconds=1)


def test_timeout_after_dispatch() -> None:
    play = Play(flow(fl("a", timeout="1s")))
    play.start()
    play.dispatch("a", "port-7001")
    assert play.st.flowlets["a"].status is S.RUNNING
    assert next_wakeup(play.st) == T0 + timedelta(seconds=1)
    play.clock.advance(1_000)
    assert summary(play.tick()) == [("FlowletTimedOut", "a"), ("PlayFailed", "a")]


def test_tick_on_two_expired_flowlets_fails_once() -> None:
    play = Play(flow(fl("x", timeout="1s"), fl("y", timeout="1s")))
    play.start()
    play.clock.advance(5_000)
    step = play.tick()
    assert summary(step) == [("FlowletTimedOut", "x"), ("FlowletCancelled", "y"), ("PlayFailed", "x")]


# ------------------------------------------------------------------ unresolvable references at schedule time


def test_unresolvable_reference_fails_the_flowlet_without_retry() -> None:
    definition = flow(
        fl("a"),
        fl("b", "a", input={"y": "${flowlets.a.output.y}"}, retry={"max_attempts": 3, "backoff_ms": 10}),
        fl("c", "a"),
    )
    play = Play(definition)
    play.start()
    step = play.ok("a", {"x": 1})
    assert summary(step) == [
        ("FlowletCompleted", "a"),
        ("FlowletFailed", "b"),
        ("FlowletSkipped", "c"),
        ("PlayFailed", "b"),
    ]
    failed = step[1].payload
    assert failed.attempt == 1
    assert failed.retryable is False
    assert failed.error == "flowlet 'b': ${flowlets.a.output.y} does not resolve: no 'y' at (top)"
    assert "${flowlets.a.output.y}" in play.st.error
    assert play.st.flowlets["b"].attempts == 1


def test_unresolvable_input_reference_at_start() -> None:
    definition = flow(fl("r1"), fl("r2", input={"v": "${input.missing}"}), fl("r3"))
    play = Play(definition, {"present": 1})
    step = play.start()
    assert summary(step) == [
        ("PlayStarted", None),
        ("FlowletScheduled", "r1"),
        ("FlowletFailed", "r2"),
        ("FlowletCancelled", "r1"),
        ("FlowletSkipped", "r3"),
        ("PlayFailed", "r2"),
    ]
    assert "${input.missing}" in step[2].payload.error
    assert play.st.status is PlayStatus.FAILED


def test_odd_list_index_in_template_fails_the_flowlet_not_the_host() -> None:
    play = Play(flow(fl("a", input={"d": "${input.docs.--1}"})), {"docs": [1, 2]})
    step = play.start()  # must not raise
    assert summary(step) == [("PlayStarted", None), ("FlowletFailed", "a"), ("PlayFailed", "a")]
    assert "${input.docs.--1}" in step[1].payload.error


# ------------------------------------------------------------------ cancel, start, finished plays


def test_cancel_play() -> None:
    play = Play(flow(fl("a"), fl("b", retry={"max_attempts": 2, "backoff_ms": 100}), fl("c", "a")))
    play.start()
    play.fail("b")
    play.clock.advance(10)
    step = play.cancel("operator said so")
    assert summary(step) == [
        ("FlowletCancelled", "a"),
        ("FlowletCancelled", "b"),
        ("FlowletSkipped", "c"),
        ("PlayCancelled", None),
    ]
    assert step[-1].payload == ev.PlayCancelledPayload(reason="operator said so")
    assert {p.reason for p in payloads(step, ev.FlowletCancelled)} == {"operator said so"}
    state = play.st
    assert state.status is PlayStatus.CANCELLED
    assert state.finished
    assert state.error == "operator said so"
    assert state.ended_at == play.clock.now
    assert next_wakeup(state) is None
    assert play.cancel() == []


def test_start_of_an_existing_play_is_a_no_op() -> None:
    play = Play(diamond(), {"x": 1})
    play.start()
    state = play.st
    assert play.start() == []
    other = Start(play_id=PLAY, company_id=COMPANY, flow=flow(fl("z")), input=None)
    assert decide(state, other, play.clock.now) == []
    play.ok("a", 1)
    assert play.start() == []


@pytest.mark.parametrize("ending", ["complete", "fail", "cancel"])
def test_messages_for_a_finished_play_are_no_ops(ending: str) -> None:
    play = Play(flow(fl("a", retry={"max_attempts": 2, "backoff_ms": 100}), fl("b")))
    play.start()
    if ending == "complete":
        play.ok("a", 1)
        play.ok("b", 2)
    elif ending == "fail":
        play.fail("b", retryable=False)
    else:
        play.cancel()
    state = play.st
    assert state.finished
    later = play.clock.advance(s=3_600)
    for message in (
        FlowletResult(
            play_id=PLAY, company_id=COMPANY, flowlet="a", attempt=1, ok=True, started_at=later, ended_at=later
        ),
        FlowletResult(
            play_id=PLAY,
            company_id=COMPANY,
            flowlet="b",
            attempt=1,
            ok=False,
            error="x",
            started_at=later,
            ended_at=later,
        ),
        Tick(play_id=PLAY, company_id=COMPANY),
        CancelPlay(company_id=COMPANY, play_id=PLAY),
        FlowletDispatch(play_id=PLAY, company_id=COMPANY, flowlet="a", attempt=1, channel="c"),
        Start(play_id=PLAY, company_id=COMPANY, flow=play.flow),
    ):
        assert decide(state, message, later) == [], message


def test_messages_for_an_unknown_play_are_no_ops() -> None:
    for message in (
        Tick(play_id=PLAY, company_id=COMPANY),
        CancelPlay(company_id=COMPANY, play_id=PLAY),
        FlowletDispatch(play_id=PLAY, company_id=COMPANY, flowlet="a", attempt=1, channel="c"),
        FlowletResult(play_id=PLAY, company_id=COMPANY, flowlet="a", attempt=1, ok=True, started_at=T0, ended_at=T0),
    ):
        assert decide(None, message, T0) == []


# ------------------------------------------------------------------ dispatch


def test_dispatch() -> None:
    play = Play(flow(fl("a", retry={"max_attempts": 2, "backoff_ms": 0})))
    play.start()
    assert play.dispatch("a", "port-7001", attempt=2) == []
    step = play.dispatch("a", "port-7001")
    assert summary(step) == [("FlowletDispatched", "a")]
    assert step[0].payload == ev.FlowletDispatchedPayload(flowlet="a", attempt=1, channel="port-7001")
    assert play.st.flowlets["a"].status is S.RUNNING
    assert play.st.flowlets["a"].channel == "port-7001"
    assert in_flight(play.st) == [("a", play.st.flowlets["a"])]
    assert play.dispatch("a", "port-7002") == []  # already running
    assert play.dispatch("ghost", attempt=1) == []
    play.fail("a")  # retried at once (backoff 0): attempt 2 is scheduled, no channel yet
    assert play.st.flowlets["a"].channel is None
    assert play.dispatch("a", "port-7003", attempt=1) == []
    assert summary(play.ok("a", "done")) == [("FlowletCompleted", "a"), ("PlayCompleted", None)]


# ------------------------------------------------------------------ next_wakeup / in_flight


def test_next_wakeup_is_earliest_deadline_or_retry() -> None:
    definition = flow(
        fl("long", timeout="10m"),
        fl("short", timeout="30s", retry={"max_attempts": 2, "backoff_ms": 5_000}),
        fl("after", "short", timeout="1m"),
    )
    play = Play(definition)
    play.start()
    assert next_wakeup(play.st) == T0 + timedelta(seconds=30)
    assert [n for n, _ in in_flight(play.st)] == ["long", "short"]

    play.clock.advance(1_000)
    play.fail("short")
    assert next_wakeup(play.st) == T0 + timedelta(seconds=6)  # the retry is due before "long" expires
    assert [n for n, _ in in_flight(play.st)] == ["long"]

    play.clock.set(T0 + timedelta(seconds=6))
    play.tick()
    assert next_wakeup(play.st) == T0 + timedelta(seconds=36)

    play.ok("short", 1)
    assert next_wakeup(play.st) == T0 + timedelta(seconds=66)  # "after" scheduled at 6 s with 1 min
    play.ok("after", 2)
    assert next_wakeup(play.st) == T0 + timedelta(minutes=10)
    play.ok("long", 3)
    assert play.st.finished
    assert next_wakeup(play.st) is None


# ------------------------------------------------------------------ the log: hash chain, determinism, JSON


def test_hash_chain_verifies_on_real_history() -> None:
    events = run_diamond().events
    assert ev.verify_chain(events) == []
    assert events[0].hash == events[0].expected_hash(ev.GENESIS_HASH)
    for prev, cur in itertools.pairwise(events):
        assert cur.hash == cur.expected_hash(prev.hash)
    assert len({e.hash for e in events}) == len(events)


def test_hash_chain_detects_altered_payload() -> None:
    events = run_diamond().events
    idx = next(i for i, e in enumerate(events) if isinstance(e, ev.FlowletCompleted) and e.payload.flowlet == "b")
    original = events[idx]
    forged = original.model_copy(update={"payload": original.payload.model_copy(update={"output": "forged"})})
    assert forged.hash == original.hash
    tampered = [*events[:idx], forged, *events[idx + 1 :]]
    assert ev.verify_chain(tampered) == [
        f"seq {original.seq} (FlowletCompleted): hash does not match its content (history altered)"
    ]
    # re-hashing the forged event itself only moves the break to the next link
    rehashed = forged.model_copy(update={"hash": forged.expected_hash(events[idx - 1].hash)})
    tampered = [*events[:idx], rehashed, *events[idx + 1 :]]
    assert ev.verify_chain(tampered) == [
        f"seq {original.seq + 1} ({events[idx + 1].type}): hash does not match its content (history altered)"
    ]


def test_hash_chain_detects_altered_envelope() -> None:
    events = run_diamond().events
    moved = events[3].model_copy(update={"at": events[3].at + timedelta(seconds=1)})
    assert ev.verify_chain([*events[:3], moved, *events[4:]]) != []
    other_company = events[0].model_copy(update={"company_id": "evil"})
    assert ev.verify_chain([other_company, *events[1:]]) != []


def test_hash_chain_detects_removed_middle_event() -> None:
    events = run_diamond().events
    cut = [*events[:4], *events[5:]]
    assert ev.verify_chain(cut) == ["seq 6 found where 5 was expected (history cut or reordered)"]
    # renumbering to hide the gap still breaks the hashes
    renumbered = [*events[:4], *(e.model_copy(update={"seq": e.seq - 1}) for e in events[5:])]
    problems = ev.verify_chain(renumbered)
    assert problems == [f"seq 5 ({events[5].type}): hash does not match its content (history altered)"]


def test_hash_chain_detects_reordering() -> None:
    events = run_diamond().events
    swapped = [*events[:3], events[4], events[3], *events[5:]]
    assert ev.verify_chain(swapped) == ["seq 5 found where 4 was expected (history cut or reordered)"]
    # swapping the seq numbers too still breaks the chain
    a, b = events[3], events[4]
    swapped = [*events[:3], b.model_copy(update={"seq": 4}), a.model_copy(update={"seq": 5}), *events[5:]]
    assert ev.verify_chain(swapped) != []


def test_events_are_deterministic() -> None:
    first = run_diamond(Clock()).events
    second = run_diamond(Clock()).events
    assert first == second
    assert [e.event_id for e in first] == [e.event_id for e in second]
    assert [e.hash for e in first] == [e.hash for e in second]
    assert [e.event_id for e in first] == [ev.event_id_for(PLAY, n) for n in range(1, len(first) + 1)]
    # a different clock gives different hashes but the same ids
    shifted = run_diamond(Clock(T0 + timedelta(seconds=1))).events
    assert [e.event_id for e in shifted] == [e.event_id for e in first]
    assert all(a.hash != b.hash for a, b in zip(first, shifted, strict=True))


@pytest.mark.parametrize("play_id", ["p", "b-1a2b3c4d-1999", "ünïcode/ß", "x" * 200])
@pytest.mark.parametrize("seq", [1, 2, 10, 123_456])
def test_event_ids_are_the_uuid5_of_play_and_seq(play_id: str, seq: int) -> None:
    assert ev.event_id_for(play_id, seq) == str(uuid.uuid5(ev._EVENT_NS, f"{play_id}/{seq}"))


GOLDEN = Path(__file__).resolve().parents[1] / "audit" / "golden"


def test_sealing_the_envelope_of_each_golden_event_gives_it_back() -> None:
    """``seal`` hashes a document it puts together itself: it must be ``document()``'s."""
    sealed = 0
    for history in sorted(GOLDEN.glob("*.jsonl")):
        previous = ev.GENESIS_HASH
        for line in history.read_text().splitlines():
            record = json.loads(line)
            if "event" not in record:
                continue
            event = ev.event_adapter.validate_python(record["event"])
            envelope = {
                k: getattr(event, k) for k in type(event).model_fields if k not in ("type", "hash_version", "hash")
            }
            assert type(event).seal(previous, **envelope) == event, (history.name, event.seq)
            previous = event.hash
            sealed += 1
    assert sealed >= 60


def test_an_event_whose_content_is_not_i_json_is_sealed_with_hash_version_1() -> None:
    play = Play(flow(fl("a")), {"big": 2**60})
    started = play.start()[0]
    assert started.hash_version == 1
    assert ev.verify_chain(play.events) == []


def test_replaying_recorded_messages_gives_identical_events() -> None:
    play = Play(flow(fl("a", timeout="1s", retry={"max_attempts": 3, "backoff_ms": 100}), fl("b", "a")), {"k": 1})
    play.start()
    play.clock.advance(1_000)
    play.tick()
    play.clock.advance(100)
    play.tick()
    play.fail("a", "flaky")
    play.clock.advance(200)
    play.tick()
    play.ok("a", {"v": 1})
    play.ok("b", 2)
    assert play.st.status is PlayStatus.SUCCEEDED
    assert replay_messages(play.messages) == play.events


def test_event_envelope() -> None:
    events = run_diamond().events
    for e in events:
        assert (e.play_id, e.company_id, e.flow_id, e.flow_version) == (PLAY, COMPANY, "f", 1)
        assert e.schema_version == ev.SCHEMA_VERSION
    assert events[0].at == T0
    assert [e.at for e in events] == sorted(e.at for e in events)
    assert events[0].payload.flow == diamond()
    assert events[0].payload.input == {"order": 42}


def test_events_json_round_trip() -> None:
    play = Play(flow(fl("a", timeout="1500ms", retry={"max_attempts": 2, "backoff_ms": 250}), fl("b", "a")), {"x": [1]})
    play.start()
    play.dispatch("a")
    play.fail("a", "once")
    play.clock.advance(250)
    play.tick()
    play.ok("a", {"nested": {"list": [1, 2.5, None, "é"]}})
    play.ok("b", None)
    events = play.events
    assert "FlowletRetryScheduled" in types(events)

    data = ev.events_adapter.dump_json(events)
    back = ev.events_adapter.validate_json(data)
    assert [type(e) for e in back] == [type(e) for e in events]
    assert back == events
    assert [e.hash for e in back] == [e.hash for e in events]
    assert all(
        b.expected_hash(prev) == b.hash
        for b, prev in zip(back, [ev.GENESIS_HASH, *[e.hash for e in back]], strict=False)
    )
    assert ev.verify_chain(back) == []
    assert fold(back) == fold(events) == play.st
    assert ev.events_adapter.dump_json(back) == data
    # one at a time too
    for e in events:
        assert ev.event_adapter.validate_json(ev.event_adapter.dump_json(e)) == e


# ------------------------------------------------------------------ fold / evolve


def test_fold_equals_incremental_state() -> None:
    play = run_diamond()
    assert fold(play.events) == play.st
    assert fold([]) is None
    mid = fold(play.events[:5])
    assert mid is not None
    assert fold(play.events[5:], mid) == play.st
    assert mid.seq == 5 and mid.last_hash == play.events[4].hash


def test_evolve_does_not_mutate() -> None:
    play = Play(diamond())
    play.start()
    before = play.st
    snapshot = before.model_dump()
    (completed, *_) = decide(before, play.result("a", ok=True, output=1), play.clock.now)
    after = evolve(before, completed)
    assert before.model_dump() == snapshot
    assert after.flowlets["a"].status is S.SUCCEEDED
    assert before.flowlets["a"].status is S.SCHEDULED


def test_evolve_rejects_impossible_histories() -> None:
    events = run_diamond().events
    with pytest.raises(EngineError, match="before PlayStarted"):
        evolve(None, events[1])
    state = fold(events[:3])
    with pytest.raises(EngineError, match="on a started play"):
        evolve(state, events[0])
    with pytest.raises(EngineError, match="event seq 5 after seq 3"):
        evolve(state, events[4])
    with pytest.raises(EngineError, match="event seq 3 after seq 3"):
        evolve(state, events[2])
