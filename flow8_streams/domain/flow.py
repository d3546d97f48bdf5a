"""Flow definitions: the DAG of flowlets a play runs, and its validation.

A flow is data. ``FlowDefinition`` validates the shape of each field (pydantic);
``FlowDefinition.check`` validates the graph: unique names, known dependencies,
no cycles, template references only to ancestors, and (when the caller knows
them) registered modules. Every message names the offending flowlet.
"""

from __future__ import annotations

import graphlib
import re
from collections.abc import Collection
from functools import cached_property
from typing import Annotated, Any

import pytimeparse2
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    WithJsonSchema,
)

from flow8_streams.domain import templating
from flow8_streams.domain.limits import DEFAULT_LIMITS, Limits
from flow8_streams.errors import InvalidFlow, UnknownModule

DEFAULT_TIMEOUT_MS = 300_000
MAX_TIMEOUT_MS = 3_600_000
NAME_PATTERN = r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$"
FLOWLET_NAME_PATTERN = r"^[A-Za-z0-9_][A-Za-z0-9_-]{0,127}$"


def parse_duration_ms(value: Any) -> int:
    """Parse "500ms", "30s", "5m", "1h" (or a number of seconds) into milliseconds."""
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a duration")
    if isinstance(value, int | float):
        seconds: float | None = float(value)
    elif isinstance(value, str):
        parsed = pytimeparse2.parse(value.strip())
        seconds = None if parsed is None else float(parsed)
    else:
        raise ValueError(f"{value!r} is not a duration")
    if seconds is None:
        raise ValueError(f"{value!r} is not a duration; write it like 500ms, 30s, 5m or 1h")
    ms = round(seconds * 1000)
    if ms <= 0:  # after rounding: "0.4ms" would otherwise become a 0 ms timeout
        raise ValueError(f"{value!r} must be a positive duration")
    return ms


def format_duration_ms(ms: int) -> str:
    for unit, size in (("h", 3_600_000), ("m", 60_000), ("s", 1000)):
        if ms % size == 0:
            return f"{ms // size}{unit}"
    return f"{ms}ms"


DurationMs = Annotated[
    int,
    BeforeValidator(parse_duration_ms),
    PlainSerializer(format_duration_ms, return_type=str),
    WithJsonSchema(
        {
            "type": "string",
            "pattern": r"^\s*\d+(\.\d+)?\s*(ms|s|m|h)\s*$",
            "description": 'A duration such as "500ms", "30s", "5m" or "1h".',
            "examples": ["300s"],
        }
    ),
]


class RetryPolicy(BaseModel):
    """How often a failed flowlet is tried again, and how long to wait between tries."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_attempts: int = Field(default=1, ge=1, le=100, description="Attempts in all, the first included.")
    backoff_ms: int = Field(default=200, ge=0, le=3_600_000, description="Wait before the second attempt.")
    multiplier: float = Field(default=2.0, ge=1.0, le=10.0, description="Each later wait is this much longer.")
    max_backoff_ms: int = Field(default=60_000, ge=0, le=3_600_000, description="Cap on any one wait.")

    def backoff_for(self, failed_attempt: int) -> int:
        """Milliseconds to wait after attempt ``failed_attempt`` (1-based) failed."""
        wait = self.backoff_ms * self.multiplier ** (failed_attempt - 1)
        return int(min(wait, self.max_backoff_ms))


class FlowletDefinition(BaseModel):
    """One node of the DAG: a module to run once every ``depends_on`` flowlet succeeded."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=FLOWLET_NAME_PATTERN)
    module_ref: str = Field(min_length=1, max_length=200)
    depends_on: tuple[str, ...] = ()
    input: dict[str, Any] | None = Field(
        default=None,
        description="Mapping given to the module; ${input.PATH} and ${flowlets.NAME.output.PATH} are replaced.",
    )
    timeout: DurationMs = Field(default=DEFAULT_TIMEOUT_MS, description="Per attempt; at most 1h.")
    retry: RetryPolicy = RetryPolicy()
    defer_after_ms: int | None = Field(
        default=None, ge=0, le=MAX_TIMEOUT_MS, description="Run on a background channel after this delay."
    )
    description: str | None = None


