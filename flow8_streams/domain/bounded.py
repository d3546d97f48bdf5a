"""Decoding outside bytes into JSON values, within ``Limits``.

Pure: no I/O. Every function refuses what is over a limit with an ``InvalidInput``
subclass whose message names what was given (``what``), what is wrong and the limit.
A value these functions return is JSON-representable: dicts with string keys, lists,
strings of valid Unicode, 64-bit integers, finite floats, booleans and None; nested at
most ``max_depth`` deep; and its JSON is at most the byte bound it was checked against.
"""

from __future__ import annotations

import math
import re
from typing import Any

import orjson
import yaml
from yaml.events import AliasEvent, MappingStartEvent, SequenceStartEvent

from flow8_streams.domain.limits import Limits
from flow8_streams.errors import InvalidInput

# orjson's own bound on integers: the range it can write back
INT_MIN = -(2**63)
INT_MAX = 2**64 - 1
_SURROGATE = re.compile("[\ud800-\udfff]")


class TooLarge(InvalidInput):
    """A document or value is over a byte limit."""

    reason = "too_large"


class TooDeep(InvalidInput):
    """A document nests objects and lists deeper than ``max_depth``."""

    reason = "too_deep"


class TooManyAliases(InvalidInput):
    """A YAML document uses more aliases (``*name``) than ``max_yaml_aliases``."""

    reason = "too_many_aliases"


class NotJson(InvalidInput):
    """A document does not parse, or holds a value JSON cannot carry."""

    reason = "not_json"


def check_size(data: str | bytes, max_bytes: int, what: str) -> bytes:
    """``data`` as UTF-8 bytes, refused when longer than ``max_bytes`` or not valid UTF-8."""
    if isinstance(data, str):
        if len(data) > max_bytes:  # a character is at least one byte: refused before encoding
            raise TooLarge(f"{what} is larger than the limit of {max_bytes} bytes")
        try:
            data = data.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise NotJson(f"{what} is not valid UTF-8 text (at character {exc.start})") from None
    if len(data) > max_bytes:
        raise TooLarge(f"{what} is larger than the limit of {max_bytes} bytes ({len(data)} bytes)")
    return data


def decode_json(data: str | bytes, limits: Limits, what: str = "the document", max_bytes: int | None = None) -> Any:
    """Parse JSON of at most ``max_bytes`` (default ``limits.max_message_bytes``) and ``limits.max_depth``."""
    bound = limits.max_message_bytes if max_bytes is None else max_bytes
    raw = check_size(data, bound, what)
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        if "depth limit" in str(exc):  # orjson's own bound (1024), far above ours
            raise TooDeep(f"{what} nests deeper than the limit of {limits.max_depth}") from None
        raise NotJson(f"{what} is not valid JSON: {exc}") from None
    # orjson refuses NaN, infinities and lone surrogates; big integers it reads as floats
    check_depth(value, limits.max_depth, what)
    return value


def check_depth(value: Any, max_depth: int, what: str = "the document") -> None:
    """Refuse ``value`` when its objects and lists nest more than ``max_depth`` deep (a scalar is 0)."""
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list):
            if depth + 1 > max_depth:
                raise TooDeep(f"{what} nests deeper than the limit of {max_depth}")
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, depth + 1) for child in children)


