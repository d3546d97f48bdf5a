"""The real servers tests talk to (started by ``scripts/services up``).

Without KAFKA_BOOTSTRAP_SERVERS / MONGODB_URI such tests skip, unless
FLOW8_REQUIRE_SERVICES=1 (set by scripts/test), where a missing server fails them.
"""

from __future__ import annotations

import os

import pytest


def require_service(var: str, start: str = "scripts/services up") -> str:
    value = os.environ.get(var)
    if not value:
        missing_service(f"{var} is not set; start the servers with `export $({start})`")
    return value


def missing_service(message: str) -> None:
    """Skip the test, saying why; fail it under FLOW8_REQUIRE_SERVICES=1 (scripts/test)."""
    if os.environ.get("FLOW8_REQUIRE_SERVICES") == "1":
        pytest.fail(message)
    pytest.skip(message)
