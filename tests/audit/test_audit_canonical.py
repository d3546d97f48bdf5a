"""Canonical form v2: RFC 8785 (JCS) bytes, the event hash over them, and v1 histories still verifying."""

from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path
from typing import Any

import pytest
import rfc8785
from hypothesis import given, settings
from hypothesis import strategies as st

from flow8_streams.audit.verify import PlayHistory, verify
from flow8_streams.domain import events as ev
from flow8_streams.domain.canonical import NotCanonical, jcs
from flow8_streams.domain.flow import FlowDefinition
from flow8_streams.domain.messages import FlowletResult, Start
from flow8_streams.engine import decide, fold

DATA = Path(__file__).parent / "data"
T0 = "2026-11-30T02:00:00+00:00"


def test_rfc8785_sample_of_section_3_2_2() -> None:
    data = json.loads(
        '{"numbers": [333333333.33333329, 1E30, 4.50, 2e-3, 0.000000000000000000000000001],'
        r' "string": "\u20ac$\u000F\u000aA' + "'" + r'\u0042\u0022\u005c\\\"\/",'
        ' "literals": [null, true, false]}'
    )
    expected = (
        '{"literals":[null,true,false],"numbers":[333333333.3333333,1e+30,4.5,0.002,1e-27],'
        r'"string":"€$\u000f\nA' + "'" + r'B\"\\\\\"/"}'
    )
    assert jcs(data) == expected.encode()


def test_rfc8785_sorting_of_section_3_2_3() -> None:
    data = json.loads(
        r'{"\u20ac": "Euro Sign", "\r": "Carriage Return", "\ufb33": "Hebrew Letter Dalet With Dagesh",'
        r' "1": "One", "\ud83d\ude00": "Emoji: Grinning Face", "\u0080": "Control",'
        r' "\u00f6": "Latin Small Letter O With Diaeresis"}'
    )
    keys = list(json.loads(jcs(data)))
    assert keys == ["\r", "1", "\u0080", "\u00f6", "\u20ac", "\U0001f600", "\ufb33"]


# RFC 8785 appendix B: IEEE 754 bit patterns and their canonical text
APPENDIX_B = [
    ("0000000000000000", "0"),
    ("8000000000000000", "0"),
    ("0000000000000001", "5e-324"),
    ("8000000000000001", "-5e-324"),
    ("7fefffffffffffff", "1.7976931348623157e+308"),
    ("ffefffffffffffff", "-1.7976931348623157e+308"),
    ("4340000000000000", "9007199254740992"),
    ("c340000000000000", "-9007199254740992"),
    ("4430000000000000", "295147905179352830000"),
    ("44b52d02c7e14af5", "9.999999999999997e+22"),
    ("44b52d02c7e14af6", "1e+23"),
    ("44b52d02c7e14af7", "1.0000000000000001e+23"),
    ("444b1ae4d6e2ef4e", "999999999999999700000"),
    ("444b1ae4d6e2ef4f", "999999999999999900000"),
    ("444b1ae4d6e2ef50", "1e+21"),
    ("3eb0c6f7a0b5ed8c", "9.999999999999997e-7"),
    ("3eb0c6f7a0b5ed8d", "0.000001"),
    ("41b3de4355555553", "333333333.3333332"),
    ("41b3de4355555554", "333333333.33333325"),
    ("41b3de4355555555", "333333333.3333333"),
    ("41b3de4355555556", "333333333.3333334"),
    ("41b3de4355555557", "333333333.33333343"),
    ("becbf647612f3696", "-0.0000033333333333333333"),
    ("43143ff3c1cb0959", "1424953923781206.2"),
]


@pytest.mark.parametrize(("bits", "text"), APPENDIX_B)
def test_rfc8785_numbers_of_appendix_b(bits: str, text: str) -> None:
    (value,) = struct.unpack(">d", bytes.fromhex(bits))
    assert jcs([value]) == f"[{text}]".encode()


def test_a_value_outside_i_json_has_no_canonical_form() -> None:
    with pytest.raises(NotCanonical):
        jcs({"n": 2**53})
    assert jcs({"n": 2**53 - 1}) == b'{"n":9007199254740991}'


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**53) + 1, max_value=2**53 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=4),
    max_leaves=20,
)


def same_as_library(value: Any) -> None:
    """``jcs(value)`` is ``rfc8785``'s bytes, or refused where the library refuses it."""
    try:
        expected = rfc8785.dumps(value)
    except (rfc8785.CanonicalizationError, UnicodeError):
        with pytest.raises(NotCanonical):
            jcs(value)
        return
    assert jcs(value) == expected


@settings(max_examples=3000, deadline=None)
@given(json_values)
def test_the_fast_path_writes_what_rfc8785_writes(value: Any) -> None:
    same_as_library(value)


