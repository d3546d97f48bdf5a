"""Flow definitions: field validation (pydantic) and graph validation (``FlowDefinition.check``)."""

from __future__ import annotations

import itertools
import json
import re
from typing import Any

import pytest
from _helpers import fl, flow
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from flow8_streams.domain.flow import (
    DEFAULT_TIMEOUT_MS,
    FlowDefinition,
    FlowletDefinition,
    RetryPolicy,
    format_duration_ms,
    parse_duration_ms,
)
from flow8_streams.errors import InvalidFlow, InvalidInput, UnknownModule


def check_errors(definition: FlowDefinition) -> list[str]:
    with pytest.raises(InvalidFlow) as info:
        definition.check()
    assert info.value.flow == definition.name
    # the exception text carries every problem, so a CLI line shows them all
    for error in info.value.errors:
        assert error in str(info.value)
    return info.value.errors


# ------------------------------------------------------------------ valid flows


def test_valid_flow_checks_and_returns_itself() -> None:
    f = flow(fl("a"), fl("b", "a", input={"x": "${flowlets.a.output.x}", "y": "${input.y}"}))
    assert f.check() is f
    assert f.check(known_modules={"echo", "other"}) is f


def test_reference_to_transitive_ancestor_is_allowed() -> None:
    f = flow(fl("a"), fl("b", "a"), fl("c", "b", input={"v": "${flowlets.a.output}"}))
    assert f.check() is f


def test_invalid_flow_is_an_input_error() -> None:
    assert issubclass(InvalidFlow, InvalidInput)
    from flow8_streams.cli.errors import exit_code

    assert exit_code(InvalidFlow("f", ["bad"])) == 2


# ------------------------------------------------------------------ graph errors, each naming the flowlet


def test_duplicate_names() -> None:
    errors = check_errors(flow(fl("a"), fl("b", "a"), fl("a")))
    assert errors == ["flowlet 'a' is defined more than once"]


def test_unknown_dependency() -> None:
    errors = check_errors(flow(fl("a"), fl("b", "a", "ghost")))
    assert errors == ["flowlet 'b' depends on unknown flowlet 'ghost'"]


def test_self_dependency() -> None:
    errors = check_errors(flow(fl("a"), fl("loop", "a", "loop")))
    assert errors == ["flowlet 'loop' depends on itself"]


def test_dependency_listed_twice() -> None:
    errors = check_errors(flow(fl("a"), fl("b", "a", "a")))
    assert errors == ["flowlet 'b' lists a dependency twice"]


def test_every_problem_is_listed() -> None:
    errors = check_errors(flow(fl("a"), fl("a"), fl("b", "nope"), fl("c", "c")))
    assert errors == [
        "flowlet 'a' is defined more than once",
        "flowlet 'b' depends on unknown flowlet 'nope'",
        "flowlet 'c' depends on itself",
    ]


def _cycle_path(errors: list[str]) -> list[str]:
    assert len(errors) == 1, errors
    m = re.fullmatch(r"cycle: (\S+(?: -> \S+)+)", errors[0])
    assert m, errors[0]
    return m.group(1).split(" -> ")


def assert_run_order_cycle(definition: FlowDefinition, path: list[str]) -> None:
    """``path`` is a closed walk of the DAG in run order: each flowlet runs before the next,
    i.e. the next one lists it in ``depends_on``; no flowlet repeats but the first."""
    assert len(path) >= 3
    assert path[0] == path[-1]
    assert len(set(path[:-1])) == len(path) - 1
    for before, after in itertools.pairwise(path):
        assert before in definition.by_name[after].depends_on, f"{after!r} does not depend on {before!r} in {path}"


@pytest.mark.parametrize(
    ("flowlets", "members"),
    [
        ([fl("a", "b"), fl("b", "a")], {"a", "b"}),
        ([fl("a", "c"), fl("b", "a"), fl("c", "b")], {"a", "b", "c"}),
        # a cycle hanging off an acyclic part: only the cycle is printed
        ([fl("root"), fl("x", "root", "z"), fl("y", "x"), fl("z", "y"), fl("leaf", "z")], {"x", "y", "z"}),
    ],
)
def test_cycle_prints_a_closed_path_in_run_order(flowlets: list[dict[str, Any]], members: set[str]) -> None:
    definition = flow(*flowlets)
    path = _cycle_path(check_errors(definition))
    assert set(path) == members
    assert_run_order_cycle(definition, path)


