"""Property tests of the engine: random DAGs run by a simulated executor that finishes tasks in a
random order, fails some, lets time pass (retries, timeouts), redelivers old results and
dispatches to channels. Whatever happens, the log must stay a valid, replayable history."""

from __future__ import annotations

from collections import defaultdict
from datetime import timedelta
from typing import Any

from _helpers import COMPANY, PLAY, Clock, fl, flow, replay_messages
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from flow8_streams.domain import events as ev
from flow8_streams.domain.flow import FlowDefinition
from flow8_streams.domain.messages import CancelPlay, FlowletDispatch, FlowletResult, Message, Start, Tick
from flow8_streams.domain.state import IN_FLIGHT, TERMINAL, FlowletStatus, PlayState, PlayStatus
from flow8_streams.domain.templating import render
from flow8_streams.engine import decide, fold, in_flight, next_wakeup

MAX_RANDOM_STEPS = 120
S = FlowletStatus


@st.composite
def dags(draw: st.DrawFn, *, allow_bad_reference: bool = True) -> FlowDefinition:
    """1..25 flowlets; edges only from lower to higher index, so the graph is acyclic. Some
    flowlets take a templated input; at most one refers to a path that will not resolve."""
    n = draw(st.integers(1, 25), label="flowlets")
    # about one DAG in four has a flowlet whose reference will not resolve
    has_bad = allow_bad_reference and draw(st.sampled_from([False, False, False, True]), label="bad reference")
    bad = draw(st.integers(0, n - 1), label="bad at") if has_bad else None
    flowlets = []
    for i in range(n):
        deps = sorted(draw(st.sets(st.integers(0, i - 1), max_size=min(i, 4)))) if i else []
        extra: dict[str, Any] = {}
        if i == bad:
            ref = f"${{flowlets.f{deps[0]:02d}.output.nope}}" if deps else "${input.nope}"
            extra["input"] = {"broken": ref}
        else:
            kind = draw(st.sampled_from(["default", "input", "deps"]))
            if kind == "input":
                extra["input"] = {"seed": "${input.seed}", "text": "all=${input}"}
            elif kind == "deps" and deps:
                extra["input"] = {
                    f"v{d}": [f"${{flowlets.f{d:02d}.output.from}}", "#${flowlets.f" + f"{d:02d}" + ".output.attempt}"]
                    for d in deps
                }
        retry = {
            "max_attempts": draw(st.integers(1, 3)),
            "backoff_ms": draw(st.integers(0, 50)),
            "multiplier": draw(st.sampled_from([1.0, 1.5, 2.0])),
        }
        timeout = draw(st.sampled_from(["100ms", "1s", "1m"]))
        flowlets.append(fl(f"f{i:02d}", *(f"f{d:02d}" for d in deps), retry=retry, timeout=timeout, **extra))
    return flow(*flowlets, name="random")


class Simulation:
    """A host + executor: sends messages to ``decide`` and folds what comes back."""

    def __init__(self, definition: FlowDefinition) -> None:
        self.flow = definition
        self.clock = Clock()
        self.state: PlayState | None = None
        self.events: list[ev.Event] = []
        self.messages: list[tuple[Message, Any]] = []
        self.outstanding: list[tuple[str, int]] = []  # scheduled attempts whose result was not sent yet
        self.delivered: list[FlowletResult] = []
        self.stale = 0  # results sent for an attempt that was no longer in flight

    def send(self, message: Message) -> list[ev.Event]:
        now = self.clock.now
        wake = next_wakeup(self.state) if self.state is not None else None
        new = decide(self.state, message, now)
        if isinstance(message, Tick):
            if wake is None or now < wake:
                assert new == [], f"a Tick before next_wakeup ({wake}) changed something at {now}"
            else:
                assert new != [], f"a Tick at or after next_wakeup ({wake}) changed nothing at {now}"
        self.messages.append((message, now))
        self.state = fold(new, self.state)
        self.events.extend(new)
        for e in new:
            assert e.at == now
            if isinstance(e, ev.FlowletScheduled):
                self.outstanding.append((e.payload.flowlet, e.payload.attempt))
        return new

    @property
    def st(self) -> PlayState:
        assert self.state is not None
        return self.state

    def live(self, task: tuple[str, int]) -> bool:
        f = self.st.flowlets[task[0]]
        return f.status in IN_FLIGHT and f.attempts == task[1]

    def deliver(self, index: int, *, ok: bool, retryable: bool = True) -> list[ev.Event]:
        name, attempt = self.outstanding.pop(index)
        now = self.clock.now
        result = FlowletResult(
            play_id=PLAY,
            company_id=COMPANY,
            flowlet=name,
            attempt=attempt,
            ok=ok,
            output=None if not ok else {"from": name, "attempt": attempt},
            error=None if ok else f"{name} attempt {attempt} failed",
            retryable=retryable,
            started_at=now,
            ended_at=now,
        )
        was_live = self.live((name, attempt))
        new = self.send(result)
        assert bool(new) == was_live, "a result is applied iff its attempt is the one in flight"
        self.stale += not was_live
        self.delivered.append(result)
        return new

    def tick_at(self, when: Any) -> list[ev.Event]:
        self.clock.set(max(when, self.clock.now))
        return self.send(Tick(play_id=PLAY, company_id=COMPANY))

    def check_progress(self) -> None:
        """No deadlock: a running play always has a task out or a wakeup to wait for. The
        per-flowlet bookkeeping a host relies on matches each status."""
        for name, f in self.st.flowlets.items():
            assert (f.deadline is not None) == (f.status in IN_FLIGHT), (name, f)
            assert (f.task_input is not None) == (f.status in IN_FLIGHT), (name, f)
            assert (f.channel is not None) == (f.status is S.RUNNING), (name, f)
            assert f.status is not S.RETRY_WAIT or f.retry_at is not None, (name, f)
            assert (f.ended_at is not None) == (f.status in TERMINAL), (name, f)
        if self.st.finished:
            return
        if not any(self.live(t) for t in self.outstanding):
            assert next_wakeup(self.st) is not None, "running play with nothing in flight and nothing due"
        assert {n for n, _ in in_flight(self.st)} <= {t[0] for t in self.outstanding if self.live(t)}


