"""Logging of every flow8 process, configured in one place: ``text`` or ``json`` lines on stderr.

``json`` writes one JSON object per line: ``time`` (ISO-8601, UTC), ``level``, ``logger``,
``message``, the play context when known (``company_id``, ``play_id``, ``flowlet``) and
``exc_info`` as one string field. ``text`` writes ``time level logger [context]: message``.

The play context comes from ``log_context``, entered where a runtime works on one play or
flowlet (asyncio tasks and module threads inherit it); a filter copies it onto each record.
Secrets of the connection strings in use are scrubbed from every line, tracebacks included.
The format is chosen by ``flow8 --log-format`` or ``FLOW8_LOG_FORMAT`` (inherited by the
processes flow8 starts: channel workers, bench workers).
"""

from __future__ import annotations

import contextvars
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from types import MappingProxyType

from pythonjsonlogger.json import JsonFormatter

from flow8_streams.errors import InvalidInput
from flow8_streams.redact import ScrubFilter, scrub

ENV = "FLOW8_LOG_FORMAT"
LEVEL_ENV = "FLOW8_LOG_LEVEL"
FORMATS = ("text", "json")
LEVELS = ("debug", "info", "warning", "error")
CONTEXT_FIELDS = ("company_id", "play_id", "flowlet")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s%(flow8_context)s: %(message)s"
HANDLER_NAME = "flow8"

_EMPTY: Mapping[str, str] = MappingProxyType({})
_context: contextvars.ContextVar[Mapping[str, str]] = contextvars.ContextVar("flow8_log_context", default=_EMPTY)


@contextmanager
def log_context(
    *, company_id: str | None = None, play_id: str | None = None, flowlet: str | None = None
) -> Iterator[None]:
    """A scope whose log records carry the given play context, on top of the enclosing one's."""
    given = {"company_id": company_id, "play_id": play_id, "flowlet": flowlet}
    token = _context.set(MappingProxyType({**_context.get(), **{k: v for k, v in given.items() if v is not None}}))
    try:
        yield
    finally:
        _context.reset(token)


def bind(*, company_id: str | None = None, play_id: str | None = None, flowlet: str | None = None) -> None:
    """Adds to the context of the enclosing ``log_context`` scope (for code that learns the play
    partway, e.g. after decoding a message); the scope's end drops it."""
    given = {"company_id": company_id, "play_id": play_id, "flowlet": flowlet}
    _context.set(MappingProxyType({**_context.get(), **{k: v for k, v in given.items() if v is not None}}))


def context_for(
    *, company_id: str | None = None, play_id: str | None = None, flowlet: str | None = None
) -> contextvars.Context:
    """A copy of the current context whose play context is exactly the given fields: a task or
    callback run in it logs for that play only, whichever play's code started it."""
    given = {"company_id": company_id, "play_id": play_id, "flowlet": flowlet}
    context = contextvars.copy_context()
    context.run(_context.set, MappingProxyType({k: v for k, v in given.items() if v is not None}))
    return context


def current_context() -> Mapping[str, str]:
    return _context.get()


class ContextFilter(logging.Filter):
    """Copies the play context onto each record (only the fields known), and its short text form."""

    def filter(self, record: logging.LogRecord) -> bool:
        context = _context.get()
        for name, value in context.items():
            if not hasattr(record, name):  # a field given with ``extra=`` wins
                setattr(record, name, value)
        record.flow8_context = _short(record)
        return True


def _short(record: logging.LogRecord) -> str:
    parts = [str(v) for name in CONTEXT_FIELDS if (v := getattr(record, name, None))]
    return f" [{'/'.join(parts)}]" if parts else ""


class _Json(JsonFormatter):
    def __init__(self) -> None:
        super().__init__(
            "{levelname}{name}{message}",
            style="{",
            rename_fields={"levelname": "level", "name": "logger"},
            reserved_attrs=[*_RESERVED, "flow8_context"],
            timestamp="time",
        )


_RESERVED = [
    *logging.LogRecord("", 0, "", 0, "", None, None).__dict__.keys(),
    "message",
    "asctime",
]


class StderrHandler(logging.Handler):
    """Writes to whatever ``sys.stderr`` is at the time (a test or a redirect may replace it),
    each record on one line with every secret of ``uris`` scrubbed."""

    def __init__(self, uris: Iterable[str] = ()) -> None:
        super().__init__()
        self.uris = [uri for uri in uris if uri]

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = scrub(self.format(record), *self.uris) if self.uris else self.format(record)
            stream = sys.stderr
            stream.write(line + "\n")
            stream.flush()
        except Exception:
            self.handleError(record)