def test_cycle_message_exact() -> None:
    # b runs after a, c after b, a after c: in run order the cycle reads a -> b -> c -> a
    errors = check_errors(flow(fl("a", "c"), fl("b", "a"), fl("c", "b")))
    assert len(errors) == 1
    path = _cycle_path(errors)
    rotations = {"a -> b -> c -> a", "b -> c -> a -> b", "c -> a -> b -> c"}
    assert " -> ".join(path) in rotations


@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_any_planted_cycle_is_reported_as_a_real_path(data: st.DataObject) -> None:
    n = data.draw(st.integers(2, 9), label="n")
    deps: dict[int, set[int]] = {0: set()}
    for i in range(1, n):
        deps[i] = set(data.draw(st.sets(st.integers(0, i - 1), max_size=3)))
    # plant a cycle: a chain lo -> k1 -> ... -> hi in run order, then make lo depend on hi
    lo = data.draw(st.integers(0, n - 2), label="lo")
    hi = data.draw(st.integers(lo + 1, n - 1), label="hi")
    middle = sorted(data.draw(st.sets(st.integers(lo + 1, hi), max_size=4)) - {hi}) if hi > lo + 1 else []
    chain = [lo, *middle, hi]
    for before, after in itertools.pairwise(chain):
        deps[after].add(before)
    deps[lo].add(hi)
    definition = flow(*(fl(f"n{i}", *(f"n{d}" for d in sorted(deps[i]))) for i in range(n)))
    assert_run_order_cycle(definition, _cycle_path(check_errors(definition)))


def test_reference_to_non_ancestor() -> None:
    definition = flow(fl("a"), fl("side"), fl("c", "a", input={"v": "${flowlets.side.output.v}"}))
    errors = check_errors(definition)
    assert errors == [
        "flowlet 'c': ${flowlets.side.output.v} refers to flowlet 'side', "
        "which is not one of its ancestors (add it to depends_on)"
    ]


def test_reference_to_descendant_and_to_itself() -> None:
    definition = flow(
        fl("a", input={"later": "${flowlets.b.output}"}),
        fl("b", "a", input={"me": "see ${flowlets.b.output}"}),
    )
    errors = check_errors(definition)
    assert len(errors) == 2
    assert errors[0].startswith("flowlet 'a': ${flowlets.b.output} refers to flowlet 'b'")
    assert errors[1].startswith("flowlet 'b': ${flowlets.b.output} refers to flowlet 'b'")


def test_reference_to_unknown_flowlet() -> None:
    errors = check_errors(flow(fl("a"), fl("b", "a", input={"deep": [{"v": "${flowlets.nobody.output}"}]})))
    assert errors == [
        "flowlet 'b': ${flowlets.nobody.output} refers to unknown flowlet 'nobody', "
        "which is not one of its ancestors (add it to depends_on)"
    ]


@pytest.mark.parametrize(
    "bad",
    ["${flowlets.a}", "${flowlets.a.out}", "${inputs.x}", "${}", "x ${flowlets..output} y", "${env.HOME}"],
)
def test_malformed_reference(bad: str) -> None:
    errors = check_errors(flow(fl("a"), fl("b", "a", input={"v": bad})))
    assert len(errors) == 1
    assert errors[0].startswith("flowlet 'b': ${")
    assert "is not a reference; use ${input.PATH} or ${flowlets.NAME.output.PATH}" in errors[0]


def test_unknown_module_names_flowlet_and_module() -> None:
    definition = flow(fl("a"), fl("b", "a", module_ref="nope"), fl("c", "a", module_ref="gone"))
    with pytest.raises(UnknownModule) as info:
        definition.check(known_modules={"echo", "http"})
    text = str(info.value)
    assert "flowlet 'b' uses module 'nope'" in text
    assert "flowlet 'c' uses module 'gone'" in text
    assert "flowlet 'a'" not in text
    assert "Known modules: echo, http." in text
    # without a module list only the graph is checked
    assert definition.check() is definition


