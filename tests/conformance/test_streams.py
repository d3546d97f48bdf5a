"""The conformance scenarios on the streams runtime: a real ``flow8 worker`` on Kafka + MongoDB."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest

from tests.streams.support import running_group

from .scenarios import RuntimeScenarios
from .streams_harness import StreamsHarness, WorkerGroup

pytestmark = [pytest.mark.kafka, pytest.mark.mongo, pytest.mark.slow]


@pytest.fixture(scope="module")
def worker_group(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WorkerGroup]:
    with running_group(tmp_path_factory.mktemp("workers")) as group:
        yield group


class TestStreamsRuntime(RuntimeScenarios):
    @pytest.fixture
    async def harness(self, worker_group: WorkerGroup, no_leaked_tasks: None) -> AsyncIterator[StreamsHarness]:
        harness = await StreamsHarness(worker_group).open()
        try:
            yield harness
            assert harness.tap.duplicates == [], "a (play_id, seq) appeared twice in flow8.events"
        finally:
            await harness.close()
