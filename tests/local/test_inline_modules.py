"""Inline modules (quick and pure) run in place on the embedded runtime: a flowlet's result
is decided in the same decision, and committed in the same transaction, as the event that
scheduled it; any other module still goes out as a task."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from flow8_streams.domain import events as ev
from flow8_streams.domain.flow import FlowDefinition
from flow8_streams.domain.state import FlowletStatus, PlayStatus
from flow8_streams.modules.context import ModuleContext
from flow8_streams.modules.registry import ModuleRegistry
from flow8_streams.runtimes.local import LocalRuntime
from flow8_streams.stores.sqlite import SqliteStore


def buggy(ctx: ModuleContext) -> Any:
    raise RuntimeError("boom")


buggy.flow8_inline = True  # type: ignore[attr-defined]


def flow(*flowlets: dict[str, Any]) -> FlowDefinition:
    return FlowDefinition.model_validate({"name": "f", "flowlets": list(flowlets)})


class Recorded:
    """The runtime and the batches of events it committed, one list per transaction."""

    def __init__(self, runtime: LocalRuntime) -> None:
        self.runtime = runtime
        self.batches: list[list[tuple[str, str | None]]] = []
        runtime.subscribe(self._on_commit)

    def _on_commit(self, events: Sequence[ev.Event]) -> None:
        self.batches.append([(e.type, getattr(e.payload, "flowlet", None)) for e in events])


@pytest.fixture
async def recorded(tmp_path: Path, no_leaked_tasks: None) -> AsyncIterator[Recorded]:
    store = SqliteStore(tmp_path / "flow8.db")
    registry = ModuleRegistry.default(entry_points=False)
    registry.register("buggy", buggy)
    try:
        async with LocalRuntime(store, registry) as runtime:
            yield Recorded(runtime)
    finally:
        store.close()


async def test_a_play_of_inline_modules_is_one_transaction_whose_chain_verifies(recorded: Recorded) -> None:
    diamond = flow(
        {"name": "a", "module_ref": "echo", "input": {"v": "${input.v}"}},
        {"name": "b", "module_ref": "noop", "depends_on": ["a"]},
        {"name": "c", "module_ref": "transform", "depends_on": ["a"], "input": {"a": "${flowlets.a.output.v}"}},
        {"name": "d", "module_ref": "echo", "depends_on": ["b", "c"], "input": {"c": "${flowlets.c.output}"}},
    )
    final = await recorded.runtime.run(diamond, {"v": 7}, company_id="acme", play_id="p1")

    assert final.status is PlayStatus.SUCCEEDED
    assert final.output == {"d": {"c": {"a": 7}}}
    assert recorded.batches == [
        [
            ("PlayStarted", None),
            ("FlowletScheduled", "a"),
            ("FlowletCompleted", "a"),
            ("FlowletScheduled", "b"),
            ("FlowletScheduled", "c"),
            ("FlowletCompleted", "b"),
            ("FlowletCompleted", "c"),
            ("FlowletScheduled", "d"),
            ("FlowletCompleted", "d"),
            ("PlayCompleted", None),
        ]
    ]
    events = await recorded.runtime.store.log.read("p1")
    assert ev.verify_chain(events) == []
    for event in events:  # each result is decided once it is there: no attempt ends after its record
        if isinstance(event, ev.FlowletCompleted):
            assert event.payload.started_at <= event.payload.ended_at <= event.at
    assert recorded.runtime.store.plays.get_sync("p1") == final


async def test_a_module_that_is_not_inline_still_runs_as_a_task_between_two_transactions(recorded: Recorded) -> None:
    mixed = flow(
        {"name": "a", "module_ref": "noop"},
        {"name": "b", "module_ref": "sleep", "depends_on": ["a"], "input": {"seconds": 0}},
        {"name": "c", "module_ref": "noop", "depends_on": ["b"]},
    )
    final = await recorded.runtime.run(mixed, company_id="acme", play_id="p2")

    assert final.status is PlayStatus.SUCCEEDED
    assert recorded.batches == [
        [("PlayStarted", None), ("FlowletScheduled", "a"), ("FlowletCompleted", "a"), ("FlowletScheduled", "b")],
        [("FlowletCompleted", "b"), ("FlowletScheduled", "c"), ("FlowletCompleted", "c"), ("PlayCompleted", None)],
    ]


async def test_an_inline_retry_without_backoff_runs_in_the_same_decision(recorded: Recorded) -> None:
    retried = flow(
        {"name": "a", "module_ref": "fail", "input": {"times": 1}, "retry": {"max_attempts": 2, "backoff_ms": 0}}
    )
    final = await recorded.runtime.run(retried, company_id="acme", play_id="p3")

    assert final.status is PlayStatus.SUCCEEDED
    assert final.flowlets["a"].attempts == 2
    assert [kind for kind, _ in recorded.batches[0]] == [
        "PlayStarted",
        "FlowletScheduled",
        "FlowletFailed",
        "FlowletRetryScheduled",
        "FlowletScheduled",
        "FlowletCompleted",
        "PlayCompleted",
    ]


async def test_an_inline_module_that_raises_fails_its_flowlet_and_the_runtime_goes_on(recorded: Recorded) -> None:
    final = await recorded.runtime.run(flow({"name": "a", "module_ref": "buggy"}), company_id="acme", play_id="p4")

    assert final.status is PlayStatus.FAILED
    assert final.flowlets["a"].status is FlowletStatus.FAILED
    assert final.flowlets["a"].error == "RuntimeError: boom"
    after = await recorded.runtime.run(flow({"name": "a", "module_ref": "noop"}), company_id="acme", play_id="p5")
    assert after.status is PlayStatus.SUCCEEDED