def test_graph_errors_come_before_module_errors() -> None:
    with pytest.raises(InvalidFlow):
        flow(fl("a", module_ref="nope"), fl("a")).check(known_modules={"echo"})


# ------------------------------------------------------------------ timeouts and durations


def test_timeout_above_one_hour_is_rejected_by_check() -> None:
    definition = flow(fl("a", timeout="2h"), fl("b", "a", timeout="1h"))
    assert check_errors(definition) == ["flowlet 'a': timeout 2h is above the maximum of 1h"]
    assert flow(fl("a", timeout="3600s")).check().flowlets[0].timeout == 3_600_000
    assert check_errors(flow(fl("a", timeout="3601s"))) == ["flowlet 'a': timeout 3601s is above the maximum of 1h"]


@pytest.mark.parametrize("bad", ["0s", "-5s", 0, -1, "0ms", "0.4ms", 0.0001])
def test_zero_or_negative_timeout_is_rejected(bad: Any) -> None:
    with pytest.raises(ValidationError, match="positive duration"):
        FlowletDefinition(name="a", module_ref="m", timeout=bad)


@pytest.mark.parametrize("bad", ["5 parsecs", "soon", "", "ms", True, None, [5]])
def test_bad_duration_is_rejected(bad: Any) -> None:
    with pytest.raises(ValidationError, match="is not a duration"):
        FlowletDefinition(name="a", module_ref="m", timeout=bad)


def test_bad_duration_message_says_how_to_write_one() -> None:
    with pytest.raises(ValidationError) as info:
        flow(fl("a", timeout="5 parsecs"))
    assert "'5 parsecs' is not a duration; write it like 500ms, 30s, 5m or 1h" in str(info.value)


@pytest.mark.parametrize(
    ("text", "ms", "back"),
    [
        ("500ms", 500, "500ms"),
        ("30s", 30_000, "30s"),
        ("5m", 300_000, "5m"),
        ("1h", 3_600_000, "1h"),
        ("1500ms", 1_500, "1500ms"),
        ("1.5s", 1_500, "1500ms"),
        ("90s", 90_000, "90s"),
        ("120s", 120_000, "2m"),
        ("60m", 3_600_000, "1h"),
        (" 30s ", 30_000, "30s"),
        (30, 30_000, "30s"),  # a bare number is seconds
        (0.25, 250, "250ms"),
    ],
)
def test_duration_parses_to_ms_and_serializes_back(text: Any, ms: int, back: str) -> None:
    assert parse_duration_ms(text) == ms
    assert format_duration_ms(ms) == back
    definition = FlowletDefinition(name="a", module_ref="m", timeout=text)
    assert definition.timeout == ms
    assert definition.model_dump(mode="json")["timeout"] == back
    assert FlowletDefinition.model_validate_json(definition.model_dump_json()).timeout == ms


def test_default_timeout() -> None:
    definition = FlowletDefinition(name="a", module_ref="m")
    assert definition.timeout == DEFAULT_TIMEOUT_MS == 300_000
    assert definition.model_dump(mode="json")["timeout"] == "5m"


# ------------------------------------------------------------------ field validation


@pytest.mark.parametrize(
    "document",
    [
        {"name": "f", "flowlets": [{"name": "a", "module_ref": "m"}], "owner": "x"},
        {"name": "f", "flowlets": [{"name": "a", "module_ref": "m", "retries": 3}]},
        {"name": "f", "flowlets": [{"name": "a", "module_ref": "m", "retry": {"max_attempts": 2, "jitter": True}}]},
    ],
)
def test_unknown_fields_are_rejected(document: dict[str, Any]) -> None:
    with pytest.raises(ValidationError, match="Extra inputs are not permitted"):
        FlowDefinition.model_validate(document)