def test_the_worked_example_of_schemas_hashing_md() -> None:
    text = (Path(__file__).parents[2] / "schemas" / "hashing.md").read_text()
    stored = json.loads(text.split("```json\n")[1].split("\n```")[0])
    canonical = text.split("Its canonical bytes")[1].split("```\n")[1].removesuffix("\n")
    event = ev.event_adapter.validate_python(stored)
    assert event.hash_version == 2
    assert event.canonical() == canonical.encode() and len(canonical.encode()) == 295
    previous = "3f0a" + "0" * 60
    assert hashlib.sha256(bytes.fromhex(previous) + canonical.encode()).hexdigest() == stored["hash"]
    assert event.expected_hash(previous) == stored["hash"]


FLOW = FlowDefinition.model_validate(
    {"name": "f", "flowlets": [{"name": "a", "module_ref": "echo"}, {"name": "b", "module_ref": "echo"}]}
)


def _play(output: Any) -> list[ev.Event]:
    from datetime import datetime

    now = datetime.fromisoformat(T0)
    events = decide(None, Start(play_id="p", company_id="acme", flow=FLOW, input={"x": 1.5}), now)
    state = fold(events)
    for name in ("a", "b"):
        assert state is not None
        more = decide(
            state,
            FlowletResult(
                play_id="p",
                company_id="acme",
                flowlet=name,
                attempt=1,
                ok=True,
                output=output,
                started_at=now,
                ended_at=now,
            ),
            now,
        )
        events += more
        state = fold(more, state)
    return events


def test_new_events_are_hashed_with_rfc8785() -> None:
    events = _play({"ratio": 1.0})
    assert {e.hash_version for e in events} == {2}
    assert ev.verify_chain(events) == []
    completed = next(e for e in events if e.type == "FlowletCompleted")
    assert b'"output":{"ratio":1}' in completed.canonical()  # 1.0 as ECMAScript prints it
    docs = [json.loads(ev.event_adapter.dump_json(e)) for e in events]
    assert verify(PlayHistory("p", "acme", docs)).ok


def test_an_event_whose_content_is_not_i_json_is_hashed_with_v1() -> None:
    events = _play({"big": 2**60})
    versions = {e.type: e.hash_version for e in events}
    assert versions["FlowletCompleted"] == 1 and versions["PlayStarted"] == 2
    assert versions["PlayCompleted"] == 1  # its output holds the big integer too
    assert ev.verify_chain(events) == []
    docs = [json.loads(ev.event_adapter.dump_json(e)) for e in events]
    assert verify(PlayHistory("p", "acme", docs)).ok


def test_a_history_written_with_v1_still_verifies() -> None:
    """Recorded by the engine before hash_version existed (no hash_version in the bodies)."""
    lines = (DATA / "v1-history.jsonl").read_bytes().splitlines()
    docs = [json.loads(line) for line in lines]
    assert all("hash_version" not in d for d in docs) and len(docs) == 11
    assert verify(PlayHistory("v1-play", "acme", docs)).ok
    events = [ev.event_adapter.validate_json(line) for line in lines]
    assert {e.hash_version for e in events} == {1}
    assert ev.verify_chain(events) == []
    # read and written again (now with "hash_version": 1), it verifies the same
    again = [json.loads(ev.event_adapter.dump_json(e)) for e in events]
    assert all(d["hash_version"] == 1 for d in again)
    assert verify(PlayHistory("v1-play", "acme", again)).ok
    # and an edit still shows, at its seq
    again[4]["payload"]["attempt"] = 7
    verdict = verify(PlayHistory("v1-play", "acme", again))
    assert [(f.kind, f.seq) for f in verdict.findings] == [("altered", 5)]


def test_an_unknown_hash_version_is_named_not_crashed_on() -> None:
    docs = [json.loads(ev.event_adapter.dump_json(e)) for e in _play("x")]
    docs[2]["hash_version"] = 3
    verdict = verify(PlayHistory("p", "acme", docs))
    assert [(f.kind, f.seq) for f in verdict.findings] == [("unknown_hash_version", 3)]


@pytest.mark.parametrize(
    "value",
    [
        0.0,
        -0.0,
        [2.0, -3.0, 1e15, 2.0**53],
        {"r": 1.5e-6, "s": 1e-6, "t": 9.99e-6, "u": 1e-5, "v": 1e-7},
        [4.310813869902683e16, 1e21, 1e20, 123.456],
        {"s": "a:1234567890123456,b:2.0,[3e5"},  # number-like text inside a string
        {"a": "x:2.0,y", "b": 2.0, "c": ["[-3.0]", -3.0, 1.5e-7, "1e-6"], "d": {"e": 10.0}},  # parity of quotes
        {"t": "2026-11-30T02:00:00.000000Z", "u": "8e48-3e5a", "v": 0.5},
        {"n": 9007199254740991, "m": -9007199254740991},
        {"\U0001f600": 1, "\ue000": 2, "é": [1.0]},
    ],
)
def test_the_fast_path_on_the_edges_of_its_rules(value: Any) -> None:
    assert jcs(value) == rfc8785.dumps(value)


def test_a_value_nested_past_what_can_be_walked_has_no_canonical_form() -> None:
    """An archive line may nest as deep as the JSON parser allows: refused, never a crash."""
    value: Any = [1.5e-6]
    for _ in range(5000):
        value = [value]
    with pytest.raises(NotCanonical):
        jcs(value)
