"""What downstream systems read: one ``PlayResult`` per finished play."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from flow8_streams.domain.state import FlowletStatus, PlayState

DETAIL_MAX_BYTES = 384 * 1024  # a result carries its play's input and flowlets when they hold at most this


class FlowletOutcome(BaseModel):
    """A flowlet of a finished play, as ``flow8 run --json`` shows it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    status: FlowletStatus
    attempts: int = 0
    started_at: datetime | None = None
    ended_at: datetime | None = None
    output: Any = None
    error: str | None = None


class PlayResult(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    play_id: str
    company_id: str
    flow: str
    flow_version: int
    status: Literal["succeeded", "failed", "cancelled"]
    output: Any = None
    error: str | None = None
    started_at: datetime
    ended_at: datetime
    last_seq: int | None = Field(default=None, description="The seq of the play's terminal event.")
    head_hash: str | None = Field(
        default=None, description="The hash of the play's terminal event: its chain's head, an anchor for audits."
    )
    input: Any = Field(default=None, description="The play's input (with ``flowlets``: absent on a large play).")
    flowlets: dict[str, FlowletOutcome] | None = Field(
        default=None,
        description="Each flowlet as flow8 run --json shows it; absent when the play's input and outputs hold "
        "more than 384 KiB, so that a result stays well under Kafka's 1 MB request size.",
    )

    def public(self) -> dict[str, Any] | None:
        """The play as ``PlayState.public`` shows it, or None for a result without ``flowlets``."""
        if self.flowlets is None:
            return None
        return {
            "play_id": self.play_id,
            "company_id": self.company_id,
            "flow": self.flow,
            "flow_version": self.flow_version,
            "status": self.status,
            "input": self.input,
            "output": self.output,
            "error": self.error,
            "started_at": self.started_at,
            "ended_at": self.ended_at,
            "seq": self.last_seq,
            "flowlets": {name: f.model_dump() for name, f in self.flowlets.items()},
        }

    @classmethod
    def of(cls, state: PlayState) -> PlayResult:
        assert state.finished and state.ended_at is not None
        detailed = state.held_bytes <= DETAIL_MAX_BYTES
        return cls(
            play_id=state.play_id,
            company_id=state.company_id,
            flow=state.flow.name,
            flow_version=state.flow.version,
            status=state.status.value,
            output=state.output,
            error=state.error,
            started_at=state.started_at,
            ended_at=state.ended_at,
            last_seq=state.seq,
            head_hash=state.last_hash,
            input=state.input if detailed else None,
            flowlets={n: FlowletOutcome(**f.public()) for n, f in state.flowlets.items()} if detailed else None,
        )
