"""The shared cache on Redis (redis-py's asyncio client): fast when Redis answers, harmless when not.

Any failure (Redis down, a timeout, the password refused) is counted in
``flow8_cache_errors_total{reason="unavailable"}``, logged in one line at most once a minute
(no traceback, no password), and answered as "not cached", so the caller reads the database.
After a failure Redis is left alone for ``retry_seconds``: a dead Redis then costs nothing per
read, and the first call after that tries it again (redis-py reconnects by itself), so the
cache comes back with Redis without a restart.

With ``signing_key`` each value carries an HMAC of itself and its key: Redis holds data, not
trust, and a value someone wrote there directly is ignored (``reason="invalid"``).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from flow8_streams.cache import MAX_VALUE_BYTES
from flow8_streams.extras import require_redis

if TYPE_CHECKING:
    from flow8_streams.metrics import Metrics
    from flow8_streams.settings import RedisCache

log = logging.getLogger("flow8.cache")

LOG_EVERY_SECONDS = 60.0
TAG_BYTES = 32  # an HMAC-SHA256 in front of each value, with cache.redis.signing_key
FAILED = object()  # what ``_call`` answers when Redis failed (``None`` is a miss)


class RedisSharedCache:
    """The ``SharedCache`` port on one Redis server; never raises for Redis's failures."""

    backend = "redis"

    def __init__(
        self, settings: RedisCache, metrics: Metrics | None = None, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        require_redis("cache.backend: redis")
        from redis.asyncio import Redis
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        timeout = settings.timeout_ms / 1000
        self.address = f"{settings.host}:{settings.port}/{settings.db}"
        self._password = settings.password.get_secret_value() if settings.password else None
        self._signing_key = settings.signing_key.get_secret_value().encode() if settings.signing_key else None
        if self._signing_key is None:
            log.info(
                "cache.redis.signing_key is not set: flow definitions read from Redis at %s are trusted as "
                "they are (set it, the same on every instance, so a value written there by anyone else is ignored)",
                self.address,
            )
        self._client = Redis(
            host=settings.host,
            port=settings.port,
            db=settings.db,
            password=self._password,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            retry=Retry(NoBackoff(), 0),  # no retries inside a call: a failure falls through to the database
            max_connections=64,
            client_name="flow8",
        )
        self._deadline = timeout * 4  # bounds a call as a whole (DNS, a pool wait), beyond the socket timeouts
        self._retry_seconds = settings.retry_seconds
        self._metrics = metrics
        self._clock = clock
        self._down_until = 0.0
        self._down = False
        self._last_said = -LOG_EVERY_SECONDS
        self._unsaid = 0

    def __repr__(self) -> str:
        return f"RedisSharedCache({self.address})"

    async def get(self, cache: str, key: str) -> bytes | None:
        value = await self._call(cache, "get", key)
        if value is FAILED:
            return None
        if not isinstance(value, bytes):
            self._count(cache, "miss")
            return None
        if len(value) > MAX_VALUE_BYTES + TAG_BYTES:
            self.rejected(cache)
            return None
        if self._signing_key is not None:
            tag, value = value[:TAG_BYTES], value[TAG_BYTES:]
            if not hmac.compare_digest(tag, self._tag(key, value)):
                self.rejected(cache)
                return None
        self._count(cache, "hit")
        return value

    async def set(self, cache: str, key: str, value: bytes, ttl: float) -> None:
        if len(value) <= MAX_VALUE_BYTES:
            if self._signing_key is not None:
                value = self._tag(key, value) + value
            await self._call(cache, "set", key, value, px=max(1, int(ttl * 1000)))

    def _tag(self, key: str, value: bytes) -> bytes:
        """HMAC-SHA256 of the key and the value: a value moved to another key (tenant) does not match either."""
        assert self._signing_key is not None
        return hmac.new(self._signing_key, key.encode() + b"\0" + value, hashlib.sha256).digest()

    async def delete(self, cache: str, key: str) -> None:
        await self._call(cache, "delete", key)

    def rejected(self, cache: str) -> None:
        if self._metrics is not None:
            self._metrics.cache_errors.labels(cache=cache, backend=self.backend, reason="invalid").inc()

    async def close(self) -> None:
        with contextlib.suppress(Exception):  # a client whose server is gone; nothing to do
            await self._client.aclose()

    async def _call(self, cache: str, command: str, *args: object, **kwargs: object) -> object:
        """One Redis command's answer, or ``FAILED`` when Redis fails (counted, said at most once a minute)."""
        from redis.exceptions import RedisError

        if self._down and self._clock() < self._down_until:
            self._error(cache)
            return FAILED
        try:
            async with asyncio.timeout(self._deadline):
                result = await getattr(self._client, command)(*args, **kwargs)
        except (RedisError, OSError, TimeoutError) as exc:
            self._down, self._down_until = True, self._clock() + self._retry_seconds
            self._error(cache, exc)
            return FAILED
        if self._down:
            self._down = False
            log.warning("redis cache %s answers again; shared cache on", self.address)
        return result

    def _error(self, cache: str, exc: BaseException | None = None) -> None:
        if self._metrics is not None:
            self._metrics.cache_errors.labels(cache=cache, backend=self.backend, reason="unavailable").inc()
        self._unsaid += 1
        now = self._clock()
        if exc is None or now - self._last_said < LOG_EVERY_SECONDS:
            return
        detail = str(exc) or type(exc).__name__
        if self._password:
            detail = detail.replace(self._password, "***")
        log.warning(
            "redis cache %s unavailable (%s: %s); reading from the database, trying Redis again in %gs "
            "(%d failed cache calls since the last such line)",
            self.address,
            type(exc).__name__,
            detail[:300],
            self._retry_seconds,
            self._unsaid,
        )
        self._last_said, self._unsaid = now, 0

    def _count(self, cache: str, outcome: str) -> None:
        if self._metrics is not None:
            self._metrics.shared_cache.labels(cache=cache, backend=self.backend, outcome=outcome).inc()