def drive(sim: Simulation, data: st.DataObject) -> None:
    sim.send(Start(play_id=PLAY, company_id=COMPANY, flow=sim.flow, input={"seed": 1}))
    fail_pct = data.draw(st.sampled_from([0, 5, 15, 40]), label="fail %")
    allow_cancel = data.draw(st.booleans(), label="allow cancel")
    # how often results come in compared with everything else: calm runs mostly finish tasks
    finish_weight = data.draw(st.sampled_from([1, 4, 12]), label="finish weight")

    # random phase: hypothesis picks what happens next
    for _ in range(MAX_RANDOM_STEPS):
        if sim.st.finished:
            break
        options = ["finish"] * finish_weight + ["tick", "wake", "dup", "dispatch"]
        if not sim.outstanding:
            options = [o for o in options if o not in ("finish", "dispatch")]
        if not sim.delivered:
            options = [o for o in options if o != "dup"]
        action = data.draw(st.sampled_from(options))
        if action == "finish":
            index = data.draw(st.integers(0, len(sim.outstanding) - 1))
            fails = data.draw(st.integers(0, 99)) < fail_pct
            retryable = data.draw(st.integers(0, 9)) > 0 if fails else True
            sim.deliver(index, ok=not fails, retryable=retryable)
        elif action == "tick":
            ms = data.draw(st.sampled_from([0, 1, 20, 60, 150, 1200]))
            sim.tick_at(sim.clock.now + timedelta(milliseconds=ms))
        elif action == "wake":
            wake = next_wakeup(sim.st)
            if wake is not None:
                sim.tick_at(wake)
        elif action == "dup":
            old = data.draw(st.sampled_from(sim.delivered))
            assert sim.send(old) == [], "a redelivered result changed the play"
        elif action == "dispatch":
            name, attempt = data.draw(st.sampled_from(sim.outstanding))
            was_scheduled = sim.live((name, attempt)) and sim.st.flowlets[name].status is S.SCHEDULED
            new = sim.send(
                FlowletDispatch(play_id=PLAY, company_id=COMPANY, flowlet=name, attempt=attempt, channel=f"p{attempt}")
            )
            assert [e.type for e in new] == (["FlowletDispatched"] if was_scheduled else [])
        if allow_cancel and not sim.st.finished and data.draw(st.integers(0, 39)) == 0:
            sim.send(CancelPlay(company_id=COMPANY, play_id=PLAY, reason="hypothesis"))
        sim.check_progress()

    # drain: every live task succeeds, otherwise wait for the next wakeup; bounded
    for _ in range(10 * len(sim.flow.flowlets) * 3 + 10):
        if sim.st.finished:
            break
        live = [i for i, t in enumerate(sim.outstanding) if sim.live(t)]
        if live:
            sim.deliver(live[0], ok=True)
        else:
            wake = next_wakeup(sim.st)
            assert wake is not None, "deadlock: running, nothing in flight, nothing due"
            sim.tick_at(wake)
        sim.check_progress()
    assert sim.st.finished, "the play did not terminate"

    # a finished play ignores everything
    for name, attempt in sim.outstanding:
        late = FlowletResult(
            play_id=PLAY, company_id=COMPANY, flowlet=name, attempt=attempt, ok=True,
            started_at=sim.clock.now, ended_at=sim.clock.now,
        )  # fmt: skip
        assert decide(sim.st, late, sim.clock.now) == []
    far = sim.clock.now + timedelta(hours=2)
    assert decide(sim.st, Tick(play_id=PLAY, company_id=COMPANY), far) == []
    assert decide(sim.st, CancelPlay(company_id=COMPANY, play_id=PLAY), far) == []
    assert decide(sim.st, Start(play_id=PLAY, company_id=COMPANY, flow=sim.flow), far) == []


