"""What downstream systems read: one ``PlayResult`` per finished play."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from flow8_streams.domain.state import PlayState


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

    @classmethod
    def of(cls, state: PlayState) -> PlayResult:
        assert state.finished and state.ended_at is not None
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
        )
