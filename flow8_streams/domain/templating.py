"""Input templating: ``${input.PATH}`` and ``${flowlets.NAME.output.PATH}``.

A string that is exactly one reference is replaced by the referenced value and
keeps its type; references inside a longer string are interpolated (JSON for
objects and lists). Paths walk objects by key and lists by index.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from flow8_streams.errors import TemplateError as TemplateError  # re-exported: templating.TemplateError

_REF = re.compile(r"\$\{([^}]*)\}")
_INDEX = re.compile(r"-?[0-9]+")  # ASCII only: int() rejects "--1" and takes "²" as a digit
_MISSING = object()


@dataclass(frozen=True, slots=True)
class Reference:
    text: str  # the whole "${...}", for messages
    flowlet: str | None  # None for ${input...}
    path: tuple[str, ...]


def parse_reference(body: str) -> Reference:
    text = "${" + body + "}"
    parts = body.strip().split(".")
    if parts[0] == "input":
        return Reference(text, None, tuple(parts[1:]))
    if parts[0] == "flowlets" and len(parts) >= 3 and parts[1] and parts[2] == "output":
        return Reference(text, parts[1], tuple(parts[3:]))
    raise TemplateError(f"{text} is not a reference; use ${{input.PATH}} or ${{flowlets.NAME.output.PATH}}")


def _walk(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, Mapping):
        for v in value.values():
            yield from _walk(v)
    elif isinstance(value, list | tuple):
        for v in value:
            yield from _walk(v)


def references(template: Any) -> list[Reference]:
    """Every reference in a template, parsed (raises ``TemplateError`` if malformed)."""
    return [parse_reference(m.group(1)) for s in _walk(template) for m in _REF.finditer(s)]


def _lookup(ref: Reference, play_input: Any, outputs: Mapping[str, Any]) -> Any:
    if ref.flowlet is None:
        value = play_input
    else:
        value = outputs.get(ref.flowlet, _MISSING)
        if value is _MISSING:
            raise TemplateError(f"{ref.text} does not resolve: flowlet {ref.flowlet!r} has no output")
    for i, key in enumerate(ref.path):
        if isinstance(value, Mapping) and key in value:
            value = value[key]
        elif isinstance(value, list) and _INDEX.fullmatch(key) and -len(value) <= int(key) < len(value):
            value = value[int(key)]
        else:
            where = ".".join(ref.path[:i]) or "(top)"
            raise TemplateError(f"{ref.text} does not resolve: no {key!r} at {where}")
    return value


def _as_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


class _Budget:
    """Bytes a rendering may still produce: it stops as soon as the result would pass
    ``max_bytes``, before building it (a template that doubles a string per flowlet
    would otherwise grow without bound)."""

    def __init__(self, max_bytes: int | None) -> None:
        self.left = max_bytes
        self.max_bytes = max_bytes

    def spend(self, size: int) -> None:
        if self.left is None:
            return
        self.left -= size
        if self.left < 0:
            raise TemplateError(
                f"its rendered input is over the limit of {self.max_bytes} bytes (limits.max_rendered_bytes)"
            )


def render(template: Any, play_input: Any, outputs: Mapping[str, Any], *, max_bytes: int | None = None) -> Any:
    """Replace every reference in ``template``; raises ``TemplateError`` naming the first that fails,
    or as soon as the result would be larger than ``max_bytes`` (JSON text, about)."""
    return _render(template, play_input, outputs, _Budget(max_bytes))


def _render(template: Any, play_input: Any, outputs: Mapping[str, Any], budget: _Budget) -> Any:
    if isinstance(template, str):
        if "${" not in template:
            budget.spend(len(template))
            return template
        whole = _REF.fullmatch(template)
        if whole:
            value = _lookup(parse_reference(whole.group(1)), play_input, outputs)
            budget.spend(len(_as_text(value)) if budget.left is not None else 0)
            return value

        def interpolate(match: re.Match[str]) -> str:
            text = _as_text(_lookup(parse_reference(match.group(1)), play_input, outputs))
            budget.spend(len(text))
            return text

        return _REF.sub(interpolate, template)
    if isinstance(template, Mapping):
        return {k: _render(v, play_input, outputs, budget) for k, v in template.items()}
    if isinstance(template, list | tuple):
        return [_render(v, play_input, outputs, budget) for v in template]
    return template
