"""What flows into the engine: wire commands, flowlet results, and the passing of time."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from flow8_streams.domain.flow import NAME_PATTERN, FlowDefinition

if TYPE_CHECKING:
    from flow8_streams.domain.events import FlowletScheduled
    from flow8_streams.domain.state import PlayState

ID_PATTERN = r"^[A-Za-z0-9_][A-Za-z0-9_.:@-]{0,199}$"
CompanyId = Annotated[str, Field(pattern=ID_PATTERN, description="Tenant id; the Kafka message key.")]
PlayId = Annotated[str, Field(pattern=ID_PATTERN)]
GENERATED_PREFIX = "flow8-"  # play ids flow8 makes up; a client's own may not start so (see StartPlay)


class _Message(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class StartPlay(_Message):
    """Start one play of a flow for a company. With ``play_id`` a repeat is a no-op."""

    type: Literal["StartPlay"] = "StartPlay"
    company_id: CompanyId
    flow: str = Field(pattern=NAME_PATTERN, description="Flow name in the catalog.")
    flow_version: int | None = Field(default=None, ge=1, description="Latest when absent.")
    play_id: PlayId | None = Field(
        default=None,
        description=f"Generated when absent (as {GENERATED_PREFIX}<uuid>; a client's own id may not start so). "
        "Play ids are global: one another company holds is refused.",
    )
    input: Any = Field(default_factory=dict)

    @field_validator("play_id")
    @classmethod
    def _not_generated(cls, value: str | None) -> str | None:
        # generated ids are derived from the command's place in the log, which any client can
        # predict: a reserved prefix keeps another company from taking them first
        if value is not None and value.startswith(GENERATED_PREFIX):
            raise ValueError(f"play ids starting with {GENERATED_PREFIX!r} are reserved for the ids flow8 generates")
        return value


class CancelPlay(_Message):
    """Cancel a running play; a finished or unknown play is left as it is."""

    type: Literal["CancelPlay"] = "CancelPlay"
    company_id: CompanyId
    play_id: PlayId
    reason: str = "cancelled by request"


Command = Annotated[StartPlay | CancelPlay, Field(discriminator="type")]


class Start(_Message):
    """StartPlay with its flow resolved from the catalog by the host."""

    type: Literal["Start"] = "Start"
    play_id: PlayId
    company_id: CompanyId
    flow: FlowDefinition
    input: Any = None


class FlowletResult(_Message):
    """An executor's report of one flowlet attempt (the ``flow8.completions`` topic)."""

    type: Literal["FlowletResult"] = "FlowletResult"
    play_id: PlayId
    company_id: CompanyId
    flowlet: str
    attempt: int = Field(ge=1)
    ok: bool
    output: Any = None
    error: str | None = None
    retryable: bool = True
    started_at: datetime
    ended_at: datetime

    @classmethod
    def failure(
        cls,
        of: Task | tuple[str, str, str, int],
        error: str,
        *,
        now: datetime,
        started_at: datetime | None = None,
        retryable: bool = True,
    ) -> FlowletResult:
        """A failed attempt of ``of`` (a Task, or its play_id, company_id, flowlet, attempt)
        that ended ``now``; without ``started_at`` it never ran, so it started ``now`` too."""
        play_id, company_id, flowlet, attempt = (
            (of.play_id, of.company_id, of.flowlet, of.attempt) if isinstance(of, Task) else of
        )
        return cls(
            play_id=play_id,
            company_id=company_id,
            flowlet=flowlet,
            attempt=attempt,
            ok=False,
            error=error,
            retryable=retryable,
            started_at=started_at or now,
            ended_at=now,
        )


class FlowletDispatch(_Message):
    """A channel accepted a flowlet attempt (channel-port workers)."""

    type: Literal["FlowletDispatch"] = "FlowletDispatch"
    play_id: PlayId
    company_id: CompanyId
    flowlet: str
    attempt: int = Field(ge=1)
    channel: str


class Tick(_Message):
    """Time passed: the engine fires due retries and expired deadlines."""

    type: Literal["Tick"] = "Tick"
    play_id: PlayId
    company_id: CompanyId


class ChannelHeartbeat(_Message):
    """The executor holding a channel task is alive (waiting for its defer, queued, or running).

    Not for the engine: the orchestrator's channel watchdog reads it, and a channel flowlet
    it has not heard of for the heartbeat timeout fails with ``channel_lost``.
    """

    type: Literal["ChannelHeartbeat"] = "ChannelHeartbeat"
    play_id: PlayId
    company_id: CompanyId
    flowlet: str
    attempt: int = Field(ge=1)


Message = Start | CancelPlay | FlowletResult | FlowletDispatch | Tick


class Task(_Message):
    """One flowlet attempt for an executor (the ``flow8.tasks`` topic); made from FlowletScheduled."""

    type: Literal["Task"] = "Task"
    play_id: PlayId
    company_id: CompanyId
    flowlet: str
    attempt: int = Field(ge=1)
    module_ref: str
    input: Any = None
    timeout_ms: int = Field(ge=1)
    deadline: datetime
    defer_after_ms: int | None = None

    @classmethod
    def scheduled(cls, event: FlowletScheduled) -> Task:
        """The task a FlowletScheduled event asks for."""
        p = event.payload
        return cls(
            play_id=event.play_id,
            company_id=event.company_id,
            flowlet=p.flowlet,
            attempt=p.attempt,
            module_ref=p.module_ref,
            input=p.input,
            timeout_ms=p.timeout_ms,
            deadline=p.deadline,
            defer_after_ms=p.defer_after_ms,
        )

    @classmethod
    def in_flight(cls, state: PlayState, flowlet: str, now: datetime) -> Task:
        """The current attempt of ``flowlet`` in ``state``, to dispatch it again (a restart,
        a hand-over of its partition)."""
        spec = state.flow.by_name[flowlet]
        current = state.flowlets[flowlet]
        return cls(
            play_id=state.play_id,
            company_id=state.company_id,
            flowlet=flowlet,
            attempt=current.attempts,
            module_ref=spec.module_ref,
            input=current.task_input,
            timeout_ms=spec.timeout,
            deadline=current.deadline or now + timedelta(milliseconds=spec.timeout),
            defer_after_ms=spec.defer_after_ms,
        )


Internal = Annotated[FlowletResult | Tick | FlowletDispatch | ChannelHeartbeat, Field(discriminator="type")]
