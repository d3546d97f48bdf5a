"""Canonical JSON for hashing and signing: RFC 8785 (JCS).

``jcs(value)`` is the RFC 8785 serialisation of a JSON value (``dict``/``list``/``str``/``int``/
``float``/``bool``/``None``): object keys sorted by their UTF-16 code units, no whitespace,
strings escaped as ECMAScript's ``JSON.stringify`` does, numbers as ECMAScript prints an IEEE
double. A value outside I-JSON (an integer beyond ±(2**53 - 1), a non-finite float) has no
canonical form: ``NotCanonical``.

orjson with sorted keys writes RFC 8785's bytes for strings, integers within ±(2**53 - 1) (its
output is searched for a number of sixteen digits instead of checking each integer), keys below
U+D800 (where UTF-16 and code-point order part) and every float but three kinds: an
integral one up to 2**53 (orjson ``2.0``, RFC 8785 ``2``), passed to it as the equal ``int``;
an integral one past 2**53 (RFC 8785 pads its shortest digits with zeros) and one of magnitude
in [1e-6, 1e-5) (orjson ``1.5e-6``, RFC 8785 ``0.0000015``). A value with one of those or a key
at or past U+D800 goes to the ``rfc8785`` library instead; nearly every event takes the orjson
path, and one whose orjson output has no float token and only ASCII is not walked at all.
"""

from __future__ import annotations

import operator
import re
from typing import Any

import orjson
import rfc8785

MAX_SAFE_INTEGER = 2**53 - 1
_PLAIN = frozenset({str, bool, int, type(None)})  # what orjson writes as RFC 8785 does (ints: see jcs)
# a number token (or a string that looks like one): sixteen digits (an integer that may be past
# 2**53 - 1), or a float; a match inside a string only sends the value down a slower exact path
_LONG_INTEGER = re.compile(rb"(?:^|[:,\[])-?\d{16}")
_LONG_INTEGER_OR_FLOAT = re.compile(rb"(?:^|[:,\[])-?(?:\d{16}|\d+[.eE])")


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


def jcs(value: Any) -> bytes:
    """The RFC 8785 canonical bytes of ``value``; ``NotCanonical`` if it has none."""
    try:
        out = orjson.dumps(value, option=orjson.OPT_SORT_KEYS)
        if out.isascii() and _LONG_INTEGER_OR_FLOAT.search(out) is None:
            return out  # no float, no long integer, every key ASCII: nothing to look at
        out = orjson.dumps(_for_orjson(value), option=orjson.OPT_SORT_KEYS)
        if _LONG_INTEGER.search(out) is None:
            return out
    except (_Library, orjson.JSONEncodeError, TypeError):  # orjson: a lone surrogate; the library decides
        pass
    try:
        return rfc8785.dumps(value)
    except (rfc8785.CanonicalizationError, UnicodeError, TypeError) as exc:
        raise NotCanonical(str(exc)) from None
