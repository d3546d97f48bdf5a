"""Helpers shared by the ``flow8`` commands for what they read from the command line."""

from __future__ import annotations

from flow8_streams.domain.limits import Limits


def limits() -> Limits:
    """The deployment's limits (``limits:`` in the settings file, ``FLOW8_LIMITS__*``)."""
    from flow8_streams.settings import load_settings

    return load_settings().limits
