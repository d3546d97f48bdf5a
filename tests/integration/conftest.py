"""Fixtures for tests against the real servers that scripts/services starts.

Without KAFKA_BOOTSTRAP_SERVERS / MONGODB_URI these tests skip, unless
FLOW8_REQUIRE_SERVICES=1 (set by scripts/test), where a missing server fails them.
"""

from __future__ import annotations

import uuid

import pytest

from tests.services import require_service as _service


@pytest.fixture
def kafka_bootstrap() -> str:
    return _service("KAFKA_BOOTSTRAP_SERVERS")


@pytest.fixture
def mongodb_uri() -> str:
    return _service("MONGODB_URI")


@pytest.fixture
def unique() -> str:
    """A fresh name for topics, groups and databases, so tests never see each other's data."""
    return f"t{uuid.uuid4().hex[:12]}"