def check_history(sim: Simulation) -> None:
    events, state, definition = sim.events, sim.st, sim.flow
    play_input = state.input
    by_name = definition.by_name

    # seq 1..n, chained, replayable
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    assert ev.verify_chain(events) == []
    assert fold(events) == state
    assert replay_messages(sim.messages) == events
    back = ev.events_adapter.validate_json(ev.events_adapter.dump_json(events))
    assert [e.hash for e in back] == [e.hash for e in events]
    assert fold(back) == state

    # exactly one terminal event, and it is last
    terminal = [i for i, e in enumerate(events) if e.type in ev.TERMINAL_EVENT_TYPES]
    assert terminal == [len(events) - 1]
    assert events[0].type == "PlayStarted"
    assert all(e.type != "PlayStarted" for e in events[1:])

    completed_at: dict[str, int] = {}
    attempts: dict[str, list[int]] = defaultdict(list)
    current: dict[str, int] = {}
    retry_due: dict[tuple[str, int], Any] = {}
    last_output: dict[str, Any] = {}
    broken_at_schedule: set[str] = set()
    for i, e in enumerate(events):
        p: Any = e.payload
        if isinstance(e, ev.FlowletScheduled):
            spec = by_name[p.flowlet]
            for dep in spec.depends_on:
                assert dep in completed_at and completed_at[dep] < i, f"{p.flowlet} scheduled before {dep} completed"
            assert p.flowlet not in completed_at
            if spec.input is None:
                expected = {"input": play_input, "deps": {d: last_output[d] for d in spec.depends_on}}
            else:
                expected = render(spec.input, play_input, last_output)
            assert p.input == expected
            assert p.module_ref == spec.module_ref
            attempts[p.flowlet].append(p.attempt)
            current[p.flowlet] = p.attempt
            assert p.deadline == e.at + timedelta(milliseconds=spec.timeout)
            assert p.timeout_ms == spec.timeout
            if p.attempt > 1:
                due = retry_due.pop((p.flowlet, p.attempt))
                assert e.at >= due, "a retry ran before it was due"
        elif isinstance(e, ev.FlowletCompleted):
            assert p.attempt == current[p.flowlet], "a stale attempt completed"
            assert p.flowlet not in completed_at
            completed_at[p.flowlet] = i
            last_output[p.flowlet] = p.output
        elif isinstance(e, ev.FlowletFailed | ev.FlowletTimedOut):
            if p.flowlet in current:
                assert p.attempt == current[p.flowlet], "a stale attempt failed"
            else:  # failed while being scheduled: its input does not resolve
                broken_at_schedule.add(p.flowlet)
                assert isinstance(e, ev.FlowletFailed)
                assert (p.attempt, p.retryable) == (1, False)
                assert "does not resolve" in p.error and "nope}" in p.error
                for dep in by_name[p.flowlet].depends_on:
                    assert dep in completed_at
            retryable = isinstance(e, ev.FlowletTimedOut) or p.retryable
            will_retry = retryable and p.attempt < by_name[p.flowlet].retry.max_attempts
            assert (events[i + 1].type == "FlowletRetryScheduled") == will_retry, (e, events[i + 1])
            if not will_retry:
                assert events[-1].type == "PlayFailed" and events[-1].payload.flowlet == p.flowlet
        elif isinstance(e, ev.FlowletRetryScheduled):
            prev = events[i - 1].payload
            assert events[i - 1].type in ("FlowletFailed", "FlowletTimedOut")
            assert (prev.flowlet, prev.attempt + 1) == (p.flowlet, p.attempt)
            policy = by_name[p.flowlet].retry
            assert p.attempt <= policy.max_attempts
            assert p.backoff_ms == policy.backoff_for(p.attempt - 1)
            assert p.backoff_ms <= policy.backoff_ms * policy.multiplier ** (p.attempt - 2) + 1
            assert p.due_at == e.at + timedelta(milliseconds=p.backoff_ms)
            retry_due[(p.flowlet, p.attempt)] = p.due_at
        elif isinstance(e, ev.FlowletDispatched):
            assert p.attempt == current[p.flowlet]
        elif isinstance(e, ev.FlowletSkipped | ev.FlowletCancelled):
            assert events[-1].type in ("PlayFailed", "PlayCancelled")
            if isinstance(e, ev.FlowletCancelled):
                assert p.attempt == current.get(p.flowlet, 0) >= 1

    # at most one FlowletScheduled per (flowlet, attempt); attempts 1, 2, 3 without gaps, within the policy
    for name, seen in attempts.items():
        assert seen == list(range(1, len(seen) + 1)), f"{name}: attempts {seen}"
        assert len(seen) <= by_name[name].retry.max_attempts
        assert state.flowlets[name].attempts == len(seen)
    for name in by_name:
        if name not in attempts:  # never scheduled: untouched, or failed while being scheduled (attempt 1)
            unresolved = name in broken_at_schedule
            assert state.flowlets[name].attempts == (1 if unresolved else 0)

    # the outcome
    assert state.status is not PlayStatus.RUNNING
    assert all(f.status in TERMINAL for f in state.flowlets.values())
    assert next_wakeup(state) is None
    assert in_flight(state) == []
    all_ok = all(f.status is S.SUCCEEDED for f in state.flowlets.values())
    assert (events[-1].type == "PlayCompleted") == all_ok == (state.status is PlayStatus.SUCCEEDED)
    if all_ok:
        assert state.output == {name: last_output[name] for name in definition.sinks}
        assert events[-1].payload.output == state.output
    else:
        left = {n: f.status for n, f in state.flowlets.items()}
        assert not {S.PENDING, S.SCHEDULED, S.RUNNING, S.RETRY_WAIT} & set(left.values()), left
        broken = [n for n, s in left.items() if s in (S.FAILED, S.TIMED_OUT)]
        if state.status is PlayStatus.FAILED:
            assert events[-1].type == "PlayFailed"
            assert broken == [events[-1].payload.flowlet], "exactly the flowlet that failed the play failed"
        else:
            assert state.status is PlayStatus.CANCELLED
            assert events[-1].type == "PlayCancelled"
            assert broken == []
        # a skipped flowlet never ran
        for name, f in state.flowlets.items():
            if f.status is S.SKIPPED:
                assert attempts.get(name) is None


