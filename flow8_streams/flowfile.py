"""Reading flows and JSON documents from files and flags, with errors a person can act on."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import yaml
from pydantic import ValidationError

from flow8_streams.domain.flow import FlowDefinition
from flow8_streams.errors import InvalidFlow, InvalidInput


def _parse(text: str | bytes, what: str, *, yaml_ok: bool) -> Any:
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        if not yaml_ok:
            raise InvalidInput(f"{what} is not valid JSON: {exc}") from None
        json_error = exc
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise InvalidInput(f"{what} is neither valid JSON ({json_error}) nor YAML ({exc})") from None


def read_document(path: str | Path, what: str = "") -> Any:
    p = Path(path)
    label = what or str(p)
    try:
        raw = p.read_bytes()
    except FileNotFoundError:
        raise InvalidInput(f"{label}: no such file") from None
    except OSError as exc:
        raise InvalidInput(f"{label}: cannot be read: {exc.strerror}") from None
    return _parse(raw, label, yaml_ok=p.suffix.lower() in {".yaml", ".yml"})


def parse_json_arg(value: str, flag: str) -> Any:
    """``--input '{"a": 1}'`` or ``--input @file.json``."""
    if value.startswith("@"):
        return read_document(value[1:], f"{flag} file {value[1:]}")
    return _parse(value, f"{flag} {value!r}", yaml_ok=False)


def flow_from_data(data: Any, source: str) -> FlowDefinition:
    if not isinstance(data, dict):
        raise InvalidFlow(source, ["a flow is a JSON object with 'name' and 'flowlets'"])
    try:
        return FlowDefinition.model_validate(data)
    except ValidationError as exc:
        raise InvalidFlow(str(data.get("name") or source), describe_errors(exc, data)) from None


def load_flow(path: str | Path) -> FlowDefinition:
    return flow_from_data(read_document(path), str(path))


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
        where = ".".join(str(p) for p in loc) or "(top)"
        if len(loc) >= 2 and loc[0] == "flowlets" and isinstance(loc[1], int):
            try:
                name = data["flowlets"][loc[1]].get("name")
            except (KeyError, IndexError, TypeError, AttributeError):
                name = None
            rest = ".".join(str(p) for p in loc[2:]) or "(the flowlet)"
            label = f"flowlet {name!r}" if isinstance(name, str) else f"flowlet #{loc[1] + 1}"
            where = f"{label}: {rest}"
        message = err["msg"]
        if message.startswith("Value error, "):
            message = message[len("Value error, ") :]
        out.append(f"{where}: {message}")
    return out
