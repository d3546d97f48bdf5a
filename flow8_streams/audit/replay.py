"""Replay: the engine's decisions re-run over a recorded history, as Temporal's replayer does.

A history is a run of decisions: each began with a message (a start, a module's result, a
dispatch, the passing of time, a cancel) and wrote the events ``decide`` returned for it. The
replay reads, from the first event of each decision, the message that caused it (the module
outcomes come from the history: no module runs), hands it to today's ``engine.step`` with the
flow given, at the time the history recorded, and compares what it decides with what was
recorded, event by event: type, then payload fields. The first event where they part is the
``Divergence``; a history the current engine and flow would write again is clean.

The flow recorded in ``PlayStarted`` is not compared (the flow given is the point); its input is.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pydantic import ValidationError

from flow8_streams.domain import events as ev
from flow8_streams.domain.flow import FlowDefinition
from flow8_streams.domain.limits import DEFAULT_LIMITS, Limits
from flow8_streams.domain.messages import CancelPlay, FlowletDispatch, FlowletResult, Message, Start, Tick
from flow8_streams.domain.state import PlayState
from flow8_streams.engine.core import step
from flow8_streams.errors import EngineError

NOT_COMPARED = {"PlayStarted": frozenset({"flow"})}  # payload fields the flow given replaces by design


@dataclass(frozen=True, slots=True)
class Divergence:
    """Where a replay parts from its history: at ``seq``, the recorded event (``expected``,
    None past the history's end) against the decided one (``got``, None when the engine decides
    nothing there), each ``{"type", "payload"}``; ``fields``: the payload fields that differ."""

    seq: int
    expected: dict[str, Any] | None
    got: dict[str, Any] | None
    fields: tuple[str, ...]
    detail: str

    def as_json(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "expected": self.expected,
            "got": self.got,
            "fields": list(self.fields),
            "detail": self.detail,
        }


def _shown(event: ev.Event) -> dict[str, Any]:
    payload = event.payload.model_dump(mode="json")
    for name in NOT_COMPARED.get(event.type, ()):
        payload.pop(name, None)
    return {"type": event.type, "payload": payload}


def _message(history: Sequence[ev.Event], i: int, flow: FlowDefinition) -> Message | None:
    """The message that made the decision whose first recorded event is ``history[i]``; None when
    no message makes a decision begin with that event."""
    e = history[i]
    ids = {"play_id": e.play_id, "company_id": e.company_id}
    match e:
        case ev.PlayStarted(payload=p) if i == 0:
            return Start(**ids, flow=flow, input=p.input)
        case ev.FlowletCompleted(payload=p):
            return FlowletResult(
                **ids, flowlet=p.flowlet, attempt=p.attempt, ok=True, output=p.output,
                started_at=p.started_at, ended_at=p.ended_at,
            )  # fmt: skip
        case ev.FlowletFailed(payload=p) if p.started_at is not None and p.ended_at is not None:
            return FlowletResult(
                **ids, flowlet=p.flowlet, attempt=p.attempt, ok=False, error=p.error, retryable=p.retryable,
                started_at=p.started_at, ended_at=p.ended_at,
            )  # fmt: skip
        case ev.FlowletDispatched(payload=p):
            return FlowletDispatch(**ids, flowlet=p.flowlet, attempt=p.attempt, channel=p.channel)
        case ev.FlowletTimedOut() | ev.FlowletScheduled():
            return Tick(**ids)  # a deadline passed, or a retry came due
        case ev.FlowletCancelled() | ev.FlowletSkipped() | ev.PlayCancelled():
            for later in history[i:]:
                if isinstance(later, ev.PlayCancelled):
                    return CancelPlay(**ids, reason=later.payload.reason)
    return None


def _differing(expected: Mapping[str, Any], got: Mapping[str, Any]) -> tuple[str, ...]:
    if expected["type"] != got["type"]:
        return ("type",)
    a, b = expected["payload"], got["payload"]
    return tuple(sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k)))


def replay(history: Sequence[ev.Event], flow: FlowDefinition, limits: Limits = DEFAULT_LIMITS) -> Divergence | None:
    """The first divergence of ``history`` (one play's events in seq order) replayed with ``flow``."""
    state: PlayState | None = None
    i = 0
    while i < len(history):
        recorded = history[i]
        message = _message(history, i, flow)
        if message is None:
            return Divergence(
                recorded.seq, _shown(recorded), None, ("type",),
                f"seq {recorded.seq}: {recorded.type} was recorded where the engine decides nothing: "
                "no message makes a decision begin with it",
            )  # fmt: skip
        now: datetime = recorded.at
        try:
            decided, state = step(state, message, now, limits)
        except EngineError as exc:
            return Divergence(recorded.seq, _shown(recorded), None, ("type",), f"seq {recorded.seq}: {exc}")
        if not decided:
            return Divergence(
                recorded.seq, _shown(recorded), None, ("type",),
                f"seq {recorded.seq}: {recorded.type} was recorded, the engine decides nothing on {message.type}",
            )  # fmt: skip
        for k, event in enumerate(decided):
            got = _shown(event)
            if i + k >= len(history):
                return Divergence(
                    event.seq, None, got, ("type",),
                    f"seq {event.seq}: the history ends, the engine decides {event.type}",
                )  # fmt: skip
            expected = _shown(history[i + k])
            fields = _differing(expected, got)
            if fields:
                what = (
                    f"{expected['type']} was recorded, the engine decides {got['type']}"
                    if fields == ("type",)
                    else f"{got['type']} differs in {', '.join(fields)}"
                )
                return Divergence(history[i + k].seq, expected, got, fields, f"seq {history[i + k].seq}: {what}")
        i += len(decided)
    return None


def parse(documents: Sequence[Mapping[str, Any]]) -> list[ev.Event] | str:
    """A history's documents as events, or what keeps one from being read."""
    try:
        return [ev.event_adapter.validate_python(d) for d in documents]
    except ValidationError as exc:
        problem = exc.errors(include_url=False)[0]
        return f"an event cannot be read: {problem['msg']} at {problem['loc']}"


__all__ = ["Divergence", "parse", "replay"]