def check_format(value: str, where: str) -> str:
    """``value`` as a format name; anything else is refused naming ``where`` (exit 2)."""
    name = value.strip().lower()
    if name not in FORMATS:
        raise InvalidInput(f"{where} {value[:40]!r} is not a log format: use one of {', '.join(FORMATS)}")
    return name


def format_from_env() -> str:
    value = os.environ.get(ENV)
    return check_format(value, ENV) if value else "text"


def level_from_env(default: str = "warning") -> str:
    value = (os.environ.get(LEVEL_ENV) or default).strip().lower()
    return value if value in LEVELS else default


def env_uris() -> list[str]:
    return [uri for name in ("MONGODB_URI", "KAFKA_BOOTSTRAP_SERVERS") if (uri := os.environ.get(name))]


def formatter(log_format: str) -> logging.Formatter:
    if check_format(log_format, "log format") == "json":
        return _Json()
    return logging.Formatter(TEXT_FORMAT)


class RepeatsFilter(logging.Filter):
    """A library's warning or error that repeats (same logger, same message template) shows once
    per ``every_s`` at most; the next one shown says how many were held back. aiokafka logs each
    failed reconnect and fetch, several a second per client, for as long as the broker is down:
    a restart of 20 s made 130,000 lines. What it says first is always shown."""

    def __init__(
        self,
        prefixes: tuple[str, ...] = ("aiokafka",),
        every_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__()
        self.prefixes = prefixes
        self.every_s = every_s
        self.clock = clock
        self._shown: dict[tuple[str, str], tuple[float, int]] = {}  # (logger, template) -> (shown at, held since)
        self._lock = threading.Lock()  # faust's consumer logs from a thread of its own

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING or not record.name.startswith(self.prefixes):
            return True
        key = (record.name, str(record.msg))
        now = self.clock()
        with self._lock:
            shown_at, held = self._shown.get(key, (None, 0))
            if shown_at is not None and now - shown_at < self.every_s:
                self._shown[key] = (shown_at, held + 1)
                return False
            self._shown[key] = (now, 0)
        if held and shown_at is not None:
            record.msg = f"{record.msg} ({held} more like it in the last {now - shown_at:.0f} s, not shown)"
        return True


def configure(
    log_format: str = "text", level: str | int = "warning", *, uris: Iterable[str] = (), replace: bool = False
) -> logging.Handler:
    """One stderr handler on the root logger in ``log_format`` at ``level``, with the play context
    and the secrets of ``uris`` (and of the environment's connection strings) scrubbed. A handler of
    an earlier call is replaced; ``replace`` drops every other root handler too (a library's own)."""
    shown = [*uris, *env_uris()]
    handler = StderrHandler(shown)
    handler.set_name(HANDLER_NAME)
    handler.addFilter(ContextFilter())
    handler.addFilter(RepeatsFilter())
    handler.addFilter(ScrubFilter(*shown))
    handler.setFormatter(formatter(log_format))
    root = logging.getLogger()
    for old in list(root.handlers):
        if replace or old.get_name() == HANDLER_NAME:
            root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper() if isinstance(level, str) else level)
    # aiokafka says "Updating subscribed topics" at INFO on every assignment of a consumer: a
    # history read of `flow8 serve --streams` (a consumer lent from a pool) assigns at each read
    chatty = logging.WARNING if root.level > logging.DEBUG else logging.NOTSET
    for name in CHATTY_AT_INFO:
        logging.getLogger(name).setLevel(chatty)
    return handler


CHATTY_AT_INFO = ("aiokafka.consumer.subscription_state",)


def configure_cli(option: str | None) -> None:
    """The ``flow8`` command's logging: ``--log-format``, else ``FLOW8_LOG_FORMAT``, else text (a
    worker then applies its settings file's). The option is put in the environment, so the
    processes flow8 starts log the same way."""
    log_format = format_from_env()
    if option is not None:
        log_format = os.environ[ENV] = check_format(option, "--log-format")
    configure(log_format, level_from_env())


__all__ = [
    "ENV",
    "FORMATS",
    "ContextFilter",
    "RepeatsFilter",
    "StderrHandler",
    "bind",
    "check_format",
    "configure",
    "configure_cli",
    "context_for",
    "current_context",
    "format_from_env",
    "level_from_env",
    "log_context",
]
