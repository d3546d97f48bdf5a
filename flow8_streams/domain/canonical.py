"""Canonical JSON for hashing and signing: RFC 8785 (JCS).

``jcs(value)`` is the RFC 8785 serialisation of a JSON value (``dict``/``list``/``str``/``int``/
``float``/``bool``/``None``): object keys sorted by their UTF-16 code units, no whitespace,
strings escaped as ECMAScript's ``JSON.stringify`` does, numbers as ECMAScript prints an IEEE
double. A value outside I-JSON (an integer beyond ±(2**53 - 1), a non-finite float) has no
canonical form: ``NotCanonical``.

orjson with sorted keys writes RFC 8785's bytes for strings, integers within ±(2**53 - 1), keys
below U+D800 (where UTF-16 and code-point order part) and floats, but for an integral float
(orjson ``2.0``, RFC 8785 ``2``), one of magnitude in [1e-6, 1e-5) (``1.5e-6``, ``0.0000015``)
and one from 1e16 on (``1e+16``, ``10000000000000000``). So ``jcs`` takes the first of:

1. orjson's output when it is ASCII, its number tokens checked: ``X.0`` is written ``X`` and
   a number-like text inside a string is told apart by the quotes before it (the fast path);
2. the value walked, integral floats up to 2**53 passed as ints, and dumped by orjson (a
   non-ASCII key, an escaped quote, an exponent path 1 does not rewrite);
3. the ``rfc8785`` library (a key at or past U+D800, an integral float past 2**53, a float in
   [1e-6, 1e-5), an integer past 2**53 - 1, which it refuses).
"""

from __future__ import annotations

import operator
import re
from typing import Any

import orjson
import rfc8785

MAX_SAFE_INTEGER = 2**53 - 1
_PLAIN = frozenset({str, bool, int, type(None)})  # what orjson writes as RFC 8785 does (ints: see jcs)
# sixteen digits in an object or array: an integer that may be past 2**53 - 1 (or such text in
# a string: it only sends the value down a slower exact path)
_LONG_INTEGER = re.compile(rb"[:,\[]-?\d{16}")
# a number token as orjson writes one, and what stands around it in an object or array
_FLOAT = re.compile(rb"-?\d+(?:\.\d+)?(?:e[+-]\d+)?")
_ZEROS = bytes.maketrans(b"123456789", b"000000000")
_DIGIT_OR_MINUS = frozenset(b"0-")
_BEFORE_NUMBER = frozenset(b":,[")
_AFTER_NUMBER = (b",", b"]", b"}")
MAX_TOKENS = 64  # more floats than this in one value: walked instead of counting quotes for each


class NotCanonical(ValueError):
    """A value RFC 8785 cannot serialise."""


class _Library(Exception):
    """The value holds something orjson writes unlike RFC 8785."""


def _float(value: float) -> float | int:
    if value.is_integer():
        if -(2**53) <= value <= 2**53:  # past it ECMAScript pads the shortest digits with zeros
            return int(value)
        raise _Library
    if 1e-6 <= abs(value) < 1e-5:
        raise _Library
    return value  # a NaN or an infinity never comes from JSON; the library refuses one


def _for_orjson(value: Any) -> Any:
    """``value`` with integral floats as ints, or ``_Library`` if orjson cannot write it as RFC 8785."""
    kind = type(value)
    if kind is dict:
        if not all(map(str.isascii, value)) and any(max(k, default="") >= "\ud800" for k in value):
            raise _Library
        if _PLAIN.issuperset(map(type, value.values())):
            return value
        changed: dict[str, Any] | None = None
        for key, item in value.items():
            if type(item) in _PLAIN:
                continue
            new = _for_orjson(item)
            if new is not item:
                if changed is None:
                    changed = dict(value)
                changed[key] = new
        return value if changed is None else changed
    if kind is list:
        if _PLAIN.issuperset(map(type, value)):
            return value
        items = [item if type(item) in _PLAIN else _for_orjson(item) for item in value]
        return value if all(map(operator.is_, items, value)) else items
    if kind is float:
        return _float(value)
    if kind in _PLAIN:
        return value
    raise _Library


def _fix_numbers(out: bytes) -> bytes | None:
    """orjson's ASCII output of an object or array in RFC 8785's form: each integral float
    ``X.0`` written ``X``; None if a number needs more (an exponent of +, or -6; an integer past
    2**53 - 1) or quotes cannot tell a number from a string (an escaped quote).

    Found with bytes.find on a copy whose digits are all ``0`` (a regex scan costs more): a
    float has a digit before a ``.`` or an ``e``; sixteen digits in a row may be a long integer."""
    digits = out.translate(_ZEROS)
    if b"0000000000000000" in digits:
        return None
    starts: list[int] = []
    for marker in (b"0.", b"0e"):
        at = digits.find(marker)
        while at != -1:
            starts.append(at)
            at = digits.find(marker, at + 2)
    if not starts:
        return out
    if len(starts) > MAX_TOKENS or b'\\"' in out:  # an escaped quote: the quote count does not hold
        return None
    pieces: list[bytes] = []
    last = seen = 0  # end of the last rewritten token, of the last token read
    for at in sorted(starts):
        if at < seen or out.count(b'"', 0, at) & 1:
            continue  # inside a token read already, or inside a string (a timestamp's seconds)
        start = at
        while start > 0 and digits[start - 1] in _DIGIT_OR_MINUS:
            start -= 1
        if out[start - 1] not in _BEFORE_NUMBER:
            return None
        token = _FLOAT.match(out, start)
        if token is None or out[token.end() : token.end() + 1] not in _AFTER_NUMBER:
            return None
        seen, text = token.end(), token.group()
        if b"e" in text:
            if b"e-" in text and not text.endswith(b"e-6"):
                continue  # under 1e-6: written alike
            return None
        if text.endswith(b".0"):
            whole = text[:-2]
            pieces += (out[last:start], b"0" if whole == b"-0" else whole)
            last = seen
    return b"".join((*pieces, out[last:])) if pieces else out


def jcs(value: Any) -> bytes:
    """The RFC 8785 canonical bytes of ``value``; ``NotCanonical`` if it has none."""
    try:
        container = type(value) is dict or type(value) is list
        out = orjson.dumps(value, option=orjson.OPT_SORT_KEYS)
        if container and out.isascii():  # every key ASCII: only numbers may need rewriting
            fixed = _fix_numbers(out)
            if fixed is not None:
                return fixed
        prepared = _for_orjson(value)
        if container:
            out = orjson.dumps(prepared, option=orjson.OPT_SORT_KEYS)
            if _LONG_INTEGER.search(out) is None:
                return out
    except (
        _Library,
        orjson.JSONEncodeError,
        TypeError,
        RecursionError,
    ):  # orjson: a lone surrogate; the library decides
        pass
    try:
        return rfc8785.dumps(value)
    except (rfc8785.CanonicalizationError, UnicodeError, TypeError, RecursionError) as exc:
        raise NotCanonical(str(exc)) from None
