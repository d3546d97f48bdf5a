"""Message helpers of the domain."""

from __future__ import annotations

from datetime import timedelta

from _helpers import COMPANY, PLAY, T0

from flow8_streams.domain.messages import FlowletResult, Task


def test_a_failure_of_a_task_that_never_ran_starts_and_ends_now_and_is_retryable() -> None:
    task = Task(
        play_id=PLAY, company_id=COMPANY, flowlet="f", attempt=2, module_ref="echo", timeout_ms=1000, deadline=T0
    )
    result = FlowletResult.failure(task, "channel_lost: closed", now=T0)
    assert (result.play_id, result.company_id, result.flowlet, result.attempt) == (PLAY, COMPANY, "f", 2)
    assert (result.ok, result.output, result.error, result.retryable) == (False, None, "channel_lost: closed", True)
    assert result.started_at == result.ended_at == T0


def test_a_failure_by_ids_keeps_when_it_started() -> None:
    started = T0 - timedelta(seconds=3)
    result = FlowletResult.failure((PLAY, COMPANY, "f", 1), "cancelled", now=T0, started_at=started, retryable=False)
    assert (result.play_id, result.company_id, result.flowlet, result.attempt) == (PLAY, COMPANY, "f", 1)
    assert (result.started_at, result.ended_at, result.retryable) == (started, T0, False)
