"""Secrets of the channels: the pool secret that authenticates ``run``, and the completion
tokens an outside service presents to finish a pending flowlet.

A completion token is minted by flow8, never chosen by a module: HMAC-SHA256 under the
deployment's token key of (company, play, flowlet, attempt), each field length-prefixed so
no two tuples share an input, base64url without padding. The same attempt of the same play
always gets the same token (a resumed play keeps it); any other attempt, play or company
gets another one, and nobody without the key can make one.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
import stat
from pathlib import Path
from typing import TYPE_CHECKING

from flow8_streams.errors import InvalidInput

if TYPE_CHECKING:
    from flow8_streams.settings import Settings

KEY_BYTES = 32
TOKEN_DOMAIN = b"flow8 completion token v1\x00"
RUN_DOMAIN = b"flow8 channel run v1\x00"


def new_key() -> bytes:
    return secrets.token_bytes(KEY_BYTES)


def _field(value: str | int) -> bytes:
    data = str(value).encode()
    return len(data).to_bytes(4, "big") + data


def completion_token(key: bytes, company_id: str, play_id: str, flowlet: str, attempt: int) -> str:
    """The token that completes ``attempt`` of ``play_id``/``flowlet`` of ``company_id``."""
    body = TOKEN_DOMAIN + b"".join(_field(v) for v in (company_id, play_id, flowlet, attempt))
    mac = hmac.new(key, body, hashlib.sha256).digest()
    return base64.urlsafe_b64encode(mac).rstrip(b"=").decode()


def same_token(given: str, expected: str | None) -> bool:
    """``given == expected``, in time independent of where they differ."""
    if expected is None:
        return False
    return hmac.compare_digest(given.encode(), expected.encode())


def fingerprint(token: str) -> str:
    """8 hex digits naming a token in status and logs; the token cannot be had back from them."""
    return hashlib.sha256(b"flow8 token fingerprint\x00" + token.encode()).hexdigest()[:8]


def run_mac(secret: bytes, body: bytes) -> str:
    """The pool's signature of a ``run`` body (the exact bytes sent)."""
    return hmac.new(secret, RUN_DOMAIN + body, hashlib.sha256).hexdigest()


def run_mac_ok(secret: bytes, body: bytes, mac: str) -> bool:
    return hmac.compare_digest(run_mac(secret, body).encode(), mac.encode())


def parse_key(text: str, what: str) -> bytes:
    """A key written as hex or base64url, of at least 32 bytes; ``ValueError`` naming ``what``."""
    text = text.strip()
    try:
        key = bytes.fromhex(text)
    except ValueError:
        try:
            key = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        except (binascii.Error, ValueError):
            key = b""
    if len(key) < KEY_BYTES:
        raise ValueError(
            f"{what} must be at least {KEY_BYTES} random bytes written as hex or base64url "
            '(e.g. python -c "import secrets; print(secrets.token_urlsafe(32))")'
        )
    return key


TOKEN_KEY_NAME = "channel_token_key"  # its name where a store keeps it


def configured_key(value: str | None, path: Path | None) -> bytes | None:
    """The token key the operator gave (``FLOW8_CHANNEL_TOKEN_KEY`` or its file), if any;
    ``InvalidInput`` naming the setting when it cannot be used."""
    if value is not None and path is not None:
        raise InvalidInput("give FLOW8_CHANNEL_TOKEN_KEY or FLOW8_CHANNEL_TOKEN_KEY_FILE, not both")
    if path is not None:
        try:
            mode = path.stat().st_mode
            text = path.read_text(encoding="ascii")[:4096]
        except (OSError, UnicodeDecodeError) as exc:
            raise InvalidInput(f"FLOW8_CHANNEL_TOKEN_KEY_FILE {path}: cannot be read ({exc})") from None
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise InvalidInput(
                f"FLOW8_CHANNEL_TOKEN_KEY_FILE {path} is readable by others (mode {stat.S_IMODE(mode):o}); chmod 600 it"
            )
        value, what = text, f"FLOW8_CHANNEL_TOKEN_KEY_FILE {path}"
    else:
        what = "FLOW8_CHANNEL_TOKEN_KEY"
    if value is None:
        return None
    try:
        return parse_key(value, what)
    except ValueError as exc:
        raise InvalidInput(str(exc)) from None


def settings_key(settings: Settings) -> bytes | None:
    """``configured_key`` of ``settings``."""
    value = settings.channel_token_key
    return configured_key(None if value is None else value.get_secret_value(), settings.channel_token_key_file)
