"""Key ranges for listing by prefix on an ordered index (SQLite's BINARY collation and MongoDB's
simple one both order strings by code point, as their UTF-8 bytes do)."""

from __future__ import annotations

MAX_CHAR = 0x10FFFF
SURROGATES = range(0xD800, 0xE000)  # not characters: no stored string holds one


def prefix_end(prefix: str) -> str | None:
    """The least string above every string that starts with ``prefix`` (None: there is none, as for
    ``""``): a listing by prefix reads the range ``[prefix, prefix_end(prefix))``."""
    stem = prefix.rstrip(chr(MAX_CHAR))
    if not stem:
        return None
    following = ord(stem[-1]) + 1
    if following in SURROGATES:
        following = SURROGATES.stop
    return stem[:-1] + chr(following)
