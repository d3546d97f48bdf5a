"""The conformance scenarios on the embedded runtime (LocalRuntime + SQLite)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from .harness import LocalHarness
from .scenarios import RuntimeScenarios


class TestLocalRuntime(RuntimeScenarios):
    @pytest.fixture
    async def harness(self, tmp_path: Path, no_leaked_tasks: None) -> AsyncIterator[LocalHarness]:
        harness = await LocalHarness(tmp_path / "flow8.db").open()
        try:
            yield harness
        finally:
            await harness.close()
