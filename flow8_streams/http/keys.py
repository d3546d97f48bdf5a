"""API keys: ``f8k_<key id>_<secret>``, random from ``secrets``, shown once and stored as their
SHA-256 only (a key is 256 random bits: a plain hash of it cannot be reversed by search).

A request's key is checked against the stored digest in constant time; a revoked key, one whose
id is unknown and one whose secret does not match are the same refusal.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from datetime import UTC, datetime

from flow8_streams.errors import Flow8Error
from flow8_streams.stores.ports import ApiKey, ApiKeys

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


async def authenticate(keys: ApiKeys, authorization: str | None) -> ApiKey:
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
