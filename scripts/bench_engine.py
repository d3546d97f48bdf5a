#!/usr/bin/env python3
"""Micro-benchmark of the pure engine: cost per event of decide + evolve, no I/O.

    .venv/bin/python scripts/bench_engine.py [--plays 2000]

Drives whole plays (diamond, fan-out of 200, chain of 100) through ``decide`` with a
simulated executor that completes every task at once, and prints CPU microseconds per
event and per play (CPU, not wall time: the machine's other load moves it far less), and
the cost of the hash (canonical JSON + sha256).
"""

from __future__ import annotations

import argparse
import time
from datetime import UTC, datetime

from flow8_streams.domain.events import FlowletScheduled
from flow8_streams.domain.flow import FlowDefinition
from flow8_streams.domain.messages import FlowletResult, Start
from flow8_streams.engine import decide, step

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def diamond() -> FlowDefinition:
    return FlowDefinition.model_validate(
        {
            "name": "diamond",
            "flowlets": [
                {"name": "a", "module_ref": "noop"},
                {"name": "b", "module_ref": "noop", "depends_on": ["a"]},
                {"name": "c", "module_ref": "noop", "depends_on": ["a"]},
                {"name": "d", "module_ref": "noop", "depends_on": ["b", "c"]},
            ],
        }
    )


def fan_out(n: int) -> FlowDefinition:
    kids = [{"name": f"k{i}", "module_ref": "noop", "depends_on": ["root"]} for i in range(n)]
    return FlowDefinition.model_validate(
        {
            "name": "fan-out",
            "flowlets": [
                {"name": "root", "module_ref": "noop"},
                *kids,
                {"name": "join", "module_ref": "noop", "depends_on": [k["name"] for k in kids]},
            ],
        }
    )


def chain(n: int) -> FlowDefinition:
    return FlowDefinition.model_validate(
        {
            "name": "chain",
            "flowlets": [
                {"name": f"s{i}", "module_ref": "noop", "depends_on": [f"s{i - 1}"] if i else []} for i in range(n)
            ],
        }
    )


def play(flow: FlowDefinition, play_id: str) -> int:
    """Run one play to its end; return the number of events."""
    events, state = step(None, Start(play_id=play_id, company_id="acme", flow=flow, input={"k": 1}), NOW)
    count = len(events)
    queue = [e for e in events if isinstance(e, FlowletScheduled)]
    while queue:
        task = queue.pop()
        result = FlowletResult(
            play_id=play_id,
            company_id="acme",
            flowlet=task.payload.flowlet,
            attempt=task.payload.attempt,
            ok=True,
            output={"n": 1},
            started_at=NOW,
            ended_at=NOW,
        )
        new, state = step(state, result, NOW)
        count += len(new)
        queue += [e for e in new if isinstance(e, FlowletScheduled)]
    assert state is not None and state.status.value == "succeeded"
    return count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--plays", type=int, default=2000, help="plays of the diamond (others scale down)")
    args = parser.parse_args()
    print(f"{'flow':<14}{'plays':>7}{'events':>9}{'µs/event':>10}{'µs/play':>11}{'plays/CPU-s':>13}")
    for name, flow, plays in (
        ("diamond", diamond(), args.plays),
        ("fan-out 200", fan_out(200), max(1, args.plays // 100)),
        ("chain 100", chain(100), max(1, args.plays // 50)),
    ):
        t0 = time.process_time()
        events = sum(play(flow, f"p{i}") for i in range(plays))
        took = time.process_time() - t0
        print(
            f"{name:<14}{plays:>7}{events:>9}{took / events * 1e6:>10.1f}"
            f"{took / plays * 1e6:>11.0f}{plays / took:>13.0f}"
        )
    sample = decide(None, Start(play_id="h", company_id="acme", flow=diamond(), input={}), NOW)[1]
    n = 20000
    t0 = time.process_time()
    for _ in range(n):
        sample.expected_hash("0" * 64)
    print(f"hash of one FlowletScheduled (canonical JSON + sha256): {(time.process_time() - t0) / n * 1e6:.1f} µs")


if __name__ == "__main__":
    main()
