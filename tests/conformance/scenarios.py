"""Runtime-agnostic scenarios: every runtime must produce these histories.

A runtime joins by subclassing ``RuntimeScenarios`` and overriding the ``harness``
fixture (see ``test_local.py``). The scenarios touch the runtime only through
``Harness``; they never sleep to synchronise, they await events.

Histories are compared per flowlet (``per_flowlet_sequence``): parallel flowlets
may interleave differently on another runtime, but each flowlet's own history,
and the causal order between flowlets, may not.
"""

from __future__ import annotations

import asyncio
import itertools
import uuid
from collections.abc import AsyncIterator, Iterable
from datetime import timedelta
from typing import Any

import pytest

from flow8_streams.domain.events import TERMINAL_EVENT_TYPES, Event, verify_chain
from flow8_streams.domain.flow import FlowDefinition
from flow8_streams.domain.state import FlowletStatus, PlayState, PlayStatus
from flow8_streams.engine import fold
from flow8_streams.modules import builtin

from .harness import EventPredicate, Harness

Step = tuple[str, str | None, int | None]

# ---------------------------------------------------------------- helpers


def make_flow(name: str, *flowlets: dict[str, Any]) -> FlowDefinition:
    """A validated flow of built-in modules."""
    return FlowDefinition.model_validate({"name": name, "flowlets": list(flowlets)}).check(builtin.MODULES)


def fl(name: str, module: str, *depends_on: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "module_ref": module, "depends_on": list(depends_on), **extra}


def per_flowlet_sequence(events: Iterable[Event]) -> dict[str | None, list[Step]]:
    """Each flowlet's history as ``(type, flowlet, attempt)``; play-level events under ``None``.

    ``attempt`` is None for events without one (FlowletSkipped, the play's own events).
    """
    out: dict[str | None, list[Step]] = {}
    for event in events:
        flowlet = getattr(event.payload, "flowlet", None) if event.type.startswith("Flowlet") else None
        attempt = getattr(event.payload, "attempt", None)
        out.setdefault(flowlet, []).append((event.type, flowlet, attempt))
    return out


def ok_steps(name: str) -> list[Step]:
    return [("FlowletScheduled", name, 1), ("FlowletCompleted", name, 1)]


def find(events: Iterable[Event], type_: str, flowlet: str | None = None, attempt: int | None = None) -> Event:
    """The one event of ``type_`` (for ``flowlet`` / ``attempt`` when given)."""
    found = [
        e
        for e in events
        if e.type == type_
        and (flowlet is None or getattr(e.payload, "flowlet", None) == flowlet)
        and (attempt is None or getattr(e.payload, "attempt", None) == attempt)
    ]
    assert len(found) == 1, f"expected one {type_} {flowlet or ''} {attempt or ''}, found {len(found)}"
    return found[0]


def is_event(type_: str, flowlet: str | None = None) -> EventPredicate:
    def predicate(event: Event) -> bool:
        return event.type == type_ and (flowlet is None or getattr(event.payload, "flowlet", None) == flowlet)

    return predicate


async def check_history(h: Harness, final: PlayState) -> list[Event]:
    """What every finished play must satisfy; returns its events.

    The history chains from genesis with no gaps, starts once and ends once, and
    both its fold and the stored projection equal the runtime's final state.
    """
    assert final.finished, f"play {final.play_id} is still {final.status}"
    events = await h.events(final.play_id)
    assert events, f"no events for play {final.play_id}"
    assert verify_chain(events) == []
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    assert {(e.play_id, e.company_id, e.flow_id, e.flow_version) for e in events} == {
        (final.play_id, final.company_id, final.flow.name, final.flow.version)
    }
    types = [e.type for e in events]
    assert types[0] == "PlayStarted" and types.count("PlayStarted") == 1
    assert types[-1] in TERMINAL_EVENT_TYPES and sum(t in TERMINAL_EVENT_TYPES for t in types) == 1
    assert fold(events) == final
    assert await h.projection(final.company_id, final.play_id) == final
    return events


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


# ---------------------------------------------------------------- the suite


