"""The shared cache port: bytes by key with a TTL, shared between instances (``cache.backend``).

Each instance keeps its own small caches (cachetools) of parsed values; a shared cache is a
second tier behind them, in front of the database, so a value one instance read is a hit for
the others. It is never critical: an implementation never raises for its own failures, it
answers "not cached" and the caller reads the database. What comes back is outside input to
the caller, which validates it (``flow8_streams.stores.mongo.flows`` parses it with its
pydantic model and counts a value that does not validate with ``rejected``).

``shared_cache(settings, metrics)`` makes the one the settings ask for: ``None`` for
``memory`` (each instance's own caches only, as before), a ``RedisSharedCache`` for ``redis``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import quote

from cachetools import TLRUCache

if TYPE_CHECKING:
    from flow8_streams.metrics import Metrics
    from flow8_streams.settings import Settings

MAX_VALUE_BYTES = 1 << 20  # a larger value is neither stored nor accepted back


class SharedCache(Protocol):
    """Bytes by key, shared between instances; ``cache`` is the kind of entry (a metrics label)."""

    backend: str

    async def get(self, cache: str, key: str) -> bytes | None: ...

    async def set(self, cache: str, key: str, value: bytes, ttl: float) -> None: ...

    async def delete(self, cache: str, key: str) -> None: ...

    def rejected(self, cache: str) -> None:
        """Count a value that came back and did not validate (the caller ignores it)."""

    async def close(self) -> None: ...


def key(kind: str, company_id: str, *parts: object) -> str:
    """``flow8:{kind}:{company_id}:{part}:...``: one namespace per tenant; each part quoted, so none holds a ``:``."""
    return ":".join(["flow8", kind, *(quote(str(p), safe="") for p in (company_id, *parts))])


class MemoryCache:
    """The port in one process (tests, and the contract the Redis one meets): a TTL per entry."""

    backend = "memory"

    def __init__(self, max_entries: int = 10_000, clock: Callable[[], float] = time.monotonic) -> None:
        self._data: TLRUCache[str, tuple[bytes, float]] = TLRUCache(
            maxsize=max_entries, ttu=lambda _key, value, now: now + value[1], timer=clock
        )
        self.rejects = 0

    async def get(self, cache: str, key: str) -> bytes | None:
        entry = self._data.get(key)
        return None if entry is None else entry[0]

    async def set(self, cache: str, key: str, value: bytes, ttl: float) -> None:
        if len(value) <= MAX_VALUE_BYTES:
            self._data[key] = (value, ttl)

    async def delete(self, cache: str, key: str) -> None:
        self._data.pop(key, None)

    def rejected(self, cache: str) -> None:
        self.rejects += 1

    async def close(self) -> None:
        self._data.clear()


def shared_cache(settings: Settings, metrics: Metrics | None = None) -> SharedCache | None:
    """The shared cache ``settings.cache.backend`` names; ``None`` for ``memory`` (per-instance caches only)."""
    if settings.cache.backend != "redis":
        return None
    from flow8_streams.cache.redis import RedisSharedCache

    return RedisSharedCache(settings.cache.redis, metrics)


def shared_flow_cache(settings: Settings, metrics: Metrics | None = None) -> dict[str, Any]:
    """``MongoStore``'s shared-cache arguments, from the settings."""
    redis = settings.cache.redis
    local_ttl = settings.cache.flows.ttl_seconds
    if settings.cache.backend == "redis":  # a new version stored elsewhere shows within the short local TTL
        local_ttl = min(local_ttl, redis.local_ttl_seconds)
    return {
        "shared_cache": shared_cache(settings, metrics),
        "shared_cache_ttl": redis.ttl_seconds,
        "shared_latest_ttl": redis.latest_ttl_seconds,
        "flow_cache_ttl": local_ttl,
    }