def check_json_value(value: Any, limits: Limits, what: str = "the document", max_bytes: int | None = None) -> None:
    """Refuse a decoded value that JSON cannot carry, nests past ``max_depth`` or writes past ``max_bytes``.

    The walk stops at the first fault and counts a lower bound of the value's JSON size as it
    goes, so a value that shares one subtree many times (YAML aliases) is refused after at most
    ``max_bytes`` steps instead of being expanded.
    """
    bound = limits.max_message_bytes if max_bytes is None else max_bytes
    size = 0
    stack: list[tuple[Any, int, str]] = [(value, 0, "")]
    while stack:
        item, depth, path = stack.pop()
        where = f"{what} at {path}" if path else what
        if isinstance(item, dict):
            if depth + 1 > limits.max_depth:
                raise TooDeep(f"{what} nests deeper than the limit of {limits.max_depth}")
            size += 2 + max(len(item) - 1, 0)  # braces and commas
            for key, child in item.items():
                if not isinstance(key, str):
                    raise NotJson(f"{where}: the key {key!r} is not a string")
                _check_text(key, where)
                size += len(key) + 3  # quotes and colon
                stack.append((child, depth + 1, f"{path}.{key}" if path else key))
        elif isinstance(item, list):
            if depth + 1 > limits.max_depth:
                raise TooDeep(f"{what} nests deeper than the limit of {limits.max_depth}")
            size += 2 + max(len(item) - 1, 0)
            stack.extend((child, depth + 1, f"{path}.{i}" if path else str(i)) for i, child in enumerate(item))
        elif isinstance(item, str):
            _check_text(item, where)
            size += len(item) + 2
        elif item is None or isinstance(item, bool):
            size += 4
        elif isinstance(item, int):
            if not INT_MIN <= item <= INT_MAX:
                raise NotJson(f"{where}: the integer {item} is outside the 64-bit range")
            size += 1
        elif isinstance(item, float):
            if not math.isfinite(item):
                raise NotJson(f"{where}: {item} is not a finite number")
            size += 1
        else:
            raise NotJson(f"{where}: a {type(item).__name__} is not a JSON value (quote it to make it a string)")
        if size > bound:
            raise TooLarge(f"{what} is larger than the limit of {bound} bytes once its aliases are expanded")


def _check_text(text: str, where: str) -> None:
    found = _SURROGATE.search(text)
    if found is not None:
        raise NotJson(f"{where}: the text holds a lone surrogate (U+{ord(found.group()):04X}), which is not Unicode")


class _BoundedLoader(yaml.SafeLoader):
    """PyYAML's safe loader with aliases and nesting counted while the document is composed."""

    limits: Limits
    what: str

    def __init__(self, stream: str, limits: Limits, what: str) -> None:
        super().__init__(stream)
        self.limits = limits
        self.what = what
        self.aliases = 0
        self.depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(AliasEvent):
            self.aliases += 1
            if self.aliases > self.limits.max_yaml_aliases:
                raise TooManyAliases(
                    f"{self.what} uses more YAML aliases (*name) than the limit of {self.limits.max_yaml_aliases}"
                )
            return super().compose_node(parent, index)
        if not self.check_event(MappingStartEvent, SequenceStartEvent):
            return super().compose_node(parent, index)
        self.depth += 1
        try:
            if self.depth > self.limits.max_depth:  # composing recurses: stop before Python's stack does
                raise TooDeep(f"{self.what} nests deeper than the limit of {self.limits.max_depth}")
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1


def load_yaml(text: str | bytes, limits: Limits, what: str = "the document", max_bytes: int | None = None) -> Any:
    """Parse one YAML document (safe tags only) within the limits; the result is a JSON value."""
    bound = limits.max_message_bytes if max_bytes is None else max_bytes
    raw = check_size(text, bound, what)
    try:
        decoded = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise NotJson(f"{what} is not valid UTF-8 text (at byte {exc.start})") from None
    loader = _BoundedLoader(decoded, limits, what)
    try:
        value = loader.get_single_data()
    except yaml.YAMLError as exc:
        raise NotJson(f"{what} is not valid YAML: {' '.join(str(exc).split())}") from None
    finally:
        loader.dispose()
    check_json_value(value, limits, what, bound)
    if len(orjson.dumps(value)) > bound:  # bounded: the walk above saw at most ``bound`` bytes' worth
        raise TooLarge(f"{what} is larger than the limit of {bound} bytes as JSON")
    return value


__all__ = [
    "NotJson",
    "TooDeep",
    "TooLarge",
    "TooManyAliases",
    "check_depth",
    "check_json_value",
    "check_size",
    "decode_json",
    "load_yaml",
]
