"""The engine's inputs commit soon after they are done, not on faust's commit timer.

With ``commit_interval_ms`` at its longest (60 s), a worker that committed only on the timer
would show no play's progress for a minute: every event and task waits in an open
transaction. Plays here cross every hop (command, task, completion) and must each finish
within the harness's event timeout (20 s).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from flow8_streams.domain.state import PlayStatus
from tests.conformance.harness import EVENT_TIMEOUT_S
from tests.conformance.streams_harness import StreamsHarness, WorkerGroup

from .support import fl, make_flow, running_group

pytestmark = [pytest.mark.kafka, pytest.mark.mongo, pytest.mark.slow]

LONGEST_INTERVAL_MS = 60_000
FLOW = make_flow(
    "hops",
    fl("start", "echo", input={"n": "${input.n}"}),
    fl("wait", "sleep", "start", input={"seconds": 0.01}),  # a task through the executor
    fl("done", "echo", "wait", input={"n": "${flowlets.start.output.n}"}),
)


@pytest.fixture(scope="module")
def worker_group(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WorkerGroup]:
    """This module's workers (``harness`` in conftest.py runs over them): the longest timer."""
    env = {"FLOW8_COMMIT_INTERVAL_MS": str(LONGEST_INTERVAL_MS), "FLOW8_COMMIT_LINGER_MS": "2"}
    with running_group(tmp_path_factory.mktemp("commits"), extra_env=env) as group:
        yield group


async def test_plays_finish_long_before_the_commit_timer_fires(harness: StreamsHarness) -> None:
    assert EVENT_TIMEOUT_S < LONGEST_INTERVAL_MS / 1000  # no play could wait for the timer
    for n in range(3):
        play_id = str(uuid.uuid4())
        final = await harness.run(FLOW, {"n": n}, company_id=f"co-{uuid.uuid4().hex[:8]}", play_id=play_id)
        assert final.status is PlayStatus.SUCCEEDED
        assert final.flowlets["done"].output == {"n": n}
