"""The optional parts of an install: what ``pip install 'flow8-streams[streams]'`` adds.

The base install runs the embedded runtime, the CLI and the Kafka client; the streams runtime's
worker and the MongoDB store need the ``streams`` extra. Code that imports that stack calls
``require_streams`` first, so a base install refuses with the command to run, not a traceback.
"""

from __future__ import annotations

import importlib.util
import sys

from flow8_streams.errors import InvalidInput

STREAMS_INSTALL = "pip install 'flow8-streams[streams]'"
# The top-level module each distribution of the ``streams`` extra provides, by distribution
# name; tests/test_extras.py checks it against pyproject's extra.
STREAMS_STACK = {
    "faust-streaming": "faust",
    "pymongo": "pymongo",
    "tenacity": "tenacity",
}


class MissingExtra(InvalidInput):
    """A command needs packages of an extra this install lacks (exit code 2)."""

    reason = "missing_extra"


def _installed(module: str) -> bool:
    """Whether ``module`` can be imported, without importing it. One already imported is: faust
    replaces its module object by a lazy one without ``__spec__``, and ``find_spec`` raises
    ValueError for such a module."""
    if sys.modules.get(module) is not None:
        return True
    return importlib.util.find_spec(module) is not None


def missing_streams() -> list[str]:
    """The distributions of the ``streams`` extra whose module cannot be found, none imported."""
    return [dist for dist, module in STREAMS_STACK.items() if not _installed(module)]


def require_streams(what: str) -> None:
    """Refuse ``what`` (a command or feature, as a user names it) unless the streams stack is installed."""
    missing = missing_streams()
    if missing:
        raise MissingExtra(
            f"{what} needs the streams runtime's packages, which this install lacks ({', '.join(missing)}); "
            f"install them with: {STREAMS_INSTALL}"
        )


REDIS_INSTALL = "pip install 'flow8-streams[redis]'"


def require_redis(what: str) -> None:
    """Refuse ``what`` unless redis-py (the ``redis`` extra) is installed."""
    if importlib.util.find_spec("redis") is None:
        raise MissingExtra(
            f"{what} needs the redis package, which this install lacks; install it with: {REDIS_INSTALL}"
        )


S3_INSTALL = "pip install 'flow8-streams[s3]'"


def require_s3(what: str) -> None:
    """Refuse ``what`` unless boto3 (the ``s3`` extra) is installed."""
    if importlib.util.find_spec("boto3") is None:
        raise MissingExtra(f"{what} needs the boto3 package, which this install lacks; install it with: {S3_INSTALL}")
