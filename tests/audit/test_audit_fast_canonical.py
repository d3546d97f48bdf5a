"""The fast path of ``jcs`` (orjson's sorted bytes, checked by literal searches) writes exactly what
the ``rfc8785`` library writes, on the RFC's vectors placed inside event documents and on event
documents whose payloads hold what the searches look for: integral floats, exponents, sixteen
digits, number-like text in strings, escaped quotes, non-ASCII text and keys past U+E000."""

from __future__ import annotations

import json
import struct
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flow8_streams.domain.canonical import jcs
from tests.audit.test_audit_canonical import APPENDIX_B, same_as_library


def _event(payload: Any, **more: Any) -> dict[str, Any]:
    """A document shaped like a stored event (timestamps, uuids, hex: text the searches pass over)."""
    return {
        "event_id": "dde80139-16ff-563c-8327-60fda9e7d66e",
        "play_id": "p-1",
        "company_id": "acme",
        "flow_id": "hello",
        "flow_version": 1,
        "seq": 3,
        "at": "2026-11-30T02:00:00.123000Z",
        "schema_version": 1,
        "hash_version": 2,
        "payload": payload,
        "type": "FlowletCompleted",
        **more,
    }


@pytest.mark.parametrize(("bits", "text"), APPENDIX_B)
def test_appendix_b_numbers_inside_an_event(bits: str, text: str) -> None:
    (value,) = struct.unpack(">d", bytes.fromhex(bits))
    doc = _event({"output": {"n": value, "list": [value, "1.0,", value]}, "started_at": "2026-11-30T02:00:01.5Z"})
    same_as_library(doc)
    assert f'"n":{text}}}'.encode() in jcs(doc)


def test_the_section_3_2_2_sample_inside_an_event() -> None:
    sample = json.loads(
        '{"numbers": [333333333.33333329, 1E30, 4.50, 2e-3, 0.000000000000000000000000001],'
        r' "string": "\u20ac$\u000F\u000aA' + "'" + r'\u0042\u0022\u005c\\\"\/",'
        ' "literals": [null, true, false]}'
    )
    same_as_library(_event({"output": sample}))


@pytest.mark.parametrize(
    "payload",
    [
        {"amount": 100.0, "rate": 0.2, "neg": -0.0, "list": [1.0, [2.0], {"x": 3.0}]},
        {"note": "version 1.0, then 2.0]", "amount": 5.0},  # X.0 inside a string, then a real one
        {"note": "ratio:1.0, list [2.0]", "amount": 5.0},  # X.0 after a ':' or '[' inside a string
        {"note": 'say "1.0," again', "amount": 5.0},  # an escaped quote before a real X.0
        {"a": 'say ":1.0," twice', "b": 5.0},  # an escaped quote that would flip the quote count
        {"path": "C:\\dir\\", "amount": 7.0},  # an escaped backslash before a quote
        {"n": 1e16, "m": 1.5e16, "s": 1.5e-6, "t": 1e-7, "u": 0.00001},
        {"long": 1234567890123456, "edge": 9007199254740991, "neg": -9007199254740991},
        {"past": [2.0**53, 2.0**53 + 2, -(2.0**53) - 2, 9999999999999998.0, 1234567890123456.5]},  # 16 digits
        {"text": "1234567890123456", "hex": "e-12,", "plus": "a+b"},  # what the searches see in strings
        {"big": 2**53},  # not I-JSON: refused by both
        {"big": [-(2**53)], "also": 2**64},
        {"name": "Zoë", "city": "Zürich", "yen": "¥", "x": 2.0},  # non-ASCII below U+E000
        {"\ue000": 1.0, "\U0001f600": 2, "é": [3.0]},  # keys whose UTF-16 order is not code-point order
        {"emoji": "\U0001f600", "private": "\ue000", "k": 1.0},  # such characters in values only
        {"ctrl": "\u0000\u001f\u007f\u2028", "k": [0.5, -1.0]},
    ],
)
def test_payloads_on_the_edges_of_the_searches(payload: dict[str, Any]) -> None:
    same_as_library(_event(payload))


# text made of what the searches and the quote count look at
edgy_text = st.text(alphabet=st.sampled_from(list('0123456789.e+-,]}[:{"\\ Zé€\ue000\U0001f600')), max_size=24)
edgy_floats = (
    st.floats(allow_nan=False, allow_infinity=False)
    | st.integers(min_value=-(2**60), max_value=2**60).map(float)
    | st.integers(min_value=2**53, max_value=10**16).map(float)  # integral, sixteen digits, no exponent
    | st.sampled_from([0.0, -0.0, 1e16, 1e-6, 1.5e-6, 9.99e-6, 1e-5, 1e-7, 1e21, 2.0**53, 123.0])
)
edgy_ints = st.integers(min_value=-(2**53) + 1, max_value=2**53 - 1) | st.integers(min_value=10**15, max_value=10**17)
json_values = st.recursive(
    st.none() | st.booleans() | edgy_ints | edgy_floats | st.text(max_size=12) | edgy_text,
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=6) | edgy_text, children, max_size=5)
    ),
    max_leaves=30,
)
timestamps = st.datetimes().map(lambda t: t.isoformat(timespec="microseconds") + "Z")


@settings(max_examples=4000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(json_values, timestamps, st.uuids())
def test_event_documents_are_written_as_rfc8785_writes_them(payload: Any, at: str, event_id: Any) -> None:
    same_as_library(_event({"output": payload}, at=at, event_id=str(event_id)))


@settings(max_examples=2000, deadline=None)
@given(st.lists(json_values, max_size=4) | st.dictionaries(edgy_text, json_values, max_size=4))
def test_any_container_is_written_as_rfc8785_writes_it(value: Any) -> None:
    same_as_library(value)
