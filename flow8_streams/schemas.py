"""JSON Schema of every command, event and the flow definition, from the pydantic models.

``flow8 schemas export`` writes them to ``schemas/``; ``--check`` fails on drift,
so what producers in other languages read is always what the code accepts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
from pydantic import BaseModel, TypeAdapter

from flow8_streams.domain import events as ev
from flow8_streams.domain.flow import FlowDefinition
from flow8_streams.domain.messages import CancelPlay, Command, FlowletResult, StartPlay, Task
from flow8_streams.domain.results import PlayResult

SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"
BASE_ID = "https://flow8.dev/schemas/"


def _schema(model: type[BaseModel] | TypeAdapter[Any], name: str, title: str) -> dict[str, Any]:
    body = model.model_json_schema() if isinstance(model, type) else model.json_schema()
    return {"$schema": SCHEMA_DIALECT, "$id": BASE_ID + name, **body, "title": title}


def generate() -> dict[str, dict[str, Any]]:
    """File name -> schema, for everything that crosses a boundary."""
    out: dict[str, dict[str, Any]] = {
        "flow-definition.schema.json": _schema(FlowDefinition, "flow-definition.schema.json", "FlowDefinition"),
        "command.schema.json": _schema(TypeAdapter(Command), "command.schema.json", "Command (flow8.commands)"),
        "start-play.schema.json": _schema(StartPlay, "start-play.schema.json", "StartPlay"),
        "cancel-play.schema.json": _schema(CancelPlay, "cancel-play.schema.json", "CancelPlay"),
        "flowlet-result.schema.json": _schema(
            FlowletResult, "flowlet-result.schema.json", "FlowletResult (flow8.completions)"
        ),
        "task.schema.json": _schema(Task, "task.schema.json", "Task (flow8.tasks)"),
        "play-result.schema.json": _schema(PlayResult, "play-result.schema.json", "PlayResult (flow8.play-results)"),
        "event.schema.json": _schema(ev.event_adapter, "event.schema.json", "Event (flow8.events)"),
    }
    for type_name, cls in ev.EVENT_TYPES.items():
        slug = "".join("-" + c.lower() if c.isupper() else c for c in type_name).lstrip("-")
        name = f"events/{slug}.schema.json"
        out[name] = _schema(cls, name, type_name)
    return out


def render(schema: dict[str, Any]) -> bytes:
    return orjson.dumps(schema, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS) + b"\n"


def export(directory: Path) -> list[Path]:
    written = []
    for name, schema in generate().items():
        path = directory / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(render(schema))
        written.append(path)
    return written


def drift(directory: Path) -> list[str]:
    """Files under ``directory`` that differ from what the models generate (or are missing/extra)."""
    expected = {name: render(schema) for name, schema in generate().items()}
    problems = []
    for name, body in expected.items():
        path = directory / name
        if not path.exists():
            problems.append(f"{name}: missing")
        elif path.read_bytes() != body:
            problems.append(f"{name}: differs from the models")
    if directory.exists():
        for path in sorted(directory.rglob("*.json")):
            rel = path.relative_to(directory).as_posix()
            if rel not in expected:
                problems.append(f"{rel}: no model generates it")
    return problems
