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

orjson is asked to refuse an integer past ±(2**53 - 1) (``OPT_STRICT_INTEGER``), so such a value
always reaches the library, which refuses it.

1. orjson's output when no key can sort differently (ASCII, or no character from U+E000 on)
   and a few literal searches show no number that needs more than ``X.0`` written ``X`` (the
   fast path; a number-like text inside a string is told apart by the quotes before it);
2. the value walked, integral floats up to 2**53 passed as ints, and dumped by orjson (a key
   past U+E000, an escape, an exponent, in a number or a string);
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
# what orjson writes unlike RFC 8785, each found by a search for a literal (the fastest scan re
# and bytes offer): an integral float ``X.0``; an exponent, ``1e+16`` or ``1.5e-6`` (``1e-7`` is
# alike, but rare enough to take the walk); a character from U+E000 on (its UTF-8 lead byte),
# which may be in a key
_INTEGRAL_FLOAT = re.compile(rb"\.0[,\]}]")
_NEGATIVE_EXPONENT = re.compile(rb"e-\d{1,3}[,\]}]")
_PAST_U_E000 = re.compile(rb"[\xee-\xf4]")
_DIGIT_OR_MINUS = frozenset(b"0123456789-")
_BEFORE_NUMBER = frozenset(b":,[")
_OPTIONS = orjson.OPT_SORT_KEYS | orjson.OPT_STRICT_INTEGER


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
    """orjson's output of an object or array in RFC 8785's form: each integral float ``X.0``
    written ``X``; None if a number may need more (an exponent) or quotes cannot tell a number
    from a string (an escape)."""
    if b"+" in out or _NEGATIVE_EXPONENT.search(out) is not None:
        return None
    found = _INTEGRAL_FLOAT.search(out)
    if found is None:
        return out
    if b"\\" in out:  # an escaped quote would break the quote count
        return None
    pieces: list[bytes] = []
    last = counted = quotes = 0  # end of the last rewritten token; quotes in out[:counted]
    for match in _INTEGRAL_FLOAT.finditer(out, found.start()):
        at = match.start()
        quotes += out.count(b'"', counted, at)
        counted = at
        if quotes & 1:
            continue  # inside a string ("version 1.0, ...")
        start = at
        while out[start - 1] in _DIGIT_OR_MINUS:
            start -= 1
        if start == at or out[start - 1] not in _BEFORE_NUMBER:
            return None
        whole = out[start:at]
        pieces += (out[last:start], b"0" if whole == b"-0" else whole)
        last = at + 2
    return b"".join((*pieces, out[last:])) if pieces else out


def jcs(value: Any) -> bytes:
    """The RFC 8785 canonical bytes of ``value``; ``NotCanonical`` if it has none."""
    try:
        container = type(value) is dict or type(value) is list
        out = orjson.dumps(value, option=_OPTIONS)
        if container and (out.isascii() or _PAST_U_E000.search(out) is None):  # keys sort alike
            fixed = _fix_numbers(out)
            if fixed is not None:
                return fixed
        prepared = _for_orjson(value)
        if container:
            return orjson.dumps(prepared, option=_OPTIONS)
    except (
        _Library,
        orjson.JSONEncodeError,
        TypeError,
        RecursionError,
    ):  # orjson: a lone surrogate, an integer past 2**53 - 1; the library decides
        pass
    try:
        return rfc8785.dumps(value)
    except (rfc8785.CanonicalizationError, UnicodeError, TypeError, RecursionError) as exc:
        raise NotCanonical(str(exc)) from None