class FlowDefinition(BaseModel):
    """A named, versioned DAG of flowlets."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=NAME_PATTERN)
    version: int = Field(default=1, ge=1)
    description: str | None = None
    flowlets: tuple[FlowletDefinition, ...] = Field(min_length=1, max_length=10_000)

    # -- derived, cached views of the graph (pure functions of the fields above) --

    @cached_property
    def by_name(self) -> dict[str, FlowletDefinition]:
        return {f.name: f for f in self.flowlets}

    @cached_property
    def dependents(self) -> dict[str, tuple[str, ...]]:
        out: dict[str, list[str]] = {f.name: [] for f in self.flowlets}
        for f in self.flowlets:
            for dep in f.depends_on:
                out[dep].append(f.name)
        return {k: tuple(v) for k, v in out.items()}

    @cached_property
    def roots(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.flowlets if not f.depends_on)

    @cached_property
    def sinks(self) -> tuple[str, ...]:
        """Flowlets nothing depends on: their outputs make the play's output."""
        return tuple(name for name, deps in self.dependents.items() if not deps)

    def check(self, known_modules: Collection[str] | None = None, limits: Limits = DEFAULT_LIMITS) -> FlowDefinition:
        """Validate the graph; raise ``InvalidFlow`` listing every problem found.

        Linear in flowlets and edges, but for the ancestor test of template references,
        which costs a bit-set union per edge (a 10,000-flowlet chain: about 0.3 s). The graph
        part is done once per definition object and limits: a host that caches its flows
        (the catalog's TTL cache, per company, flow and version) checks each once.
        """
        # like the cached properties, kept in __dict__: not a field, so equality ignores it
        if self.__dict__.get("graph_checked_under") != limits:
            if len(self.flowlets) > limits.max_flowlets:
                raise InvalidFlow(
                    self.name,
                    [f"{len(self.flowlets)} flowlets, over the limit of {limits.max_flowlets} (limits.max_flowlets)"],
                )
            errors = _graph_errors(self)
            if errors:
                raise InvalidFlow(self.name, errors)
            self.__dict__["graph_checked_under"] = limits
        if known_modules is not None:
            unknown = [f for f in self.flowlets if f.module_ref not in known_modules]
            if unknown:
                names = ", ".join(f"flowlet {f.name!r} uses module {f.module_ref!r}" for f in unknown)
                raise UnknownModule(
                    f"flow {self.name!r}: unknown module: {names}. Known modules: {', '.join(sorted(known_modules))}."
                )
        return self


def _graph_errors(flow: FlowDefinition) -> list[str]:
    errors: list[str] = []
    seen: set[str] = set()
    for f in flow.flowlets:
        if f.name in seen:
            errors.append(f"flowlet {f.name!r} is defined more than once")
        seen.add(f.name)
        if f.timeout > MAX_TIMEOUT_MS:
            errors.append(f"flowlet {f.name!r}: timeout {format_duration_ms(f.timeout)} is above the maximum of 1h")
        for dep in f.depends_on:
            if dep == f.name:
                errors.append(f"flowlet {f.name!r} depends on itself")
            elif dep not in flow.by_name:
                errors.append(f"flowlet {f.name!r} depends on unknown flowlet {dep!r}")
        if len(set(f.depends_on)) != len(f.depends_on):
            errors.append(f"flowlet {f.name!r} lists a dependency twice")
    if errors:
        return errors
    cycle = _find_cycle(flow)
    if cycle:
        return [f"cycle: {' -> '.join(cycle)}"]
    referencing: list[tuple[FlowletDefinition, list[templating.Reference]]] = []
    for f in flow.flowlets:
        if f.input is None:
            continue
        try:
            refs = templating.references(f.input)
        except templating.TemplateError as exc:
            errors.append(f"flowlet {f.name!r}: {exc}")
            continue
        if any(ref.flowlet is not None for ref in refs):
            referencing.append((f, refs))
    if not referencing:
        return errors
    index, ancestors = _ancestors(flow)
    for f, refs in referencing:
        for ref in refs:
            if ref.flowlet is None:
                continue
            position = index.get(ref.flowlet)
            if position is None or not (ancestors[f.name] >> position) & 1:
                what = "unknown flowlet" if ref.flowlet not in flow.by_name else "flowlet"
                errors.append(
                    f"flowlet {f.name!r}: {ref.text} refers to {what} {ref.flowlet!r}, "
                    "which is not one of its ancestors (add it to depends_on)"
                )
    return errors


def _find_cycle(flow: FlowDefinition) -> list[str] | None:
    sorter = graphlib.TopologicalSorter({f.name: f.depends_on for f in flow.flowlets})
    try:
        sorter.prepare()
    except graphlib.CycleError as exc:
        # graphlib gives the cycle as [a, b, ..., a] walking successors (each node is a
        # predecessor of the next): that is already the direction work flows, each
        # flowlet running before the next. Do not reverse it.
        path: list[str] = list(exc.args[1])
        return path
    return None


def _ancestors(flow: FlowDefinition) -> tuple[dict[str, int], dict[str, int]]:
    """Each flowlet's position, and its ancestors as a bit set over those positions."""
    index = {f.name: i for i, f in enumerate(flow.flowlets)}
    order = graphlib.TopologicalSorter({f.name: f.depends_on for f in flow.flowlets}).static_order()
    result: dict[str, int] = {}
    for name in order:
        acc = 0
        for dep in flow.by_name[name].depends_on:
            acc |= result[dep] | (1 << index[dep])
        result[name] = acc
    return index, result


def flowlet_name_ok(name: str) -> bool:
    return re.match(FLOWLET_NAME_PATTERN, name) is not None
