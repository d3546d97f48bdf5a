"""The state of a play: nothing but the fold of its events (see ``engine.evolve``)."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict

from flow8_streams.domain.events import GENESIS_HASH
from flow8_streams.domain.flow import FlowDefinition


class PlayStatus(StrEnum):
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


class FlowletStatus(StrEnum):
    PENDING = "pending"
    SCHEDULED = "scheduled"
    RUNNING = "running"
    RETRY_WAIT = "retry_wait"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    TIMED_OUT = "timed_out"
    SKIPPED = "skipped"
    CANCELLED = "cancelled"


IN_FLIGHT = frozenset({FlowletStatus.SCHEDULED, FlowletStatus.RUNNING})
TERMINAL = frozenset(
    {
        FlowletStatus.SUCCEEDED,
        FlowletStatus.FAILED,
        FlowletStatus.TIMED_OUT,
        FlowletStatus.SKIPPED,
        FlowletStatus.CANCELLED,
    }
)


class FlowletState(BaseModel):
    model_config = ConfigDict(frozen=True)

    status: FlowletStatus = FlowletStatus.PENDING
    attempts: int = 0
    started_at: datetime | None = None
    ended_at: datetime | None = None
    output: Any = None
    error: str | None = None
    # the current attempt: what a host needs to (re-)dispatch it and to time it out
    task_input: Any = None
    deadline: datetime | None = None
    retry_at: datetime | None = None
    channel: str | None = None

    def public(self) -> dict[str, Any]:
        """The fields users see (``flow8 run --json``, the API, the projection)."""
        status = self.status
        if status is FlowletStatus.RETRY_WAIT:
            status = FlowletStatus.SCHEDULED
        return {
            "status": status.value,
            "attempts": self.attempts,
            "started_at": self.started_at,
            "ended_at": self.ended_at,
            "output": self.output,
            "error": self.error,
        }


class PlayState(BaseModel):
    model_config = ConfigDict(frozen=True)

    play_id: str
    company_id: str
    flow: FlowDefinition
    input: Any = None
    status: PlayStatus = PlayStatus.RUNNING
    seq: int = 0
    last_hash: str = GENESIS_HASH
    started_at: datetime
    ended_at: datetime | None = None
    output: Any = None
    error: str | None = None
    flowlets: dict[str, FlowletState]
    held_bytes: int = 0  # the input's and every recorded output's JSON size: bounded by Limits.max_state_bytes

    @property
    def finished(self) -> bool:
        return self.status is not PlayStatus.RUNNING

    def public(self) -> dict[str, Any]:
        """The play as users see it: ``flow8 run --json``, ``flow8 plays show``, the API."""
        return {
            "play_id": self.play_id,
            "company_id": self.company_id,
            "flow": self.flow.name,
            "flow_version": self.flow.version,
            "status": self.status.value,
            "input": self.input,
            "output": self.output,
            "error": self.error,
            "started_at": self.started_at,
            "ended_at": self.ended_at,
            "seq": self.seq,
            "flowlets": {name: f.public() for name, f in self.flowlets.items()},
        }
