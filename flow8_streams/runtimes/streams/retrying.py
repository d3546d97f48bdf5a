"""Calls to MongoDB that wait out an outage instead of skipping the input that needs them."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

from tenacity import AsyncRetrying, retry_if_exception_type, wait_exponential

from flow8_streams.errors import StoreUnavailable

log = logging.getLogger("flow8.streams")
T = TypeVar("T")


async def until_stored(what: str, call: Callable[[], Awaitable[T]]) -> T:
    """``call()`` again while MongoDB is unavailable. The message that needs it stays
    unacked meanwhile (a crash reads it again), so the agent falls behind and skips
    nothing; the projector's writes are guarded by seq, so a half-applied batch
    applied again is harmless."""
    async for attempt in AsyncRetrying(
        retry=retry_if_exception_type(StoreUnavailable),
        wait=wait_exponential(multiplier=0.1, max=5),
        before_sleep=lambda state: log.warning(
            "%s failed (attempt %d), retrying: %s",
            what,
            state.attempt_number,
            state.outcome.exception() if state.outcome else "?",
        ),
    ):
        with attempt:
            return await call()
    raise AssertionError("unreachable: retried until it succeeds")  # pragma: no cover
