"""The channel protocol: newline-delimited JSON over TCP, one message per line.

dispatcher -> worker   ``run``       {body, mac}: a Task (with when it was sent and a nonce) as JSON
                                     text, and the pool secret's HMAC of exactly that text, on the
                                     worker's control socket (a Unix socket in the pool's 0700
                                     directory), never on the port. A run on the port, or whose mac
                                     does not verify, or seen before, is refused and nothing runs.
                                     Which modules a channel runs is its start-up configuration,
                                     never a message's.
worker -> dispatcher   ``accepted``  the worker took the task (the dispatcher records FlowletDispatched)
                       ``heartbeat`` sent every ``--heartbeat-s`` while the task runs or waits
                       ``pending``   the module handed the work to an outside service
                       ``progress``  an outside service reported progress
                       ``result``    the FlowletResult; the connection is done
outside -> port        ``complete``  {token, ok, output | error}: finishes a pending flowlet; the
                                     token is the one flow8 minted for that attempt
                       ``progress``  {token, ...}: anything else on the line is the progress
anyone -> port         ``status``    -> {port, pid, state: idle|busy|pending, play_id, flowlet, ...};
                                     a token's fingerprint at most, never the token
worker -> anyone       ``ok`` / ``error``   replies to complete, progress and bad lines

A line that is not a message gets an ``error`` reply; the connection stays open. A line
over ``max_message_bytes`` (1 MiB), a connection past the cap, or one idle past the idle
timeout gets an ``error`` reply and is closed.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal, TypeVar

import orjson
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from flow8_streams.channels.exceptions import ProtocolError
from flow8_streams.domain.limits import DEFAULT_LIMITS, MiB
from flow8_streams.domain.messages import FlowletResult, Task

MAX_LINE = DEFAULT_LIMITS.max_message_bytes  # an outside line, and any line a worker reads
DEFAULT_MAX_CONNECTIONS = 64  # outside connections to one channel at once
DEFAULT_IDLE_TIMEOUT_S = 30.0  # an outside connection without a whole line for this long is closed
WORKER_LINE_MAX = 16 * MiB  # a line the dispatcher reads from its own worker (a result)
ChannelState = Literal["idle", "busy", "pending"]
Token = Annotated[str, Field(min_length=1, max_length=1000)]


class _Message(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# ---------------------------------------------------------------- to the worker


class Run(_Message):
    """A task from the pool: ``body`` is a ``RunBody`` as JSON text, ``mac`` its HMAC under the pool secret."""

    type: Literal["run"] = "run"
    body: str
    mac: str = Field(pattern=r"^[0-9a-f]{64}$")


class RunBody(_Message):
    task: Task
    sent_at: datetime
    nonce: str = Field(min_length=16, max_length=64)


class Complete(_Message):
    """An outside service finishes the flowlet it was handed under ``token``."""

    type: Literal["complete"] = "complete"
    token: Token
    ok: bool = True
    output: Any = None
    error: str | None = None
    retryable: bool = True


class Progress(BaseModel):
    """An outside service's progress report; every field but ``type`` and ``token`` is the progress."""

    model_config = ConfigDict(extra="allow", frozen=True)

    type: Literal["progress"] = "progress"
    token: Token

    def details(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class StatusRequest(_Message):
    type: Literal["status"] = "status"


# ---------------------------------------------------------------- from the worker


class Accepted(_Message):
    type: Literal["accepted"] = "accepted"
    port: int
    pid: int
    play_id: str
    flowlet: str
    attempt: int


class Heartbeat(_Message):
    type: Literal["heartbeat"] = "heartbeat"
    state: ChannelState


class PendingNote(_Message):
    type: Literal["pending"] = "pending"
    detail: str | None = None


class ProgressNote(_Message):
    type: Literal["progress"] = "progress"
    progress: dict[str, Any]


class ResultMessage(_Message):
    type: Literal["result"] = "result"
    result: FlowletResult


class Status(_Message):
    type: Literal["status"] = "status"
    port: int
    pid: int
    state: ChannelState
    since: datetime
    company_id: str | None = None
    play_id: str | None = None
    flowlet: str | None = None
    attempt: int | None = None
    module_ref: str | None = None
    token_fingerprint: str | None = Field(default=None, description="Names the pending token; is not the token.")
    progress: dict[str, Any] | None = None


class Ack(_Message):
    type: Literal["ok"] = "ok"
    detail: str | None = None


class ErrorReply(_Message):
    type: Literal["error"] = "error"
    error: str


ToWorker = Annotated[Run | Complete | Progress | StatusRequest, Field(discriminator="type")]
FromWorker = Annotated[
    Accepted | Heartbeat | PendingNote | ProgressNote | ResultMessage | ErrorReply, Field(discriminator="type")
]
Reply = Annotated[Status | Ack | ErrorReply, Field(discriminator="type")]

TO_WORKER: TypeAdapter[ToWorker] = TypeAdapter(ToWorker)
FROM_WORKER: TypeAdapter[FromWorker] = TypeAdapter(FromWorker)
REPLY: TypeAdapter[Reply] = TypeAdapter(Reply)

M = TypeVar("M")


def encode(message: BaseModel) -> bytes:
    """One message as one line."""
    return orjson.dumps(message.model_dump(mode="json")) + b"\n"


def decode(line: bytes, adapter: TypeAdapter[M]) -> M:
    """One line as a message of ``adapter``'s union, or ``ProtocolError`` saying what is wrong."""
    try:
        data = orjson.loads(line)
    except orjson.JSONDecodeError as exc:
        raise ProtocolError(f"not JSON: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("type"), str):
        raise ProtocolError('a message is a JSON object with a string "type"')
    try:
        return adapter.validate_python(data)
    except ValidationError as exc:
        problems = []
        for e in exc.errors(include_url=False):
            loc = [str(p) for p in e["loc"]]
            if e["type"] == "union_tag_invalid":
                problems.append(f"unknown message type {data['type']!r}; expected {e['ctx']['expected_tags']}")
                continue
            where = ".".join(loc[1:]) if len(loc) > 1 else "message"
            problems.append(f"{data['type']} {where}: {e['msg']}")
        raise ProtocolError("; ".join(problems)) from None
