"""Connection strings as they may be shown: credentials replaced by ``***``.

Every message or log line that names a MongoDB URI or Kafka servers goes through
``redact_uri`` (or ``scrub`` for text that may quote one), so a password never reaches
output, logs or an error. It never fails, whatever the string: it runs on URIs that
did not parse. When unsure whether a part is a secret, it hides it.
"""

from __future__ import annotations

import logging
import re

MASK = "***"
# query options whose value is a credential (pymongo's tlsCertificateKeyFilePassword,
# authMechanismProperties that carry AWS tokens, a Kafka sasl.password, ...)
_SECRET_OPTION = re.compile(r"(pass|secret|token|key|credential|authmechanismproperties)", re.IGNORECASE)
_PORT = re.compile(r"^\d{0,5}$")


def redact_uri(uri: str) -> str:
    """``mongodb://user:***@host:27017/db?...``: the user is kept, the password and secret options hidden.

    Works on a comma-separated host list with or without a scheme (Kafka bootstrap servers).
    A ``host:port`` whose port is not a number (a password where a port should be) is hidden too.
    """
    scheme, sep, rest = uri.partition("://")
    if not sep:
        scheme, rest = "", uri
    # the userinfo ends at the last "@": a password with an unescaped "@", "/" or "?" stays inside it
    userinfo, at, after = rest.rpartition("@")
    user = ""
    if at:
        name, colon, _ = userinfo.partition(":")
        user = f"{name.split('/')[0]}:{MASK}@" if colon else f"{MASK}@" if "/" in name else f"{name}@"
    hosts, slash, tail = after.partition("/")
    if not slash:
        hosts, question, query = after.partition("?")
        tail = f"?{_redact_query(query)}" if question else ""
    else:
        path, question, query = tail.partition("?")
        tail = f"/{path}" + (f"?{_redact_query(query)}" if question else "")
    shown_hosts = ",".join(_redact_host(h) for h in hosts.split(","))
    return f"{scheme}{sep}{user}{shown_hosts}{tail}"


def _redact_host(host: str) -> str:
    if host.startswith("["):  # [::1]:27017
        return host
    name, colon, port = host.rpartition(":")
    if colon and not _PORT.match(port):
        return f"{name}:{MASK}"
    return host


def _redact_query(query: str) -> str:
    parts = []
    for option in query.split("&"):
        key, eq, _ = option.partition("=")
        parts.append(f"{key}={MASK}" if eq and _SECRET_OPTION.search(key) else option)
    return "&".join(parts)


def secrets_of(uri: str) -> list[str]:
    """The parts of ``uri`` that ``redact_uri`` hides, longest first (to scrub text that quotes them)."""
    shown = redact_uri(uri)
    if shown == uri:
        return []
    found: set[str] = set()
    _, sep, rest = uri.partition("://")
    userinfo, at, after = (rest if sep else uri).rpartition("@")
    if at:
        found.add(userinfo)
        _, colon, password = userinfo.partition(":")
        if colon and password:
            found.add(password)
    for host in after.split("/")[0].split("?")[0].split(","):
        _, colon, port = host.rpartition(":")
        if colon and port and not _PORT.match(port):
            found.add(port)
    for option in uri.partition("?")[2].split("&"):
        key, eq, value = option.partition("=")
        if eq and value and _SECRET_OPTION.search(key):
            found.add(value)
    return sorted(found, key=len, reverse=True)


def scrub(text: str, *uris: str) -> str:
    """``text`` with each of ``uris`` shown redacted and any secret of theirs it quotes replaced by ``***``."""
    for uri in uris:
        if uri in text:
            text = text.replace(uri, redact_uri(uri))
        for secret in secrets_of(uri):
            text = text.replace(secret, MASK)
    return text


class ScrubFilter(logging.Filter):
    """A logging filter that rewrites a record quoting a secret of ``uris`` (libraries log hosts as given)."""

    def __init__(self, *uris: str) -> None:
        super().__init__()
        self.uris = [uri for uri in uris if uri and redact_uri(uri) != uri]

    def filter(self, record: logging.LogRecord) -> bool:
        if self.uris:
            message = record.getMessage()
            shown = scrub(message, *self.uris)
            if shown != message:
                record.msg, record.args = shown, None
        return True


__all__ = ["MASK", "ScrubFilter", "redact_uri", "scrub", "secrets_of"]