def label_run(sim: Simulation) -> None:
    """What a run went through, for ``pytest --hypothesis-show-statistics`` (to see the mix is sane)."""
    event(f"outcome: {sim.st.status.value}")
    seen = {e.type for e in sim.events}
    for kind in ("FlowletRetryScheduled", "FlowletTimedOut", "FlowletCancelled", "FlowletSkipped", "FlowletDispatched"):
        if kind in seen:
            event(f"saw {kind}")
    if sim.st.status is PlayStatus.FAILED:
        culprit = sim.events[-1].payload.flowlet
        cause = next(
            e
            for e in reversed(sim.events)
            if isinstance(e, ev.FlowletFailed | ev.FlowletTimedOut) and e.payload.flowlet == culprit
        )
        if isinstance(cause, ev.FlowletTimedOut):
            event("failed by: timeout")
        elif cause.payload.started_at is None:
            event("failed by: unresolvable reference")
        else:
            event("failed by: a failed result")
    if sim.st.status is PlayStatus.SUCCEEDED and any(f.attempts > 1 for f in sim.st.flowlets.values()):
        event("succeeded after a retry")
    if sim.stale:
        event("a stale result was delivered")


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(definition=dags(), data=st.data())
def test_random_plays_keep_every_invariant(definition: FlowDefinition, data: st.DataObject) -> None:
    definition.check()
    sim = Simulation(definition)
    drive(sim, data)
    check_history(sim)
    label_run(sim)


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(definition=dags(allow_bad_reference=False), data=st.data())
def test_a_play_without_failures_completes_in_any_completion_order(
    definition: FlowDefinition, data: st.DataObject
) -> None:
    sim = Simulation(definition)
    sim.send(Start(play_id=PLAY, company_id=COMPANY, flow=definition, input={"seed": 1}))
    while not sim.st.finished:
        assert sim.outstanding, "running with nothing to run"
        index = data.draw(st.integers(0, len(sim.outstanding) - 1))
        sim.deliver(index, ok=True)
    assert sim.events[-1].type == "PlayCompleted"
    assert all(f.attempts == 1 for f in sim.st.flowlets.values())
    assert len(sim.events) == 2 * len(definition.flowlets) + 2
    check_history(sim)
