"""Every input is bounded before anything is written: flows, inputs, outputs, rendered
templates, a play's whole state, and the cost of checking a flow."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from flow8_streams.domain.bounded import TooDeep, check_depth
from flow8_streams.domain.flow import FlowDefinition
from flow8_streams.domain.limits import Limits
from flow8_streams.domain.messages import FlowletResult, Start
from flow8_streams.domain.state import FlowletStatus, PlayStatus
from flow8_streams.engine import step
from flow8_streams.errors import InvalidFlow, LimitExceeded
from flow8_streams.modules.registry import ModuleRegistry
from flow8_streams.runtimes.local import LocalRuntime
from flow8_streams.stores.sqlite import SqliteStore

T0 = datetime(2026, 1, 1, tzinfo=UTC)
SMALL = Limits(max_output_bytes=1000, max_rendered_bytes=2000, max_state_bytes=5000, max_input_bytes=1000)


def flow(*flowlets: dict[str, Any], name: str = "f") -> FlowDefinition:
    return FlowDefinition.model_validate({"name": name, "flowlets": list(flowlets)})


def chain(n: int, *, templated: bool = True) -> FlowDefinition:
    flowlets = [{"name": "f0", "module_ref": "echo", "input": {"x": 1}}]
    for i in range(1, n):
        spec: dict[str, Any] = {"name": f"f{i}", "module_ref": "echo", "depends_on": [f"f{i - 1}"]}
        if templated:
            spec["input"] = {"x": f"${{flowlets.f{i - 1}.output}}"}
        flowlets.append(spec)
    return flow(*flowlets, name="chain")


def ok(flowlet: str, output: Any, attempt: int = 1) -> FlowletResult:
    return FlowletResult(
        play_id="p", company_id="acme", flowlet=flowlet, attempt=attempt, ok=True, output=output,
        started_at=T0, ended_at=T0,
    )  # fmt: skip


# ---------------------------------------------------------------- flows


def test_a_flow_over_max_flowlets_is_refused_by_check() -> None:
    with pytest.raises(InvalidFlow, match=r"1001 flowlets, over the limit of 1000 \(limits.max_flowlets\)"):
        chain(1001, templated=False).check()


def test_check_of_a_10000_flowlet_chain_is_near_linear() -> None:
    """Was 12.8 s and 2.4 GB (ancestors as sets). Printed, not asserted on time."""
    big = chain(10_000)
    t0 = time.perf_counter()
    big.check(limits=Limits(max_flowlets=10_000))
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    big.check(limits=Limits(max_flowlets=10_000))
    again = time.perf_counter() - t0
    print(f"check() of a 10,000-flowlet chain: {first * 1000:.0f} ms, again (cached): {again * 1000:.2f} ms")


def test_check_still_refuses_a_reference_to_a_non_ancestor() -> None:
    bad = flow(
        {"name": "a", "module_ref": "echo"},
        {"name": "b", "module_ref": "echo"},
        {"name": "c", "module_ref": "echo", "depends_on": ["a"], "input": {"x": "${flowlets.b.output}"}},
    )
    with pytest.raises(InvalidFlow, match="not one of its ancestors"):
        bad.check()


def test_check_depth_counts_levels_without_recursion() -> None:
    deep: Any = 1
    for _ in range(100_000):  # far past Python's recursion limit
        deep = [deep]
    with pytest.raises(TooDeep, match="deeper than the limit of 64"):
        check_depth(deep, 64)
    shallow: Any = {"a": [{"b": [1]}]}
    check_depth(shallow, 4)
    with pytest.raises(TooDeep):
        check_depth(shallow, 3)


# ---------------------------------------------------------------- the engine


def test_an_output_over_the_limit_fails_its_flowlet_and_is_not_recorded() -> None:
    f = flow({"name": "a", "module_ref": "noop"}, {"name": "b", "module_ref": "noop", "depends_on": ["a"]})
    _, state = step(None, Start(play_id="p", company_id="acme", flow=f, input={}), T0, SMALL)
    events, state = step(state, ok("a", "x" * 2000), T0, SMALL)
    assert state is not None
    assert [e.type for e in events] == ["FlowletFailed", "FlowletSkipped", "PlayFailed"]
    failed = events[0].payload
    assert failed.error.startswith("output_too_large: flowlet 'a' returned 2002 bytes")  # type: ignore[union-attr]
    assert failed.retryable is False  # type: ignore[union-attr]
    assert state.flowlets["a"].output is None
    assert "x" * 2000 not in state.model_dump_json()


def test_outputs_that_would_overflow_the_plays_state_fail_the_flowlet_that_tips_it() -> None:
    names = [f"s{i}" for i in range(8)]
    f = flow(*({"name": n, "module_ref": "noop"} for n in names))
    _, state = step(None, Start(play_id="p", company_id="acme", flow=f, input={}), T0, SMALL)
    errors = []
    for name in names:
        events, after = step(state, ok(name, "y" * 900), T0, SMALL)
        state = after or state
        errors += [e.payload.error for e in events if e.type == "FlowletFailed"]  # type: ignore[union-attr]
    assert state is not None and state.status is PlayStatus.FAILED
    assert len(errors) == 1 and "limits.max_state_bytes" in errors[0]
    assert state.held_bytes <= SMALL.max_state_bytes


def test_a_template_that_doubles_per_flowlet_stops_at_the_rendered_limit() -> None:
    """Was a 168 MB db from a 3 KB flow; now the flowlet that would pass the limit fails."""
    flowlets: list[dict[str, Any]] = [{"name": "d0", "module_ref": "echo", "input": {"s": "${input.s}"}}]
    for i in range(1, 40):
        prev = f"${{flowlets.d{i - 1}.output.s}}"
        flowlets.append({"name": f"d{i}", "module_ref": "echo", "depends_on": [f"d{i - 1}"], "input": {"s": prev * 2}})
    f = flow(*flowlets).check()
    limits = Limits(max_rendered_bytes=2000, max_output_bytes=100_000, max_state_bytes=1_000_000)
    events, state = step(None, Start(play_id="p", company_id="acme", flow=f, input={"s": "ab"}), T0, limits)
    for _ in range(40):
        assert state is not None
        running = [n for n, fs in state.flowlets.items() if fs.status is FlowletStatus.SCHEDULED]
        if not running:
            break
        name = running[0]
        new, state = step(state, ok(name, state.flowlets[name].task_input), T0, limits)
        events += new
    assert state is not None and state.status is PlayStatus.FAILED
    failure = next(e for e in events if e.type == "FlowletFailed")
    assert "limits.max_rendered_bytes" in failure.payload.error  # type: ignore[union-attr]
    assert failure.payload.retryable is False  # type: ignore[union-attr]
    written = [len(e.payload.model_dump_json()) for e in events if e.type != "PlayStarted"]
    assert max(written) < 2 * limits.max_rendered_bytes


# ---------------------------------------------------------------- the embedded runtime


@pytest.fixture
async def runtime(tmp_path: Path, no_leaked_tasks: None) -> AsyncIterator[LocalRuntime]:
    store = SqliteStore(tmp_path / "flow8.db")
    registry = ModuleRegistry.default(entry_points=False)
    registry.register("big", lambda ctx: "z" * 300_000)
    try:
        async with LocalRuntime(store, registry) as rt:
            yield rt
    finally:
        store.close()


async def test_local_refuses_an_input_over_the_limit_before_writing(runtime: LocalRuntime) -> None:
    play = f"p-{uuid.uuid4().hex[:8]}"
    with pytest.raises(LimitExceeded, match=r"over the limit of 262144 \(limits.max_input_bytes\)"):
        await runtime.start(flow({"name": "a", "module_ref": "echo"}), {"blob": "x" * 300_000}, company_id="acme",
                            play_id=play)  # fmt: skip
    assert runtime.state(play) is None
    assert await runtime.store.log.read(play) == []


async def test_local_output_too_large_fails_cleanly(runtime: LocalRuntime) -> None:
    play = f"p-{uuid.uuid4().hex[:8]}"
    final = await runtime.run(flow({"name": "a", "module_ref": "big"}), {}, company_id="acme", play_id=play)
    assert final.status is PlayStatus.FAILED
    assert final.flowlets["a"].error is not None
    assert final.flowlets["a"].error.startswith("output_too_large: flowlet 'a' returned 300002 bytes")
    events = await runtime.store.log.read(play)
    assert all(len(e.model_dump_json()) < 10_000 for e in events)