@pytest.mark.parametrize(
    "document",
    [
        {"name": "f", "flowlets": []},
        {"name": "bad name", "flowlets": [{"name": "a", "module_ref": "m"}]},
        {"name": "f", "flowlets": [{"name": "a.b", "module_ref": "m"}]},
        {"name": "f", "flowlets": [{"name": "a", "module_ref": ""}]},
        {"name": "f", "version": 0, "flowlets": [{"name": "a", "module_ref": "m"}]},
        {"name": "f", "flowlets": [{"name": "a", "module_ref": "m", "retry": {"max_attempts": 0}}]},
        {"name": "f", "flowlets": [{"name": "a", "module_ref": "m", "retry": {"multiplier": 0.5}}]},
        {"name": "f", "flowlets": [{"name": "a", "module_ref": "m", "input": ["not", "a", "mapping"]}]},
    ],
)
def test_field_constraints(document: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        FlowDefinition.model_validate(document)


def test_definitions_are_frozen() -> None:
    definition = flow(fl("a"))
    with pytest.raises(ValidationError):
        definition.name = "other"  # type: ignore[misc]


def test_backoff_grows_by_multiplier_and_is_capped() -> None:
    policy = RetryPolicy(max_attempts=5, backoff_ms=100, multiplier=3, max_backoff_ms=1_000)
    assert [policy.backoff_for(n) for n in (1, 2, 3, 4)] == [100, 300, 900, 1_000]


# ------------------------------------------------------------------ round trip and derived views

FULL_JSON = """
{
  "name": "orders.v2",
  "version": 3,
  "description": "two steps",
  "flowlets": [
    {"name": "fetch", "module_ref": "http.get", "depends_on": [], "input": {"url": "${input.url}"},
     "timeout": "30s", "retry": {"max_attempts": 3, "backoff_ms": 500, "multiplier": 2.0, "max_backoff_ms": 60000},
     "defer_after_ms": null, "description": null},
    {"name": "store", "module_ref": "kv.set", "depends_on": ["fetch"],
     "input": {"key": "k-${input.id}", "value": "${flowlets.fetch.output.body}", "tags": ["a", 1, null]},
     "timeout": "1500ms", "retry": {"max_attempts": 1, "backoff_ms": 200, "multiplier": 2.0, "max_backoff_ms": 60000},
     "defer_after_ms": 1000, "description": "persist"}
  ]
}
"""


def test_round_trip_json_model_json() -> None:
    model = FlowDefinition.model_validate_json(FULL_JSON)
    assert model.check() is model
    assert json.loads(model.model_dump_json()) == json.loads(FULL_JSON)
    again = FlowDefinition.model_validate_json(model.model_dump_json())
    assert again == model
    assert again.model_dump_json() == model.model_dump_json()
    # python-mode dump validates back too (durations are serialized as text in both modes)
    assert FlowDefinition.model_validate(model.model_dump()) == model


def test_round_trip_fills_defaults() -> None:
    model = FlowDefinition.model_validate_json('{"name": "f", "flowlets": [{"name": "a", "module_ref": "m"}]}')
    dumped = json.loads(model.model_dump_json())
    assert dumped == {
        "name": "f",
        "version": 1,
        "description": None,
        "flowlets": [
            {
                "name": "a",
                "module_ref": "m",
                "depends_on": [],
                "input": None,
                "timeout": "5m",
                "retry": {"max_attempts": 1, "backoff_ms": 200, "multiplier": 2.0, "max_backoff_ms": 60000},
                "defer_after_ms": None,
                "description": None,
            }
        ],
    }
    assert FlowDefinition.model_validate(dumped) == model


def test_roots_sinks_dependents() -> None:
    definition = flow(fl("a"), fl("b", "a"), fl("c", "a"), fl("d", "b", "c"), fl("lone"))
    assert definition.roots == ("a", "lone")
    assert definition.sinks == ("d", "lone")
    assert definition.dependents == {"a": ("b", "c"), "b": ("d",), "c": ("d",), "d": (), "lone": ()}
    assert set(definition.by_name) == {"a", "b", "c", "d", "lone"}


def test_single_flowlet_is_root_and_sink() -> None:
    definition = flow(fl("only"))
    assert definition.roots == definition.sinks == ("only",)
