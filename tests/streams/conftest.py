"""Fixtures of the streams tests: one worker for a test module, and a harness over it."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest

from tests.conformance.streams_harness import StreamsHarness, WorkerGroup

from .support import running_group


@pytest.fixture(scope="module")
def worker_group(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WorkerGroup]:
    with running_group(tmp_path_factory.mktemp("workers")) as group:
        yield group


@pytest.fixture
async def harness(worker_group: WorkerGroup, no_leaked_tasks: None) -> AsyncIterator[StreamsHarness]:
    async with StreamsHarness(worker_group) as harness:
        yield harness
