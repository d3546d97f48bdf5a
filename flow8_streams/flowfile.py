"""Reading flows and JSON documents from files and flags, with errors a person can act on.

Every read is bounded before it is parsed: a flow file by ``limits.max_flow_bytes``, a play
input (inline or ``@file``) by ``limits.max_input_bytes``; at most limit + 1 bytes are ever
read, so a device or a pipe that never ends is refused as too large.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import ValidationError

from flow8_streams.domain.bounded import NotJson, TooLarge, decode_json, load_yaml
from flow8_streams.domain.flow import FlowDefinition
from flow8_streams.domain.limits import DEFAULT_LIMITS, Limits
from flow8_streams.errors import InvalidFlow, InvalidInput

PREVIEW = 80
MAX_ERRORS = 20


def _parse(raw: bytes | str, what: str, *, yaml_ok: bool, limits: Limits, max_bytes: int) -> Any:
    try:
        return decode_json(raw, limits, what, max_bytes)
    except NotJson as exc:
        if not yaml_ok:
            raise
        json_error = str(exc).removeprefix(f"{what} is not valid JSON: ")
    try:
        return load_yaml(raw, limits, what, max_bytes)
    except NotJson as exc:
        message = str(exc)
        if message.startswith(f"{what} is not valid YAML: "):
            yaml_error = message.removeprefix(f"{what} is not valid YAML: ")
            raise NotJson(f"{what} is neither valid JSON ({json_error}) nor YAML ({yaml_error})") from None
        raise


def read_bounded(path: str | Path, max_bytes: int, label: str, setting: str) -> bytes:
    """At most ``max_bytes`` of the file at ``path``; longer is refused naming the file and ``setting``."""
    try:
        with open(path, "rb") as f:
            data = f.read(max_bytes + 1)
    except FileNotFoundError:
        raise InvalidInput(f"{label}: no such file") from None
    except OSError as exc:
        raise InvalidInput(f"{label}: cannot be read: {exc.strerror or exc}") from None
    if len(data) > max_bytes:
        raise TooLarge(f"{label} is larger than the limit of {max_bytes} bytes ({setting})")
    return data


def read_document(
    path: str | Path,
    what: str = "",
    *,
    limits: Limits = DEFAULT_LIMITS,
    max_bytes: int | None = None,
    setting: str = "limits.max_flow_bytes",
) -> Any:
    """A JSON (or, for .yaml/.yml, YAML) file of at most ``max_bytes`` (default: a flow's limit)."""
    p = Path(path)
    label = what or str(p)
    bound = limits.max_flow_bytes if max_bytes is None else max_bytes
    raw = read_bounded(p, bound, label, setting)
    return _parse(raw, label, yaml_ok=p.suffix.lower() in {".yaml", ".yml"}, limits=limits, max_bytes=bound)


def parse_json_arg(value: str, flag: str, limits: Limits = DEFAULT_LIMITS) -> Any:
    """``--input '{"a": 1}'`` or ``--input @file.json``, at most ``limits.max_input_bytes``."""
    bound = limits.max_input_bytes
    setting = "limits.max_input_bytes"
    if value.startswith("@"):
        return read_document(value[1:], f"{flag} file {value[1:]}", limits=limits, max_bytes=bound, setting=setting)
    label = f"{flag} {value!r}" if len(value) <= PREVIEW else f"{flag} (a value of {len(value)} characters)"
    try:
        return _parse(value, label, yaml_ok=False, limits=limits, max_bytes=bound)
    except TooLarge:
        raise TooLarge(f"{flag} is larger than the limit of {bound} bytes ({setting})") from None


def _preview(text: str) -> str:
    """At most PREVIEW characters of user text quoted in a message."""
    return text if len(text) <= PREVIEW else text[: PREVIEW - 1] + "…"


def flow_from_data(data: Any, source: str) -> FlowDefinition:
    if not isinstance(data, dict):
        raise InvalidFlow(source, ["a flow is a JSON object with 'name' and 'flowlets'"])
    try:
        return FlowDefinition.model_validate(data)
    except ValidationError as exc:
        name = data.get("name")
        shown = name if isinstance(name, str) and name and len(name) <= PREVIEW else source
        raise InvalidFlow(shown, describe_errors(exc, data)) from None


def load_flow(path: str | Path, limits: Limits = DEFAULT_LIMITS) -> FlowDefinition:
    return flow_from_data(read_document(path, limits=limits), str(path))


def describe_errors(exc: ValidationError, data: Any) -> list[str]:
    """Pydantic's errors, with flowlet indexes replaced by the flowlets' names."""
    out = []
    for err in exc.errors(include_url=False):
        loc = list(err["loc"])
        if err["type"] == "too_short" and loc == ["flowlets"] and isinstance(data, dict) and data.get("flowlets"):
            # pydantic counts only the flowlets that validated: when every one of
            # them is invalid it adds "at least 1 item ... not 0", which is false
            # here; each flowlet's own errors are already listed.
            continue
        where = _preview(".".join(str(p) for p in loc)) or "(top)"
        if len(loc) >= 2 and loc[0] == "flowlets" and isinstance(loc[1], int):
            try:
                name = data["flowlets"][loc[1]].get("name")
            except (KeyError, IndexError, TypeError, AttributeError):
                name = None
            rest = _preview(".".join(str(p) for p in loc[2:])) or "(the flowlet)"
            label = f"flowlet {_preview(name)!r}" if isinstance(name, str) else f"flowlet #{loc[1] + 1}"
            where = f"{label}: {rest}"
        message = err["msg"]
        if message.startswith("Value error, "):
            message = message[len("Value error, ") :]
        out.append(f"{where}: {message}")
    if len(out) > MAX_ERRORS:  # one paragraph a person reads: the first ones, and how many more
        out = [*out[:MAX_ERRORS], f"and {len(out) - MAX_ERRORS} more"]
    return out
