"""Record the golden histories ``flow8 audit replay`` is tested on, from today's engine.

    .venv/bin/python scripts/record_golden.py [--out tests/audit/golden]

Runs each flow below once on the embedded runtime (real modules, real timers) and writes, per
flow, ``NAME.flow.json`` (the definition) and ``NAME.jsonl`` (an archive as ``flow8 audit
export`` writes it, uncompressed so a change shows in a diff: a header, then the play's events).
Re-record only on purpose: a golden history that no longer replays clean means today's engine
decides differently from the one that wrote it, which breaks every play recorded before.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
from pathlib import Path
from typing import Any

import orjson

from flow8_streams import FlowDefinition, LocalRuntime
from flow8_streams.audit.sources import ARCHIVE_FORMAT, ARCHIVE_VERSION

COMPANY = "golden"
FAST_RETRY = {"max_attempts": 3, "backoff_ms": 20}


def fl(name: str, module: str, *deps: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "module_ref": module, "depends_on": list(deps), **extra}


FLOWS: dict[str, tuple[list[dict[str, Any]], Any]] = {
    "linear": ([fl("a", "echo"), fl("b", "echo", "a"), fl("c", "transform", "b", input={"x": "${input.x}"})], {"x": 1}),
    "diamond": (
        [fl("a", "echo"), fl("b", "echo", "a"), fl("c", "echo", "a", input={"rate": 0.2}), fl("d", "echo", "b", "c")],
        {"amount": 100},
    ),
    "retries": ([fl("a", "echo"), fl("flaky", "fail", "a", input={"times": 2}, retry=FAST_RETRY)], {}),
    "failure": (
        [
            fl("a", "echo"),
            fl("broken", "fail", "a", input={"times": 9}, retry={"max_attempts": 2, "backoff_ms": 0}),
            fl("after", "echo", "broken"),
        ],
        {},
    ),
    "timeout": (
        [fl("slow", "sleep", input={"seconds": 5}, timeout="100ms", retry={"max_attempts": 2, "backoff_ms": 10})],
        {},
    ),
    "cancel": ([fl("wait", "sleep", input={"seconds": 30}), fl("then", "echo", "wait")], {}),
    "skipped-branch": (
        [
            fl("root", "echo"),
            fl("bad", "fail", "root", input={"times": 1}),
            fl("left", "echo", "bad"),
            fl("right", "echo", "left"),
        ],
        {},
    ),
}


async def record(db: Path) -> dict[str, tuple[FlowDefinition, list[bytes]]]:
    """Each flow's definition and its play's events as the store holds them (the bytes hashed)."""
    recorded: dict[str, tuple[FlowDefinition, list[bytes]]] = {}
    async with LocalRuntime.open(db) as runtime:
        scheduled = asyncio.Event()

        def on_events(events: Any) -> None:
            if any(e.play_id == "cancel" and e.type == "FlowletScheduled" for e in events):
                scheduled.set()

        unsubscribe = runtime.subscribe(on_events)
        for name, (flowlets, play_input) in FLOWS.items():
            flow = FlowDefinition.model_validate({"name": name, "flowlets": flowlets})
            await runtime.start(flow, play_input, company_id=COMPANY, play_id=name)
            if name == "cancel":
                await scheduled.wait()
                await runtime.cancel(name, COMPANY, reason="cancelled by record_golden.py")
            await runtime.wait(name)
            rows = runtime.store.db.execute("SELECT body FROM events WHERE play_id = ? ORDER BY seq", (name,))
            recorded[name] = (flow, [bytes(body) for (body,) in rows])
        unsubscribe()
    return recorded


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "tests/audit/golden")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        recorded = asyncio.run(record(Path(tmp) / "golden.db"))
    header = {"format": ARCHIVE_FORMAT, "version": ARCHIVE_VERSION, "company_id": COMPANY, "public_key": None}
    for name, (flow, events) in recorded.items():
        (args.out / f"{name}.flow.json").write_bytes(
            orjson.dumps(flow.model_dump(mode="json", exclude_defaults=True), option=orjson.OPT_INDENT_2) + b"\n"
        )
        lines = [orjson.dumps({"header": header}), *(b'{"event":' + body + b"}" for body in events)]
        (args.out / f"{name}.jsonl").write_bytes(b"\n".join(lines) + b"\n")
        print(f"{name}: {len(events)} events, ends {orjson.loads(events[-1])['type']}")


if __name__ == "__main__":
    main()
