"""Bytes on Kafka <-> the engine's models. Every decode error names what is wrong,
so the dead-letter topic can say it next to the original bytes."""

from __future__ import annotations

from typing import Any

import orjson
from pydantic import TypeAdapter, ValidationError

from flow8_streams.domain import bounded
from flow8_streams.domain.limits import DEFAULT_LIMITS, Limits
from flow8_streams.domain.messages import Command, Internal, StartPlay, Task
from flow8_streams.domain.results import PlayResult
from flow8_streams.domain.state import PlayState
from flow8_streams.errors import BadMessage as BadMessage  # re-exported: codec.BadMessage
from flow8_streams.errors import InvalidInput

command_adapter: TypeAdapter[Any] = TypeAdapter(Command)
internal_adapter: TypeAdapter[Any] = TypeAdapter(Internal)
task_adapter: TypeAdapter[Any] = TypeAdapter(Task)
JSON_OPTIONS = orjson.OPT_UTC_Z


def _decode(adapter: TypeAdapter[Any], raw: bytes | None, what: str, limits: Limits) -> Any:
    if raw is None:
        raise BadMessage("empty", f"{what}: the message has no value")
    try:
        data = bounded.decode_json(raw, limits, what)
    except InvalidInput as exc:  # too large, too deep, not JSON: each names the limit
        raise BadMessage(exc.reason, str(exc)) from None
    if not isinstance(data, dict):
        raise BadMessage("not_object", f"{what}: a JSON object is expected, got {type(data).__name__}")
    kind = data.get("type")
    try:
        return adapter.validate_python(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or '(message)'}: {e['msg']}" for e in exc.errors(include_url=False)
        )
        reason = "unknown_type" if any(e["type"] == "union_tag_invalid" for e in exc.errors()) else "invalid"
        if reason == "unknown_type":
            problems = f"unknown message type {kind!r} (from a newer version?); {problems}"
        raise BadMessage(reason, f"{what}: {problems}") from None


def decode_command(raw: bytes | None, limits: Limits = DEFAULT_LIMITS) -> Any:
    """A StartPlay or CancelPlay from ``flow8.commands``, within ``limits``."""
    command = _decode(command_adapter, raw, "command", limits)
    if isinstance(command, StartPlay):
        size = len(orjson.dumps(command.input))
        if size > limits.max_input_bytes:
            raise BadMessage(
                "too_large",
                f"command: StartPlay input is {size} bytes, over the limit of {limits.max_input_bytes} "
                "(limits.max_input_bytes)",
            )
    return command


def decode_internal(raw: bytes | None, limits: Limits = DEFAULT_LIMITS) -> Any:
    """A FlowletResult, Tick, FlowletDispatch or ChannelHeartbeat from ``flow8.completions``."""
    return _decode(internal_adapter, raw, "completion", limits)


def decode_task(raw: bytes | None, limits: Limits = DEFAULT_LIMITS) -> Task:
    result: Task = _decode(task_adapter, raw, "task", limits)
    return result


def encode(model: Any) -> bytes:
    return model.__pydantic_serializer__.to_json(model)  # type: ignore[no-any-return]


def encode_result(state: PlayState) -> bytes:
    return encode(PlayResult.of(state))
