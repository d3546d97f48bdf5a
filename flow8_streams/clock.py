"""The wall clock every runtime reads: aware UTC, so times compare and serialise one way."""

from __future__ import annotations

from datetime import UTC, datetime


def utcnow() -> datetime:
    return datetime.now(UTC)


def parse_aware(value: object) -> datetime | None:
    """An ISO 8601 time from outside as an aware datetime (a naive one is taken as UTC); None
    when ``value`` is not one."""
    if not isinstance(value, str):
        return None
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        return None
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)
