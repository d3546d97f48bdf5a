"""What each error means to a ``flow8`` user: one paragraph on stderr and an exit code, decided here
and nowhere else.

| exit | when |
|---|---|
| 0 | done (a play that succeeded) |
| 1 | a play that did not succeed; something not found or already finished; any other ``Flow8Error`` |
| 2 | bad input: a usage error (no command, unknown command or option, bad value) or ``InvalidInput`` |
| 70 | a bug: anything else (``internal error: ... (please report this)``), never a traceback |
| 130 | interrupted (Ctrl-C) |

Messages may quote what a user or a store gave: they are printed as text, never markup, with any
secret of the connection strings in the environment scrubbed.
"""

from __future__ import annotations

import os
from typing import Any

import typer
from rich.console import Console
from rich.text import Text

from flow8_streams.errors import Flow8Error, InvalidInput
from flow8_streams.live import plain
from flow8_streams.redact import scrub

OK, FAILED, USAGE, INTERNAL, INTERRUPTED = 0, 1, 2, 70, 130

# the first class an error is an instance of gives its exit code
EXIT_CODES: tuple[tuple[type[BaseException], int], ...] = (
    (InvalidInput, USAGE),
    (Flow8Error, FAILED),
    (KeyboardInterrupt, INTERRUPTED),
)

err = Console(stderr=True, highlight=False, emoji=False)


def exit_code(exc: BaseException) -> int:
    """The exit code ``exc`` ends the command with."""
    if isinstance(exc, typer.Exit | SystemExit):
        code = exc.exit_code if isinstance(exc, typer.Exit) else exc.code
        return code if isinstance(code, int) else (OK if code is None else FAILED)
    for kind, code in EXIT_CODES:
        if isinstance(exc, kind):
            return code
    if _is_abort(exc):  # a prompt's Ctrl-D or "no"
        return FAILED
    if _usage_error(exc) is not None:
        code = getattr(exc, "exit_code", USAGE)
        return code if isinstance(code, int) else USAGE
    return INTERNAL


def report(exc: BaseException) -> int:
    """Print what ``exc`` means to the user (if anything) and return its exit code."""
    code = exit_code(exc)
    if isinstance(exc, typer.Exit | SystemExit) or _is_abort(exc):
        return code
    if isinstance(exc, KeyboardInterrupt):
        err.print("interrupted")
    elif isinstance(exc, Flow8Error):
        _say("error:", shown(exc))
    elif (usage := _usage_error(exc)) is not None:
        ctx = getattr(exc, "ctx", None)
        message = shown(usage).strip()
        if not message and ctx is not None:  # no command given: what there is, then why it stopped
            err.print(plain(ctx.get_help()), soft_wrap=True)
            _say("error:", "give a command")
        else:
            hint = f" (see {ctx.command_path} -h)" if ctx is not None else ""
            _say("error:", f"{message}{hint}")
    else:
        _say("internal error:", f"{type(exc).__name__}: {shown(exc)} (please report this)")
    return code


def shown(message: object) -> str:
    """A message as it may be printed: no secret of a connection string the environment holds."""
    return scrub(str(message), *env_uris())


def env_uris() -> list[str]:
    return [uri for name in ("MONGODB_URI", "KAFKA_BOOTSTRAP_SERVERS") if (uri := os.environ.get(name))]


def _say(label: str, message: str) -> None:
    err.print(Text.assemble((label, "bold red"), " ", plain(message)), soft_wrap=True)


def _usage_error(exc: BaseException) -> str | None:
    """The message of a Click usage error, from whichever Click copy typer runs on (typer bundles
    its own from 0.16 on: its errors are no ``click.ClickException``)."""
    if type(exc).__module__.split(".")[0] not in {"click", "typer"}:
        return None
    format_message: Any = getattr(exc, "format_message", None)
    if not callable(format_message) or not isinstance(getattr(exc, "exit_code", None), int):
        return None
    return str(format_message())


def _is_abort(exc: BaseException) -> bool:
    return type(exc).__name__ == "Abort" and type(exc).__module__.split(".")[0] in {"click", "typer"}
