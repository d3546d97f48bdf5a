"""API keys: ``f8k_<key id>_<secret>``, random from ``secrets``, shown once and stored as their
SHA-256 only (a key is 256 random bits: a plain hash of it cannot be reversed by search).

A request's key is checked against the stored digest in constant time; a revoked key, one whose
id is unknown and one whose secret does not match are the same refusal.

Each instance keeps the key records it read for ``http.key_cache_seconds`` (``KeyCache``): a
request then costs no store read for its key (on FerretDB one read is several milliseconds of a
request of ten). The price is that ``flow8 keys revoke`` takes effect on a running server within
that many seconds, not at once; 0 turns the cache off. Only found keys are kept: a key made on
another instance works at once, and unknown ids fill nothing.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from cachetools import TTLCache

from flow8_streams.errors import Flow8Error
from flow8_streams.stores.ports import ApiKey, ApiKeys

if TYPE_CHECKING:
    from flow8_streams.metrics import Metrics

PREFIX = "f8k_"
ROLES = ("member", "admin")
_KEY = re.compile(r"f8k_([0-9a-f]{16})_[A-Za-z0-9_-]{43}")
MAX_HEADER = 256  # an Authorization header longer than any key is refused unread


class Unauthenticated(Flow8Error):
    """A request without a valid, unrevoked API key: HTTP 401."""

    reason = "unauthenticated"


def digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def new_key(company_id: str, role: str = "member", now: datetime | None = None) -> tuple[str, ApiKey]:
    """A new key and its record (what the store keeps)."""
    token = f"{PREFIX}{secrets.token_hex(8)}_{secrets.token_urlsafe(32)}"
    record = ApiKey(token[4:20], company_id, role, digest(token), now or datetime.now(UTC))
    return token, record


class KeyCache:
    """``ApiKeys.get`` with the records found kept for ``seconds`` (see the module)."""

    CACHE = "api_keys"  # the ``cache`` label of flow8_cache_hits_total / flow8_cache_misses_total

    def __init__(self, keys: ApiKeys, seconds: float, metrics: Metrics | None = None, max_entries: int = 100_000):
        self.keys = keys
        self.metrics = metrics
        self._found: TTLCache[str, ApiKey] | None = TTLCache(max_entries, seconds) if seconds > 0 else None

    async def get(self, key_id: str) -> ApiKey | None:
        found = self._found
        if found is None:
            return await self.keys.get(key_id)
        record = found.get(key_id)
        self._count(record is not None)
        if record is None:
            record = await self.keys.get(key_id)
            if record is not None:
                found[key_id] = record
        return record

    def forget(self, key_id: str) -> None:
        """``key_id`` was revoked through this instance: refused here at once."""
        if self._found is not None:
            self._found.pop(key_id, None)

    def _count(self, hit: bool) -> None:
        if self.metrics is not None:
            (self.metrics.cache_hits if hit else self.metrics.cache_misses).labels(self.CACHE).inc()


async def authenticate(keys: ApiKeys | KeyCache, authorization: str | None) -> ApiKey:
    """The key record an ``Authorization: Bearer KEY`` header proves, or ``Unauthenticated``."""
    if not authorization:
        raise Unauthenticated("no API key: send Authorization: Bearer KEY (flow8 keys create)")
    if len(authorization) > MAX_HEADER:
        raise Unauthenticated("the Authorization header is not a flow8 API key")
    scheme, _, token = authorization.partition(" ")
    match = _KEY.fullmatch(token.strip())
    if scheme.lower() != "bearer" or match is None:
        raise Unauthenticated("the Authorization header is not Bearer and a flow8 API key (f8k_...)")
    record = await keys.get(match.group(1))
    if record is None or not hmac.compare_digest(record.digest, digest(token.strip())) or record.revoked_at:
        raise Unauthenticated("the API key is unknown or revoked")
    return record
