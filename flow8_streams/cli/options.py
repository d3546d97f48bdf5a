"""Checks of the ``flow8`` command's option values, shared by every command.

A value of the wrong shape is refused when the command line is parsed, before anything
is read or written: ``InvalidInput`` naming the option and what it takes (exit 2).
"""

from __future__ import annotations

import re
from collections.abc import Callable

from flow8_streams.domain.flow import NAME_PATTERN
from flow8_streams.domain.limits import Limits
from flow8_streams.domain.messages import ID_PATTERN
from flow8_streams.errors import InvalidInput
from flow8_streams.redact import redact_uri

ID_RULE = "1 to 200 of the letters A-Z a-z, digits and _ . : @ -, the first a letter, digit or _"
NAME_RULE = "1 to 128 of the letters A-Z a-z, digits and _ . -, the first a letter, digit or _"


def check_id(value: str, flag: str) -> str:
    if re.fullmatch(ID_PATTERN.strip("^$"), value) is None:
        raise InvalidInput(f"{flag} {value!r} is not a valid id: an id is {ID_RULE}")
    return value


def check_name(value: str, flag: str) -> str:
    if re.fullmatch(NAME_PATTERN.strip("^$"), value) is None:
        raise InvalidInput(f"{flag} {value!r} is not a valid flow name: a name is {NAME_RULE}")
    return value


def id_option(flag: str) -> Callable[[str | None], str | None]:
    """A typer callback refusing a value that is not a company or play id."""

    def callback(value: str | None) -> str | None:
        return None if value is None else check_id(value, flag)

    return callback


def name_option(flag: str) -> Callable[[str | None], str | None]:
    """A typer callback refusing a value that is not a flow name."""

    def callback(value: str | None) -> str | None:
        return None if value is None else check_name(value, flag)

    return callback


def servers_option(flag: str) -> Callable[[str | None], str | None]:
    """A typer callback refusing servers that carry a credential: the process list shows every flag.

    The refusal does not quote the value.
    """

    def callback(value: str | None) -> str | None:
        if value is not None and redact_uri(value) != value:
            raise InvalidInput(
                f"{flag} takes host:port[,host:port] only; credentials come from the environment or the "
                "settings file, never from the command line"
            )
        return value

    return callback


def limits() -> Limits:
    """The deployment's limits (``limits:`` in the settings file, ``FLOW8_LIMITS__*``)."""
    from flow8_streams.settings import load_settings

    return load_settings().limits
