"""``flow8_streams.domain.bounded``: decoding outside bytes within the limits. Pure functions, no I/O."""

from __future__ import annotations

import datetime
import json
import resource
import time
from typing import Any

import pytest

from flow8_streams.domain.bounded import (
    NotJson,
    TooDeep,
    TooLarge,
    TooManyAliases,
    check_depth,
    check_json_value,
    decode_json,
    load_yaml,
)
from flow8_streams.domain.limits import Limits
from flow8_streams.errors import InvalidInput

LIMITS = Limits()


def nested(depth: int) -> Any:
    value: Any = 1
    for i in range(depth):
        value = [value] if i % 2 else {"k": value}
    return value


# ---------------------------------------------------------------- depth


@pytest.mark.parametrize("depth", [0, 1, 63, 64])
def test_depth_up_to_the_limit_is_accepted(depth: int) -> None:
    value = nested(depth)
    check_depth(value, 64)
    check_json_value(value, LIMITS)
    assert decode_json(json.dumps(value), LIMITS) == value
    assert load_yaml(json.dumps(value), LIMITS) == value


@pytest.mark.parametrize("depth", [65, 1000, 1100, 5000])
def test_depth_over_the_limit_is_refused_by_every_decoder(depth: int) -> None:
    text = "[" * depth + "]" * depth  # orjson's own bound is 1024: both sides of it

    with pytest.raises(TooDeep, match="input nests deeper than the limit of 64"):
        decode_json(text, LIMITS, "input")
    with pytest.raises(TooDeep, match="input nests deeper than the limit of 64"):
        load_yaml(text, LIMITS, "input")
    with pytest.raises(TooDeep, match="deeper than the limit of 64"):
        check_depth(nested(depth), 64)


def test_check_depth_does_not_recurse() -> None:
    value = nested(100_000)  # far past Python's recursion limit
    with pytest.raises(TooDeep):
        check_depth(value, 64)


def test_a_yaml_self_reference_is_refused_not_followed() -> None:
    with pytest.raises(InvalidInput, match="deeper than the limit"):
        load_yaml("a: &a [*a]\n", LIMITS, "doc")


# ---------------------------------------------------------------- size and aliases


def test_size_is_checked_before_parsing() -> None:
    limits = Limits(max_message_bytes=1024)
    with pytest.raises(TooLarge, match=r"input is larger than the limit of 1024 bytes \(1025 bytes\)"):
        decode_json(b" " * 1025, limits, "input")
    with pytest.raises(TooLarge, match="larger than the limit of 10 bytes"):
        decode_json('"' + "x" * 20 + '"', limits, "input", max_bytes=10)
    assert decode_json(b'"' + b"x" * 8 + b'"', limits, "input", max_bytes=10) == "x" * 8


def laughs(levels: int, fan: int) -> str:
    lines = ['l0: &l0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    lines += [f"l{n}: &l{n} [" + ", ".join([f"*l{n - 1}"] * fan) + "]" for n in range(1, levels)]
    return "\n".join(lines) + "\n"


def test_billion_laughs_is_refused_fast_and_in_bounded_memory() -> None:
    document = laughs(9, 9)  # 72 aliases (under 100), 9^9 "lol"s expanded
    assert len(document) < 1024
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.perf_counter()

    with pytest.raises(TooLarge, match="once its aliases are expanded"):
        load_yaml(document, LIMITS, "flow")

    assert time.perf_counter() - started < 2.0
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 50 * 1024  # KiB: under 50 MB more


def test_aliases_are_counted_while_composing() -> None:
    document = "a: &a x\nb: [" + ", ".join(["*a"] * 101) + "]\n"
    with pytest.raises(TooManyAliases, match=r"more YAML aliases .* than the limit of 100"):
        load_yaml(document, LIMITS, "doc")
    assert load_yaml(document, Limits(max_yaml_aliases=101), "doc")["b"] == ["x"] * 101
    with pytest.raises(TooManyAliases, match="limit of 0"):
        load_yaml("a: &a 1\nb: *a\n", Limits(max_yaml_aliases=0), "doc")


# ---------------------------------------------------------------- values JSON cannot carry


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ("t: .inf", "doc at t: inf is not a finite number"),
        ("t: -.inf", "doc at t: -inf is not a finite number"),
        ("t: .nan", "doc at t: nan is not a finite number"),
        ('t: ["ok", "\\ud800"]', r"doc at t.1: the text holds a lone surrogate \(U\+D800\)"),
        ('"\\udc80": 1', "lone surrogate"),
        ("t: 2024-01-01", "doc at t: a date is not a JSON value"),
        ("t: 2024-01-01T00:00:00Z", "doc at t: a datetime is not a JSON value"),
        ("t: !!binary aGk=", "doc at t: a bytes is not a JSON value"),
        ("t: !!set {a, b}", "doc at t: a set is not a JSON value"),
        ("1: x", "the key 1 is not a string"),
        ("t: 123456789012345678901234567890", "outside the 64-bit range"),
        ("t: !!python/object:os.system x", "not valid YAML"),
        ("t: [unclosed", "not valid YAML"),
    ],
)
def test_yaml_values_json_cannot_carry_are_refused(document: str, message: str) -> None:
    with pytest.raises(NotJson, match=message):
        load_yaml(document, LIMITS, "doc")


@pytest.mark.parametrize("text", ["NaN", "Infinity", "1e400", '"\\ud800"', "{", ""])
def test_json_that_is_not_json_is_refused(text: str) -> None:
    with pytest.raises(NotJson, match="input is not valid JSON"):
        decode_json(text, LIMITS, "input")


def test_text_that_is_not_utf8_is_refused() -> None:
    with pytest.raises(NotJson, match="not valid UTF-8"):
        decode_json('"\udcff"', LIMITS, "input")  # what surrogateescape makes of a stray byte in argv
    with pytest.raises(NotJson, match="not valid UTF-8"):
        load_yaml(b"a: \xff\n", LIMITS, "input")


def test_errors_are_invalid_input() -> None:
    for error in (NotJson, TooDeep, TooLarge, TooManyAliases):
        assert issubclass(error, InvalidInput)


def test_what_passes_is_plain_json() -> None:
    value = load_yaml("a: [1, 2.5, true, null, 'x']\nb: {c: d}\n", LIMITS)
    assert value == {"a": [1, 2.5, True, None, "x"], "b": {"c": "d"}}
    assert not isinstance(value["a"][0], datetime.date)
