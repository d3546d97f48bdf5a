"""Canonical JSON for hashing and signing: RFC 8785 (JCS).

``jcs(value)`` is the RFC 8785 serialisation of a JSON value (``dict``/``list``/``str``/``int``/
``float``/``bool``/``None``): object keys sorted by their UTF-16 code units, no whitespace,
strings escaped as ECMAScript's ``JSON.stringify`` does, numbers as ECMAScript prints an IEEE
double. A value outside I-JSON (an integer beyond ±(2**53 - 1), a non-finite float) has no
canonical form: ``NotCanonical``.

orjson with sorted keys writes the same bytes as RFC 8785 for a value with no float, no integer
beyond ±(2**53 - 1) and no object key holding a character at or past U+D800 (where UTF-16 and
code-point order part); such values (nearly every event) take that path, the others the
``rfc8785`` library's.
"""

from __future__ import annotations

from typing import Any

import orjson
import rfc8785

MAX_SAFE_INTEGER = 2**53 - 1


class NotCanonical(ValueError):
    """A value RFC 8785 cannot serialise."""


def _orjson_agrees(value: Any) -> bool:
    kind = type(value)
    if kind is str or kind is bool or value is None:
        return True
    if kind is int:
        return bool(-MAX_SAFE_INTEGER <= value <= MAX_SAFE_INTEGER)
    if kind is dict:
        for key, item in value.items():
            if type(key) is not str or not (key.isascii() or max(key) < "\ud800"):
                return False
            if not _orjson_agrees(item):
                return False
        return True
    if kind is list:
        return all(_orjson_agrees(item) for item in value)
    return False


def jcs(value: Any) -> bytes:
    """The RFC 8785 canonical bytes of ``value``; ``NotCanonical`` if it has none."""
    if _orjson_agrees(value):
        try:
            return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)
        except orjson.JSONEncodeError:  # a lone surrogate in a string: the library decides
            pass
    try:
        return rfc8785.dumps(value)
    except (rfc8785.CanonicalizationError, UnicodeError, TypeError) as exc:
        raise NotCanonical(str(exc)) from None
