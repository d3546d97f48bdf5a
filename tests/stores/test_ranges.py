"""``prefix_end``: the upper bound of a listing by prefix, checked against every string it bounds."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from flow8_streams.stores.ranges import MAX_CHAR, prefix_end

text = st.text(st.characters(exclude_categories=["Cs"]), max_size=6)


def test_known_bounds() -> None:
    assert prefix_end("") is None
    assert prefix_end("a/") == "a0"
    assert prefix_end("ab") == "ac"
    assert prefix_end("a" + chr(MAX_CHAR)) == "b"
    assert prefix_end(chr(MAX_CHAR) * 2) is None
    assert prefix_end("\ud7ff") == "\ue000"  # over the surrogates, which no stored string holds


@given(text, text)
def test_a_string_is_below_the_end_exactly_when_it_starts_with_the_prefix_or_sorts_before(
    prefix: str, rest: str
) -> None:
    end = prefix_end(prefix)
    assert end is None or prefix + rest < end
    if end is not None:
        assert not end.startswith(prefix)


@given(text, text)
def test_a_string_in_the_range_starts_with_the_prefix(prefix: str, other: str) -> None:
    end = prefix_end(prefix)
    if prefix <= other and (end is None or other < end):
        assert other.startswith(prefix)