class RuntimeScenarios:
    """The scenarios. Subclass with a ``harness`` fixture yielding a ready ``Harness``."""

    @pytest.fixture
    async def harness(self) -> AsyncIterator[Harness]:  # pragma: no cover - overridden
        raise NotImplementedError(f"{type(self).__name__} must override the `harness` fixture")
        yield

    @pytest.fixture
    def company(self) -> str:
        return new_id("co")

    @pytest.fixture
    def play_id(self) -> str:
        return new_id("play")

    # ------------------------------------------------------------ shapes

    async def test_diamond(self, harness: Harness, company: str, play_id: str) -> None:
        flow = make_flow(
            "diamond",
            fl("a", "transform", input={"v": "${input.v}"}),
            fl("b", "transform", "a", input={"left": "${flowlets.a.output.v}"}),
            fl("c", "transform", "a", input={"right": "${flowlets.a.output.v}"}),
            fl("d", "transform", "b", "c", input={"b": "${flowlets.b.output}", "c": "${flowlets.c.output}"}),
        )
        final = await harness.run(flow, {"v": 7}, company_id=company, play_id=play_id)

        assert final.status is PlayStatus.SUCCEEDED
        expected_output = {"d": {"b": {"left": 7}, "c": {"right": 7}}}
        assert final.output == expected_output
        events = await check_history(harness, final)
        assert find(events, "PlayCompleted").payload.output == expected_output

        steps = per_flowlet_sequence(events)
        assert steps == {
            None: [("PlayStarted", None, None), ("PlayCompleted", None, None)],
            "a": ok_steps("a"),
            "b": ok_steps("b"),
            "c": ok_steps("c"),
            "d": ok_steps("d"),
        }
        done_a = find(events, "FlowletCompleted", "a").seq
        assert done_a < find(events, "FlowletScheduled", "b").seq
        assert done_a < find(events, "FlowletScheduled", "c").seq
        scheduled_d = find(events, "FlowletScheduled", "d").seq
        assert find(events, "FlowletCompleted", "b").seq < scheduled_d
        assert find(events, "FlowletCompleted", "c").seq < scheduled_d
        assert {n: (f.status, f.attempts) for n, f in final.flowlets.items()} == {
            n: (FlowletStatus.SUCCEEDED, 1) for n in "abcd"
        }

    async def test_fan_out_200(self, harness: Harness, company: str, play_id: str) -> None:
        width = 200
        children = [f"w{i:03d}" for i in range(width)]
        flow = make_flow(
            "fan-out",
            fl("root", "transform", input={"seed": "${input.seed}"}),
            *(
                fl(n, "transform", "root", input={"i": i, "seed": "${flowlets.root.output.seed}"})
                for i, n in enumerate(children)
            ),
            fl("join", "echo", *children),
        )
        final = await harness.run(flow, {"seed": "s"}, company_id=company, play_id=play_id)

        assert final.status is PlayStatus.SUCCEEDED
        assert final.output == {
            "join": {"input": {"seed": "s"}, "deps": {n: {"i": i, "seed": "s"} for i, n in enumerate(children)}}
        }
        events = await check_history(harness, final)
        assert len(events) == 2 + 2 * (width + 2)
        steps = per_flowlet_sequence(events)
        assert steps == {
            None: [("PlayStarted", None, None), ("PlayCompleted", None, None)],
            **{n: ok_steps(n) for n in ["root", *children, "join"]},
        }
        scheduled = [find(events, "FlowletScheduled", n).seq for n in children]
        completed = [find(events, "FlowletCompleted", n).seq for n in children]
        # the children are released together by the root's completion, not one by one
        assert find(events, "FlowletCompleted", "root").seq < min(scheduled)
        assert max(scheduled) < min(completed)
        assert max(completed) < find(events, "FlowletScheduled", "join").seq

    async def test_chain_100(self, harness: Harness, company: str, play_id: str) -> None:
        length = 100
        names = [f"s{i:03d}" for i in range(length)]
        flow = make_flow(
            "chain",
            fl(names[0], "transform", input={"i": 0}),
            *(
                fl(
                    names[i],
                    "transform",
                    names[i - 1],
                    input={"i": i, "prev": f"${{flowlets.{names[i - 1]}.output.i}}"},
                )
                for i in range(1, length)
            ),
        )
        final = await harness.run(flow, {}, company_id=company, play_id=play_id)

        assert final.status is PlayStatus.SUCCEEDED
        assert final.output == {names[-1]: {"i": length - 1, "prev": length - 2}}
        events = await check_history(harness, final)
        assert len(events) == 2 + 2 * length
        steps = per_flowlet_sequence(events)
        assert steps == {
            None: [("PlayStarted", None, None), ("PlayCompleted", None, None)],
            **{n: ok_steps(n) for n in names},
        }
        # strictly one after the other: each step is scheduled only after its parent completed
        for parent, child in itertools.pairwise(names):
            assert find(events, "FlowletCompleted", parent).seq < find(events, "FlowletScheduled", child).seq
        assert [final.flowlets[n].output["i"] for n in names] == list(range(length))

    async def test_independent_flowlets_run_in_parallel(self, harness: Harness, company: str, play_id: str) -> None:
        flow = make_flow(
            "parallel",
            fl("a", "sleep", input={"seconds": 1}),
            fl("b", "sleep", input={"seconds": 1}),
        )
        final = await harness.run(flow, {}, company_id=company, play_id=play_id)

        assert final.status is PlayStatus.SUCCEEDED
        events = await check_history(harness, final)
        a = find(events, "FlowletCompleted", "a").payload
        b = find(events, "FlowletCompleted", "b").payload
        # event-loop timers have millisecond resolution and may fire a hair early
        assert a.ended_at - a.started_at >= timedelta(seconds=0.99)
        assert b.ended_at - b.started_at >= timedelta(seconds=0.99)
        # the execution intervals overlap: each started before the other ended
        assert b.started_at < a.ended_at, (a, b)
        assert a.started_at < b.ended_at, (a, b)

    async def test_many_plays_at_once(self, harness: Harness, company: str) -> None:
        flow = make_flow(
            "many",
            fl("a", "transform", input={"n": "${input.n}"}),
            fl("b", "transform", "a", input={"n": "${flowlets.a.output.n}"}),
            fl("c", "transform", "a", input={"m": "${flowlets.a.output.n}"}),
            fl("d", "transform", "b", "c", input={"n": "${flowlets.b.output.n}", "m": "${flowlets.c.output.m}"}),
        )
        ids = [new_id(f"p{n}") for n in range(40)]
        finals = await asyncio.gather(
            *(harness.run(flow, {"n": n}, company_id=company, play_id=pid) for n, pid in enumerate(ids))
        )
        assert [f.play_id for f in finals] == ids
        assert [f.output for f in finals] == [{"d": {"n": n, "m": n}} for n in range(len(ids))]
        for final in finals:
            assert final.status is PlayStatus.SUCCEEDED
            await check_history(harness, final)

    # ------------------------------------------------------------ failures

    async def test_retry_then_success(self, harness: Harness, company: str, play_id: str) -> None:
        flow = make_flow(
            "retry",
            fl(
                "flaky",
                "fail",
                input={"times": 2, "message": "flaky"},
                retry={"max_attempts": 3, "backoff_ms": 10, "multiplier": 1},
            ),
            fl("after", "transform", "flaky", input={"got": "${flowlets.flaky.output.times}"}),
        )
        final = await harness.run(flow, {}, company_id=company, play_id=play_id)

        assert final.status is PlayStatus.SUCCEEDED
        assert final.output == {"after": {"got": 2}}
        events = await check_history(harness, final)
        steps = per_flowlet_sequence(events)
        assert steps["flaky"] == [
            ("FlowletScheduled", "flaky", 1),
            ("FlowletFailed", "flaky", 1),
            ("FlowletRetryScheduled", "flaky", 2),
            ("FlowletScheduled", "flaky", 2),
            ("FlowletFailed", "flaky", 2),
            ("FlowletRetryScheduled", "flaky", 3),
            ("FlowletScheduled", "flaky", 3),
            ("FlowletCompleted", "flaky", 3),
        ]
        assert steps["after"] == ok_steps("after")
        for attempt in (1, 2):
            failed = find(events, "FlowletFailed", "flaky", attempt).payload
            assert "flaky" in failed.error and failed.retryable
            retry = find(events, "FlowletRetryScheduled", "flaky", attempt + 1)
            assert retry.payload.backoff_ms == 10
            # the backoff is honoured: the next attempt is not scheduled before it is due
            assert find(events, "FlowletScheduled", "flaky", attempt + 1).at >= retry.payload.due_at
        flaky = final.flowlets["flaky"]
        assert (flaky.status, flaky.attempts, flaky.error) == (FlowletStatus.SUCCEEDED, 3, None)

    async def test_retries_exhausted(self, harness: Harness, company: str, play_id: str) -> None:
        flow = make_flow(
            "exhausted",
            fl("root", "echo"),
            fl("bad", "fail", "root", input={"message": "boom"}, retry={"max_attempts": 2, "backoff_ms": 10}),
            fl("down", "echo", "bad"),
            fl("further", "echo", "down"),
        )
        final = await harness.run(flow, {}, company_id=company, play_id=play_id)

        assert final.status is PlayStatus.FAILED
        assert final.output is None
        assert final.error is not None and "'bad'" in final.error and "boom" in final.error
        assert "2 attempts" in final.error
        events = await check_history(harness, final)
        assert find(events, "PlayFailed").payload.flowlet == "bad"
        assert per_flowlet_sequence(events) == {
            None: [("PlayStarted", None, None), ("PlayFailed", None, None)],
            "root": ok_steps("root"),
            "bad": [
                ("FlowletScheduled", "bad", 1),
                ("FlowletFailed", "bad", 1),
                ("FlowletRetryScheduled", "bad", 2),
                ("FlowletScheduled", "bad", 2),
                ("FlowletFailed", "bad", 2),
            ],
            "down": [("FlowletSkipped", "down", None)],
            "further": [("FlowletSkipped", "further", None)],
        }
        statuses = {n: f.status for n, f in final.flowlets.items()}
        assert statuses == {
            "root": FlowletStatus.SUCCEEDED,
            "bad": FlowletStatus.FAILED,
            "down": FlowletStatus.SKIPPED,
            "further": FlowletStatus.SKIPPED,
        }
        assert final.flowlets["bad"].attempts == 2

    async def test_non_retryable_failure_is_not_retried(self, harness: Harness, company: str, play_id: str) -> None:
        flow = make_flow(
            "non-retryable",
            fl("bad", "fail", input={"times": "not a number"}, retry={"max_attempts": 5, "backoff_ms": 10}),
        )
        final = await harness.run(flow, {}, company_id=company, play_id=play_id)

        assert final.status is PlayStatus.FAILED
        events = await check_history(harness, final)
        assert per_flowlet_sequence(events)["bad"] == [("FlowletScheduled", "bad", 1), ("FlowletFailed", "bad", 1)]
        failed = find(events, "FlowletFailed", "bad").payload
        assert failed.retryable is False and "'times'" in failed.error

    async def test_timeout(self, harness: Harness, company: str, play_id: str) -> None:
        flow = make_flow(
            "timeout",
            fl("slow", "sleep", input={"seconds": 30}, timeout="300ms"),
            fl("after", "echo", "slow"),
        )
        final = await harness.run(flow, {}, company_id=company, play_id=play_id)

        assert final.status is PlayStatus.FAILED
        assert final.error is not None and "'slow'" in final.error
        events = await check_history(harness, final)
        assert per_flowlet_sequence(events) == {
            None: [("PlayStarted", None, None), ("PlayFailed", None, None)],
            "slow": [("FlowletScheduled", "slow", 1), ("FlowletTimedOut", "slow", 1)],
            "after": [("FlowletSkipped", "after", None)],
        }
        timed_out = find(events, "FlowletTimedOut", "slow")
        assert timed_out.payload.timeout_ms == 300
        scheduled = find(events, "FlowletScheduled", "slow")
        assert scheduled.payload.deadline == scheduled.at + timedelta(milliseconds=300)
        # not before the deadline, and long before the module's 30 s would have ended
        assert timed_out.at >= scheduled.payload.deadline
        assert find(events, "PlayFailed").at - find(events, "PlayStarted").at < timedelta(seconds=30)
        assert find(events, "PlayFailed").payload.flowlet == "slow"
        slow = final.flowlets["slow"]
        assert slow.status is FlowletStatus.TIMED_OUT and slow.error is not None and "300 ms" in slow.error
        assert final.flowlets["after"].status is FlowletStatus.SKIPPED

    async def test_skip_on_failure(self, harness: Harness, company: str, play_id: str) -> None:
        flow = make_flow(
            "skip",
            fl("root", "echo"),
            fl("breaks", "fail", "root", input={"message": "broken"}),
            fl("sibling", "sleep", "root", input={"seconds": 30}),
            fl("join", "echo", "breaks", "sibling"),
            fl("tail", "echo", "join"),
        )
        final = await harness.run(flow, {}, company_id=company, play_id=play_id)

        assert final.status is PlayStatus.FAILED
        events = await check_history(harness, final)
        assert per_flowlet_sequence(events) == {
            None: [("PlayStarted", None, None), ("PlayFailed", None, None)],
            "root": ok_steps("root"),
            "breaks": [("FlowletScheduled", "breaks", 1), ("FlowletFailed", "breaks", 1)],
            "sibling": [("FlowletScheduled", "sibling", 1), ("FlowletCancelled", "sibling", 1)],
            "join": [("FlowletSkipped", "join", None)],
            "tail": [("FlowletSkipped", "tail", None)],
        }
        for name in ("join", "tail"):
            assert "'breaks'" in find(events, "FlowletSkipped", name).payload.reason
        assert "'breaks'" in find(events, "FlowletCancelled", "sibling").payload.reason
        assert {n: f.status for n, f in final.flowlets.items()} == {
            "root": FlowletStatus.SUCCEEDED,
            "breaks": FlowletStatus.FAILED,
            "sibling": FlowletStatus.CANCELLED,
            "join": FlowletStatus.SKIPPED,
            "tail": FlowletStatus.SKIPPED,
        }

    # ------------------------------------------------------------ cancel

    async def test_cancel(self, harness: Harness, company: str, play_id: str) -> None:
        flow = make_flow(
            "cancel",
            fl("nap", "sleep", input={"seconds": 30}),
            fl("then", "echo", "nap"),
        )
        await harness.start(flow, {}, company_id=company, play_id=play_id)
        await harness.wait_for_event(play_id, is_event("FlowletScheduled", "nap"))
        await harness.cancel(play_id, company)
        final = await harness.wait(play_id)

        assert final.status is PlayStatus.CANCELLED
        events = await check_history(harness, final)
        assert per_flowlet_sequence(events) == {
            None: [("PlayStarted", None, None), ("PlayCancelled", None, None)],
            "nap": [("FlowletScheduled", "nap", 1), ("FlowletCancelled", "nap", 1)],
            "then": [("FlowletSkipped", "then", None)],
        }
        assert final.error == find(events, "PlayCancelled").payload.reason
        assert final.flowlets["nap"].status is FlowletStatus.CANCELLED
        assert final.flowlets["then"].status is FlowletStatus.SKIPPED

    async def test_cancel_of_finished_or_unknown_play_changes_nothing(
        self, harness: Harness, company: str, play_id: str
    ) -> None:
        flow = make_flow("quick", fl("a", "echo"))
        final = await harness.run(flow, {}, company_id=company, play_id=play_id)
        before = await check_history(harness, final)
        unknown = new_id("unknown")

        await harness.cancel(play_id, company)
        await harness.cancel(unknown, company)
        # A company's commands are handled in order: once a later play of the same
        # company has finished, both cancels have been handled.
        later = await harness.run(flow, {}, company_id=company, play_id=new_id("later"))
        assert later.status is PlayStatus.SUCCEEDED
        await check_history(harness, later)

        assert await harness.events(play_id) == before
        assert await harness.events(unknown) == []
        assert await harness.wait(play_id) == final

    # ------------------------------------------------------------ idempotency and crashes

    async def test_start_twice_before_it_runs_starts_once(self, harness: Harness, company: str, play_id: str) -> None:
        flow = make_flow("twice", fl("a", "transform", input={"v": "${input.v}"}))
        await harness.start(flow, {"v": "first"}, company_id=company, play_id=play_id)
        await harness.start(flow, {"v": "second"}, company_id=company, play_id=play_id)
        final = await harness.wait(play_id)

        assert final.status is PlayStatus.SUCCEEDED
        assert final.input == {"v": "first"}
        assert final.output == {"a": {"v": "first"}}
        events = await check_history(harness, final)
        assert [e.type for e in events].count("PlayStarted") == 1
        assert per_flowlet_sequence(events)["a"] == ok_steps("a")

    async def test_start_again_after_it_finished_is_a_no_op(self, harness: Harness, company: str, play_id: str) -> None:
        flow = make_flow("again", fl("a", "kv.incr", input={"key": "runs"}))
        first = await harness.run(flow, {}, company_id=company, play_id=play_id)
        assert first.status is PlayStatus.SUCCEEDED
        before = await check_history(harness, first)

        again = await harness.run(flow, {"other": True}, company_id=company, play_id=play_id)
        # the repeat went through the command path: a later play of the company finished after it
        marker = await harness.run(make_flow("marker", fl("m", "noop")), {}, company_id=company, play_id=new_id("m"))
        await check_history(harness, marker)

        assert again == first
        assert await harness.events(play_id) == before
        assert await harness.kv_get(company, "runs") == 1

    @pytest.mark.parametrize(
        "crash_after",
        [
            pytest.param(("FlowletScheduled", "count"), id="counter-scheduled"),
            pytest.param(("FlowletCompleted", "count"), id="counter-completed"),
        ],
    )
    async def test_crash_mid_play_resumes_and_counts_once(
        self, harness: Harness, company: str, play_id: str, crash_after: tuple[str, str]
    ) -> None:
        flow = make_flow(
            "crash",
            fl("count", "kv.incr", input={"key": "runs"}),
            fl("slow", "sleep", "count", input={"seconds": 0.2}),
            fl("done", "transform", "slow", input={"runs": "${flowlets.count.output}"}),
        )
        await harness.start(flow, {}, company_id=company, play_id=play_id)
        await harness.wait_for_event(play_id, is_event(*crash_after))
        await harness.restart()
        final = await harness.wait(play_id)

        assert final.status is PlayStatus.SUCCEEDED
        assert final.output == {"done": {"runs": 1}}
        assert await harness.kv_get(company, "runs") == 1
        events = await check_history(harness, final)
        steps = per_flowlet_sequence(events)
        assert steps[None] == [("PlayStarted", None, None), ("PlayCompleted", None, None)]
        # the re-run after the crash is the same attempt, recorded once
        assert steps["count"] == ok_steps("count")
        assert steps["slow"] == ok_steps("slow")
        assert steps["done"] == ok_steps("done")

    # ------------------------------------------------------------ KV

    async def test_kv_modules_per_company(self, harness: Harness) -> None:
        flow = make_flow(
            "kv",
            fl("put", "kv.set", input={"key": "colour", "value": "${input.colour}"}),
            fl("read", "kv.get", "put", input={"key": "colour"}),
        )
        red, blue = new_id("red"), new_id("blue")
        finals = await asyncio.gather(
            harness.run(flow, {"colour": "red"}, company_id=red, play_id=new_id("p")),
            harness.run(flow, {"colour": "blue"}, company_id=blue, play_id=new_id("p")),
        )
        assert [f.output for f in finals] == [{"read": "red"}, {"read": "blue"}]
        assert [f.flowlets["put"].output for f in finals] == [
            {"key": "colour", "value": "red", "version": 1},
            {"key": "colour", "value": "blue", "version": 1},
        ]
        for final in finals:
            await check_history(harness, final)
        assert await harness.kv_get(red, "colour") == "red"
        assert await harness.kv_get(blue, "colour") == "blue"
        assert await harness.kv_get(red, "absent") is None
