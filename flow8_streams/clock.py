"""The wall clock every runtime reads: aware UTC, so times compare and serialise one way."""

from __future__ import annotations

from datetime import UTC, datetime


def utcnow() -> datetime:
    return datetime.now(UTC)
