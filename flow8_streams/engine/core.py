"""The engine: two pure functions.

``decide(state, message, now)`` returns the events a message causes;
``evolve(state, event)`` returns the state after one event. Neither reads a clock,
draws a random number or does I/O: the host passes ``now``, and event ids are
derived from ``(play_id, seq)``. Replay, audit and both runtimes call exactly this.

Failure policy (fail fast): when a flowlet fails for good, the play fails at once;
flowlets still in flight are cancelled (their late results are ignored) and
flowlets not yet started are skipped. A failed play's outcome is settled, so
finishing siblings would only hold a worker and delay the result.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta
from typing import Any, cast

import orjson

from flow8_streams.domain import events as ev
from flow8_streams.domain import templating
from flow8_streams.domain.limits import DEFAULT_LIMITS, Limits
from flow8_streams.domain.messages import (
    CancelPlay,
    FlowletDispatch,
    FlowletResult,
    Message,
    Start,
    Tick,
)
from flow8_streams.domain.state import (
    IN_FLIGHT,
    TERMINAL,
    FlowletState,
    FlowletStatus,
    PlayState,
    PlayStatus,
)
from flow8_streams.errors import CompanyMismatch, EngineError

OUTPUT_TOO_LARGE = "output_too_large"


class _Emitter:
    """Builds the events of one decision, numbering and chaining them, and folding
    them as it goes so later events of the same decision see earlier ones."""

    def __init__(self, state: PlayState | None, now: datetime, limits: Limits) -> None:
        self.state = state
        self.now = now
        self.limits = limits
        self.events: list[ev.Event] = []

    def emit(self, cls: type[ev._Event], payload: Any, *, start: Start | None = None) -> None:
        if self.state is not None:
            play_id, company_id = self.state.play_id, self.state.company_id
            flow_id, flow_version = self.state.flow.name, self.state.flow.version
            seq, previous = self.state.seq + 1, self.state.last_hash
        else:
            assert start is not None
            play_id, company_id = start.play_id, start.company_id
            flow_id, flow_version = start.flow.name, start.flow.version
            seq, previous = 1, ev.GENESIS_HASH
        event = cls.seal(
            previous,
            event_id=ev.event_id_for(play_id, seq),
            play_id=play_id,
            company_id=company_id,
            flow_id=flow_id,
            flow_version=flow_version,
            seq=seq,
            at=self.now,
            schema_version=ev.SCHEMA_VERSION,
            payload=payload,
        )
        self.events.append(cast(ev.Event, event))
        self.state = evolve(self.state, cast(ev.Event, event))


def decide(state: PlayState | None, message: Message, now: datetime, limits: Limits = DEFAULT_LIMITS) -> list[ev.Event]:
    """The events ``message`` causes in ``state`` at time ``now`` (may be none)."""
    return step(state, message, now, limits)[0]


def step(
    state: PlayState | None, message: Message, now: datetime, limits: Limits = DEFAULT_LIMITS
) -> tuple[list[ev.Event], PlayState | None]:
    """``decide`` and the state after its events, folded once: what hosts call.

    Equal by construction to ``(events, fold(events, state))`` with ``events = decide(...)``.
    A message is applied only to a play of its own company: any other raises
    ``CompanyMismatch`` (the host refuses it), whatever the play's status. ``limits``
    bound what a decision may write: a flowlet's output and rendered input.
    """
    if state is not None and message.company_id != state.company_id:
        raise CompanyMismatch.of(message.type, message.play_id, message.company_id)
    out = _Emitter(state, now, limits)
    if isinstance(message, Start):
        if state is None:
            _start(out, message)
    elif state is None or state.finished:
        pass  # unknown or finished play: results, ticks and cancels change nothing
    elif isinstance(message, FlowletResult):
        _on_result(out, message)
    elif isinstance(message, Tick):
        _on_tick(out)
    elif isinstance(message, CancelPlay):
        _finish_early(out, ev.PlayCancelled, ev.PlayCancelledPayload(reason=message.reason), message.reason)
    elif isinstance(message, FlowletDispatch):
        f = state.flowlets.get(message.flowlet)
        if f is not None and f.status is FlowletStatus.SCHEDULED and f.attempts == message.attempt:
            out.emit(
                ev.FlowletDispatched,
                ev.FlowletDispatchedPayload(flowlet=message.flowlet, attempt=message.attempt, channel=message.channel),
            )
    else:  # pragma: no cover - the Message union is closed
        raise EngineError(f"unknown message {type(message).__name__}")
    return out.events, out.state


def next_wakeup(state: PlayState) -> datetime | None:
    """When the host must deliver a ``Tick``: the earliest deadline or retry due."""
    if state.finished:
        return None
    times = [
        t
        for f in state.flowlets.values()
        for t in (
            f.deadline if f.status in IN_FLIGHT else None,
            f.retry_at if f.status is FlowletStatus.RETRY_WAIT else None,
        )
        if t is not None
    ]
    return min(times, default=None)


def in_flight(state: PlayState) -> list[tuple[str, FlowletState]]:
    """Flowlets whose current attempt is out with an executor (to re-dispatch on resume)."""
    return [(n, f) for n, f in state.flowlets.items() if f.status in IN_FLIGHT]


# ---------------------------------------------------------------- decisions


def _start(out: _Emitter, msg: Start) -> None:
    out.emit(ev.PlayStarted, ev.PlayStartedPayload(flow=msg.flow, input=msg.input), start=msg)
    _schedule(out, msg.flow.roots)


def _schedule(out: _Emitter, names: Iterable[str]) -> None:
    for name in names:
        state = out.state
        assert state is not None
        if state.finished:
            return
        spec = state.flow.by_name[name]
        attempt = state.flowlets[name].attempts + 1
        try:
            task_input = _task_input(state, name, out.limits)
        except templating.TemplateError as exc:
            # The inputs of a play never change, so retrying cannot help.
            out.emit(
                ev.FlowletFailed,
                ev.FlowletFailedPayload(
                    flowlet=name, attempt=attempt, error=f"flowlet {name!r}: {exc}", retryable=False
                ),
            )
            _after_failure(out, name, attempt, retryable=False)
            continue
        out.emit(
            ev.FlowletScheduled,
            ev.FlowletScheduledPayload(
                flowlet=name,
                attempt=attempt,
                module_ref=spec.module_ref,
                input=task_input,
                timeout_ms=spec.timeout,
                deadline=out.now + timedelta(milliseconds=spec.timeout),
                defer_after_ms=spec.defer_after_ms,
            ),
        )


def _task_input(state: PlayState, name: str, limits: Limits) -> Any:
    spec = state.flow.by_name[name]
    cap = limits.max_rendered_bytes
    if spec.input is None:
        rendered: Any = {"input": state.input, "deps": {d: state.flowlets[d].output for d in spec.depends_on}}
    else:
        outputs = {n: f.output for n, f in state.flowlets.items() if f.status is FlowletStatus.SUCCEEDED}
        rendered = templating.render(spec.input, state.input, outputs, max_bytes=cap)
    size = json_size(rendered)
    if size > cap:
        raise templating.TemplateError(
            f"its rendered input is {size} bytes, over the limit of {cap} (limits.max_rendered_bytes)"
        )
    return rendered


def json_size(value: Any) -> int:
    """Bytes of ``value`` as JSON: what the limits measure."""
    return len(orjson.dumps(value, default=str, option=orjson.OPT_NON_STR_KEYS))


def _on_result(out: _Emitter, msg: FlowletResult) -> None:
    state = out.state
    assert state is not None
    f = state.flowlets.get(msg.flowlet)
    if f is None or f.status not in IN_FLIGHT or f.attempts != msg.attempt:
        return  # a stale attempt (timed out, cancelled) or a redelivery: already decided
    too_large = _too_large(state, msg, out.limits) if msg.ok else None
    if too_large is not None:
        msg = msg.model_copy(update={"ok": False, "output": None, "error": too_large, "retryable": False})
    if msg.ok:
        out.emit(
            ev.FlowletCompleted,
            ev.FlowletCompletedPayload(
                flowlet=msg.flowlet,
                attempt=msg.attempt,
                output=msg.output,
                started_at=msg.started_at,
                ended_at=msg.ended_at,
            ),
        )
        _after_success(out, msg.flowlet)
    else:
        out.emit(
            ev.FlowletFailed,
            ev.FlowletFailedPayload(
                flowlet=msg.flowlet,
                attempt=msg.attempt,
                error=msg.error or "failed",
                retryable=msg.retryable,
                started_at=msg.started_at,
                ended_at=msg.ended_at,
            ),
        )
        _after_failure(out, msg.flowlet, msg.attempt, retryable=msg.retryable)


def _too_large(state: PlayState, msg: FlowletResult, limits: Limits) -> str | None:
    """Why ``msg``'s output may not be recorded, if it may not: over the output limit, or
    it would take the play's outputs and input past the limit of a whole play's state."""
    size = json_size(msg.output)
    if size > limits.max_output_bytes:
        return (
            f"{OUTPUT_TOO_LARGE}: flowlet {msg.flowlet!r} returned {size} bytes, "
            f"over the limit of {limits.max_output_bytes} (limits.max_output_bytes)"
        )
    total = state.held_bytes + size
    if total > limits.max_state_bytes:
        return (
            f"{OUTPUT_TOO_LARGE}: with flowlet {msg.flowlet!r}'s output the play would hold {total} bytes, "
            f"over the limit of {limits.max_state_bytes} (limits.max_state_bytes)"
        )
    return None


def _after_success(out: _Emitter, name: str) -> None:
    state = out.state
    assert state is not None
    ready = [
        d
        for d in state.flow.dependents[name]
        if state.flowlets[d].status is FlowletStatus.PENDING
        and all(state.flowlets[p].status is FlowletStatus.SUCCEEDED for p in state.flow.by_name[d].depends_on)
    ]
    _schedule(out, ready)
    _complete_if_done(out)


def _complete_if_done(out: _Emitter) -> None:
    state = out.state
    assert state is not None
    if state.finished or any(f.status is not FlowletStatus.SUCCEEDED for f in state.flowlets.values()):
        return
    output = {name: state.flowlets[name].output for name in state.flow.sinks}
    out.emit(ev.PlayCompleted, ev.PlayCompletedPayload(output=output))


def _after_failure(out: _Emitter, name: str, attempt: int, *, retryable: bool) -> None:
    state = out.state
    assert state is not None
    policy = state.flow.by_name[name].retry
    if retryable and attempt < policy.max_attempts:
        backoff = policy.backoff_for(attempt)
        out.emit(
            ev.FlowletRetryScheduled,
            ev.FlowletRetryScheduledPayload(
                flowlet=name,
                attempt=attempt + 1,
                backoff_ms=backoff,
                due_at=out.now + timedelta(milliseconds=backoff),
            ),
        )
        if backoff == 0:
            _schedule(out, [name])
        return
    error = state.flowlets[name].error or "failed"
    reason = f"flowlet {name!r} failed after {attempt} attempt{'s' if attempt != 1 else ''}: {error}"
    _finish_early(out, ev.PlayFailed, ev.PlayFailedPayload(error=reason, flowlet=name), f"play failed: {name!r} failed")


def _finish_early(out: _Emitter, final: type[ev._Event], payload: Any, why: str) -> None:
    """End the play before every flowlet succeeded: cancel what is out, skip the rest."""
    state = out.state
    assert state is not None
    for name, f in state.flowlets.items():
        if f.status in IN_FLIGHT or f.status is FlowletStatus.RETRY_WAIT:
            out.emit(ev.FlowletCancelled, ev.FlowletCancelledPayload(flowlet=name, attempt=f.attempts, reason=why))
        elif f.status is FlowletStatus.PENDING:
            out.emit(ev.FlowletSkipped, ev.FlowletSkippedPayload(flowlet=name, reason=why))
    out.emit(final, payload)


def _on_tick(out: _Emitter) -> None:
    state = out.state
    assert state is not None
    now = out.now
    for name, f in list(state.flowlets.items()):
        current = out.state
        assert current is not None
        if current.finished:
            return
        f = current.flowlets[name]
        if f.status in IN_FLIGHT and f.deadline is not None and f.deadline <= now:
            timeout_ms = current.flow.by_name[name].timeout
            out.emit(
                ev.FlowletTimedOut,
                ev.FlowletTimedOutPayload(flowlet=name, attempt=f.attempts, timeout_ms=timeout_ms),
            )
            _after_failure(out, name, f.attempts, retryable=True)
        elif f.status is FlowletStatus.RETRY_WAIT and f.retry_at is not None and f.retry_at <= now:
            _schedule(out, [name])


# ---------------------------------------------------------------- evolution


def evolve(state: PlayState | None, event: ev.Event) -> PlayState:
    """The state after ``event``. Does not mutate ``state``."""
    if isinstance(event, ev.PlayStarted):
        if state is not None:
            raise EngineError(f"play {event.play_id}: PlayStarted at seq {event.seq} on a started play")
        p = event.payload
        return PlayState(
            play_id=event.play_id,
            company_id=event.company_id,
            flow=p.flow,
            input=p.input,
            held_bytes=json_size(p.input),
            seq=event.seq,
            last_hash=event.hash,
            started_at=event.at,
            flowlets={f.name: FlowletState() for f in p.flow.flowlets},
        )
    if state is None:
        raise EngineError(f"play {event.play_id}: {event.type} at seq {event.seq} before PlayStarted")
    if event.seq != state.seq + 1:
        raise EngineError(f"play {event.play_id}: event seq {event.seq} after seq {state.seq}")
    update: dict[str, Any] = {"seq": event.seq, "last_hash": event.hash}
    if isinstance(event, ev.FlowletCompleted):
        update["held_bytes"] = state.held_bytes + json_size(event.payload.output)
    flowlet_update = _flowlet_update(event)
    if flowlet_update is not None:
        name, changes = flowlet_update
        flowlets = dict(state.flowlets)
        flowlets[name] = flowlets[name].model_copy(update=changes(flowlets[name]))
        update["flowlets"] = flowlets
    elif isinstance(event, ev.PlayCompleted):
        update.update(status=PlayStatus.SUCCEEDED, output=event.payload.output, ended_at=event.at)
    elif isinstance(event, ev.PlayFailed):
        update.update(status=PlayStatus.FAILED, error=event.payload.error, ended_at=event.at)
    elif isinstance(event, ev.PlayCancelled):
        update.update(status=PlayStatus.CANCELLED, error=event.payload.reason, ended_at=event.at)
    return state.model_copy(update=update)


def _flowlet_update(event: ev.Event) -> tuple[str, Any] | None:
    at = event.at
    match event:
        case ev.FlowletScheduled(payload=p):
            return p.flowlet, lambda f: {
                "status": FlowletStatus.SCHEDULED,
                "attempts": p.attempt,
                "started_at": f.started_at or at,
                "task_input": p.input,
                "deadline": p.deadline,
                "retry_at": None,
            }
        case ev.FlowletDispatched(payload=p):
            return p.flowlet, lambda f: {"status": FlowletStatus.RUNNING, "channel": p.channel}
        case ev.FlowletCompleted(payload=p):
            return p.flowlet, lambda f: _ended(FlowletStatus.SUCCEEDED, at, output=p.output, error=None)
        case ev.FlowletFailed(payload=p):
            return p.flowlet, lambda f: _ended(FlowletStatus.FAILED, at, error=p.error, attempts=p.attempt)
        case ev.FlowletTimedOut(payload=p):
            return p.flowlet, lambda f: _ended(FlowletStatus.TIMED_OUT, at, error=f"timed out after {p.timeout_ms} ms")
        case ev.FlowletRetryScheduled(payload=p):
            return p.flowlet, lambda f: {
                "status": FlowletStatus.RETRY_WAIT,
                "retry_at": p.due_at,
                "ended_at": None,
            }
        case ev.FlowletSkipped(payload=p):
            return p.flowlet, lambda f: _ended(FlowletStatus.SKIPPED, at, error=p.reason)
        case ev.FlowletCancelled(payload=p):
            return p.flowlet, lambda f: _ended(FlowletStatus.CANCELLED, at, error=p.reason)
    return None


def _ended(status: FlowletStatus, at: datetime, **extra: Any) -> dict[str, Any]:
    return {"status": status, "ended_at": at, "deadline": None, "task_input": None, "channel": None, **extra}


def fold(events: Sequence[ev.Event], state: PlayState | None = None) -> PlayState | None:
    """The state after all of ``events`` (the audit's and the projection's view)."""
    for event in events:
        state = evolve(state, event)
    return state


__all__ = [
    "OUTPUT_TOO_LARGE",
    "TERMINAL",
    "EngineError",
    "decide",
    "evolve",
    "fold",
    "in_flight",
    "next_wakeup",
    "step",
]
