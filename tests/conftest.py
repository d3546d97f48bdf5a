"""Fixtures shared by every test directory.

A test must leave nothing running behind it: a thread it started that is still
alive fails the test (every test), and so does an asyncio task still pending when
a runtime fixture has closed (fixtures that ask for ``no_leaked_tasks``).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO


@pytest.fixture(autouse=True)
def no_leaked_threads() -> Iterator[None]:
    before = set(threading.enumerate())
    yield
    leaked = [t for t in threading.enumerate() if t not in before and t.is_alive()]
    for thread in leaked:
        thread.join(timeout=1.0)  # one that is finishing anyway gets a moment
    leaked = [t for t in leaked if t.is_alive()]
    assert not leaked, f"the test left threads running: {[t.name for t in leaked]}"


@pytest.fixture
async def no_leaked_tasks() -> AsyncIterator[None]:
    """Request it before a fixture that runs a runtime: its check runs after that fixture closed."""
    yield
    current = asyncio.current_task()
    pending = [t for t in asyncio.all_tasks() if t is not current and not t.done()]
    assert not pending, f"the test left asyncio tasks running: {sorted(t.get_name() for t in pending)}"
