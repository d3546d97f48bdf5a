"""Shared builders for the pure-core unit tests: flows, a hand-driven clock, and a play driver.

Imported as ``from _helpers import ...`` (``tests/unit`` has no ``__init__.py``, so pytest puts
this folder on ``sys.path``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from flow8_streams.domain import events as ev
from flow8_streams.domain.flow import FlowDefinition
from flow8_streams.domain.messages import CancelPlay, FlowletDispatch, FlowletResult, Message, Start, Tick
from flow8_streams.domain.state import PlayState
from flow8_streams.engine import decide, evolve, fold

T0 = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)
PLAY = "play-1"
COMPANY = "acme"


class Clock:
    """A clock that only moves when the test moves it."""

    def __init__(self, start: datetime = T0) -> None:
        self.now = start

    def advance(self, ms: int = 0, *, s: float = 0) -> datetime:
        self.now += timedelta(milliseconds=ms, seconds=s)
        return self.now

    def set(self, when: datetime) -> datetime:
        assert when >= self.now, "the fake clock never goes back"
        self.now = when
        return self.now


def fl(name: str, *deps: str, **fields: Any) -> dict[str, Any]:
    """A flowlet definition as a JSON-like mapping (module defaults to "echo")."""
    return {"name": name, "module_ref": fields.pop("module_ref", "echo"), "depends_on": list(deps), **fields}


def flow(*flowlets: dict[str, Any], name: str = "f", version: int = 1) -> FlowDefinition:
    return FlowDefinition.model_validate({"name": name, "version": version, "flowlets": list(flowlets)})


def diamond(**fields: Any) -> FlowDefinition:
    """a -> (b, c) -> d; ``fields`` apply to every flowlet."""
    return flow(fl("a", **fields), fl("b", "a", **fields), fl("c", "a", **fields), fl("d", "b", "c", **fields))


def types(events: Iterable[ev.Event]) -> list[str]:
    return [e.type for e in events]


def summary(events: Iterable[ev.Event]) -> list[tuple[str, str | None]]:
    """(type, flowlet) pairs: the shape of a decision, compact enough to compare whole."""
    return [(e.type, getattr(e.payload, "flowlet", None)) for e in events]


class Play:
    """Drives one play through ``decide``, folding the events as a host would."""

    def __init__(self, definition: FlowDefinition, play_input: Any = None, *, clock: Clock | None = None) -> None:
        self.flow = definition
        self.input = play_input
        self.clock = clock or Clock()
        self.state: PlayState | None = None
        self.events: list[ev.Event] = []
        self.messages: list[tuple[Message, datetime]] = []

    # -- sending messages

    def send(self, message: Message) -> list[ev.Event]:
        now = self.clock.now
        self.messages.append((message, now))
        new = decide(self.state, message, now)
        for event in new:
            self.state = evolve(self.state, event)
        self.events.extend(new)
        return new

    def start(self) -> list[ev.Event]:
        return self.send(Start(play_id=PLAY, company_id=COMPANY, flow=self.flow, input=self.input))

    def ok(self, flowlet: str, output: Any = None, *, attempt: int | None = None) -> list[ev.Event]:
        return self.send(self.result(flowlet, ok=True, output=output, attempt=attempt))

    def fail(
        self, flowlet: str, error: str = "boom", *, attempt: int | None = None, retryable: bool = True
    ) -> list[ev.Event]:
        return self.send(self.result(flowlet, ok=False, error=error, attempt=attempt, retryable=retryable))

    def result(
        self,
        flowlet: str,
        *,
        ok: bool,
        output: Any = None,
        error: str | None = None,
        attempt: int | None = None,
        retryable: bool = True,
    ) -> FlowletResult:
        if attempt is None:
            assert self.state is not None
            attempt = self.state.flowlets[flowlet].attempts
        return FlowletResult(
            play_id=PLAY,
            company_id=COMPANY,
            flowlet=flowlet,
            attempt=attempt,
            ok=ok,
            output=output,
            error=error,
            retryable=retryable,
            started_at=self.clock.now,
            ended_at=self.clock.now,
        )

    def tick(self) -> list[ev.Event]:
        return self.send(Tick(play_id=PLAY, company_id=COMPANY))

    def cancel(self, reason: str = "cancelled by request") -> list[ev.Event]:
        return self.send(CancelPlay(company_id=COMPANY, play_id=PLAY, reason=reason))

    def dispatch(self, flowlet: str, channel: str = "ch-1", *, attempt: int | None = None) -> list[ev.Event]:
        if attempt is None:
            assert self.state is not None
            attempt = self.state.flowlets[flowlet].attempts
        return self.send(
            FlowletDispatch(play_id=PLAY, company_id=COMPANY, flowlet=flowlet, attempt=attempt, channel=channel)
        )

    # -- reading the play

    @property
    def st(self) -> PlayState:
        assert self.state is not None
        return self.state

    def replayed(self) -> PlayState | None:
        return fold(self.events)


def replay_messages(messages: Sequence[tuple[Message, datetime]]) -> list[ev.Event]:
    """Run recorded (message, now) pairs through a fresh engine: the events a second host would emit."""
    state: PlayState | None = None
    out: list[ev.Event] = []
    for message, now in messages:
        new = decide(state, message, now)
        state = fold(new, state)
        out.extend(new)
    return out
