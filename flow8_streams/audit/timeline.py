"""A play's timeline: per flowlet, its attempts as bars in time, the waits between them, and
the play's span. Pure: built from a play's events, no I/O, no HTML (``timeline_svg`` draws it,
``report`` puts it on a page; the web UI reuses both).

What each event contributes, per flowlet and attempt:

- ``FlowletScheduled``: the attempt exists from its ``at`` (``defer_after_ms`` when deferred);
- ``FlowletDispatched``: it ran on the channel ``host:port``, handed over at ``at``;
- ``FlowletCompleted`` / ``FlowletFailed``: its outcome; the bar runs from the payload's
  ``started_at`` to ``ended_at`` (the module's own clock) when given, else from the dispatch (or
  the schedule) to the event's ``at``;
- ``FlowletTimedOut`` / ``FlowletCancelled``: its outcome, ending at the event's ``at``;
- ``FlowletRetryScheduled``: a wait from its ``at`` to the next attempt's schedule (or ``due_at``);
- ``FlowletSkipped``: the flowlet never ran.

An attempt with no outcome when the log ends is ``running``. A log that contradicts itself (an
outcome for an attempt never scheduled, a flowlet the flow does not name) still gives a timeline:
what the events say is drawn, never refused, since an audited log is not trusted to be whole.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum

from flow8_streams.domain import events as ev
from flow8_streams.domain.state import FlowletStatus


class Outcome(StrEnum):
    """How an attempt ended."""

    SUCCEEDED = "succeeded"
    FAILED = "failed"
    TIMED_OUT = "timed_out"
    CANCELLED = "cancelled"
    RUNNING = "running"  # no outcome when the log ends


@dataclass(frozen=True, slots=True)
class Attempt:
    """One run of a flowlet: a bar from ``start`` to ``end`` (None: still running at the log's end)."""

    number: int
    outcome: Outcome
    start: datetime
    end: datetime | None
    scheduled_at: datetime | None = None  # when the engine scheduled it (before ``start`` when queued or deferred)
    dispatched_at: datetime | None = None
    channel: str | None = None  # host:port of the channel it ran on
    defer_after_ms: int | None = None
    timeout_ms: int | None = None
    error: str | None = None
    retryable: bool | None = None

    def duration_ms(self, until: datetime) -> float:
        """The bar's length; a running attempt's runs to ``until``."""
        return _ms(self.start, self.end or until)

    @property
    def queued_ms(self) -> float:
        """From its schedule to its start: the defer, a wait for a channel or a thread."""
        return max(0.0, _ms(self.scheduled_at, self.start)) if self.scheduled_at is not None else 0.0


@dataclass(frozen=True, slots=True)
class Wait:
    """The backoff between attempt ``after`` and the next one."""

    after: int
    start: datetime
    end: datetime
    backoff_ms: int


@dataclass(frozen=True, slots=True)
class Lane:
    """A flowlet's row: its attempts in order, the waits between them, and how it ended."""

    name: str
    module_ref: str | None
    depends_on: tuple[str, ...]
    status: FlowletStatus  # as the engine's fold has it at the log's end
    attempts: tuple[Attempt, ...] = ()
    waits: tuple[Wait, ...] = ()
    skipped_at: datetime | None = None
    reason: str | None = None  # why it was skipped

    @property
    def retries(self) -> int:
        return max(0, len(self.attempts) - 1)

    @property
    def on_channel(self) -> bool:
        return any(a.channel is not None for a in self.attempts)


@dataclass(frozen=True, slots=True)
class Timeline:
    """A play in time: its span (``start`` to ``end``, or to ``last_at`` while running) and lanes."""

    play_id: str
    company_id: str
    flow_id: str
    flow_version: int
    status: str  # running, succeeded, failed or cancelled
    start: datetime
    end: datetime | None
    last_at: datetime  # the last event's time: where a running play's bars stop
    lanes: tuple[Lane, ...]
    events: int
    error: str | None = None

    @property
    def until(self) -> datetime:
        """The right edge of the chart."""
        return max(self.end or self.last_at, self.last_at)

    @property
    def duration_ms(self) -> float:
        return _ms(self.start, self.until)

    def offset_ms(self, when: datetime) -> float:
        return _ms(self.start, when)

    @property
    def attempts(self) -> int:
        return sum(len(lane.attempts) for lane in self.lanes)


def _ms(a: datetime | None, b: datetime | None) -> float:
    if a is None or b is None:
        return 0.0
    return (b - a).total_seconds() * 1000.0


@dataclass(slots=True)
class _AttemptDraft:
    number: int
    start: datetime
    outcome: Outcome = Outcome.RUNNING
    end: datetime | None = None
    scheduled_at: datetime | None = None
    dispatched_at: datetime | None = None
    channel: str | None = None
    defer_after_ms: int | None = None
    timeout_ms: int | None = None
    error: str | None = None
    retryable: bool | None = None

    def finish(self, outcome: Outcome, end: datetime, error: str | None = None) -> None:
        self.outcome, self.end, self.error = outcome, max(end, self.start), error


@dataclass(slots=True)
class _LaneDraft:
    name: str
    module_ref: str | None = None
    depends_on: tuple[str, ...] = ()
    attempts: dict[int, _AttemptDraft] = field(default_factory=dict)
    waits: list[Wait] = field(default_factory=list)
    status: FlowletStatus = FlowletStatus.PENDING
    skipped_at: datetime | None = None
    reason: str | None = None

    def attempt(self, number: int, at: datetime) -> _AttemptDraft:
        """The draft of attempt ``number``, made at ``at`` when the log never scheduled it."""
        return self.attempts.setdefault(number, _AttemptDraft(number, at))

    def lane(self) -> Lane:
        attempts = tuple(
            Attempt(**{k: getattr(a, k) for k in _ATTEMPT_FIELDS}) for _, a in sorted(self.attempts.items())
        )
        waits = []
        for w in self.waits:  # a wait ends when the next attempt is scheduled, else when due (or cancelled)
            following = self.attempts.get(w.after + 1)
            end = following.scheduled_at if following is not None and following.scheduled_at is not None else w.end
            waits.append(Wait(w.after, w.start, max(end, w.start), w.backoff_ms))
        return Lane(
            self.name,
            self.module_ref,
            self.depends_on,
            self.status,
            attempts,
            tuple(waits),
            self.skipped_at,
            self.reason,
        )


_ATTEMPT_FIELDS = tuple(Attempt.__dataclass_fields__)


_PLAY_STATUS = {"PlayCompleted": "succeeded", "PlayFailed": "failed", "PlayCancelled": "cancelled"}


def build(events: Sequence[ev.Event]) -> Timeline:
    """The timeline of one play from its events in ``seq`` order. ``ValueError`` if there are none."""
    if not events:
        raise ValueError("a timeline needs at least one event")
    first = events[0]
    lanes: dict[str, _LaneDraft] = {}
    status, end, error = "running", None, None
    if isinstance(first, ev.PlayStarted):
        for f in first.payload.flow.flowlets:
            lanes[f.name] = _LaneDraft(f.name, f.module_ref, tuple(f.depends_on))
    for event in events:
        at = event.at
        if event.type in _PLAY_STATUS:
            status, end = _PLAY_STATUS[event.type], at
            if isinstance(event, ev.PlayFailed):
                error = event.payload.error
            elif isinstance(event, ev.PlayCancelled):
                error = event.payload.reason
            continue
        name = getattr(event.payload, "flowlet", None)
        if not isinstance(name, str):
            continue
        lane = lanes.setdefault(name, _LaneDraft(name))
        match event:
            case ev.FlowletScheduled(payload=p):
                a = lane.attempt(p.attempt, at)
                a.start = a.scheduled_at = at
                a.timeout_ms, a.defer_after_ms = p.timeout_ms, p.defer_after_ms
                lane.module_ref = lane.module_ref or p.module_ref
                lane.status = FlowletStatus.SCHEDULED
            case ev.FlowletDispatched(payload=p):
                a = lane.attempt(p.attempt, at)
                a.start = a.dispatched_at = at
                a.channel = p.channel
                lane.status = FlowletStatus.RUNNING
            case ev.FlowletCompleted(payload=p):
                a = lane.attempt(p.attempt, p.started_at)
                a.start = p.started_at
                a.finish(Outcome.SUCCEEDED, p.ended_at)
                lane.status = FlowletStatus.SUCCEEDED
            case ev.FlowletFailed(payload=p):
                a = lane.attempt(p.attempt, p.started_at or at)
                a.start = p.started_at or a.start
                a.finish(Outcome.FAILED, p.ended_at or at, p.error)
                a.retryable = p.retryable
                lane.status = FlowletStatus.FAILED
            case ev.FlowletTimedOut(payload=p):
                a = lane.attempt(p.attempt, at)
                a.finish(Outcome.TIMED_OUT, at, f"timed out after {p.timeout_ms} ms")
                a.timeout_ms = p.timeout_ms
                lane.status = FlowletStatus.TIMED_OUT
            case ev.FlowletCancelled(payload=p):
                running = lane.attempts.get(p.attempt)
                if running is not None and running.outcome is Outcome.RUNNING:  # else cancelled while waiting
                    running.finish(Outcome.CANCELLED, at, p.reason)
                lane.waits = [Wait(w.after, w.start, min(w.end, at), w.backoff_ms) for w in lane.waits]
                lane.status, lane.reason = FlowletStatus.CANCELLED, p.reason
            case ev.FlowletRetryScheduled(payload=p):
                lane.waits.append(Wait(p.attempt - 1, at, max(p.due_at, at), p.backoff_ms))
                lane.status = FlowletStatus.RETRY_WAIT
            case ev.FlowletSkipped(payload=p):
                lane.status, lane.skipped_at, lane.reason = FlowletStatus.SKIPPED, at, p.reason
    start = first.at
    last_at = max(e.at for e in events)
    return Timeline(
        play_id=first.play_id,
        company_id=first.company_id,
        flow_id=first.flow_id,
        flow_version=first.flow_version,
        status=status,
        start=start,
        end=end,
        last_at=last_at,
        lanes=tuple(d.lane() for d in lanes.values()),
        events=len(events),
        error=error,
    )


__all__ = ["Attempt", "Lane", "Outcome", "Timeline", "Wait", "build"]
