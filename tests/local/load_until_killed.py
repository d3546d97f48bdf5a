"""A process that runs plays on the embedded runtime without end, for a test to kill with -9.

    python load_until_killed.py DB IN_FLIGHT READY

Half the plays are the bench's diamond of inline modules (one transaction each), half wait in
an async module between two inline ones (a task in flight, two transactions); each worker
takes them in turn, half the workers starting with the one that waits. Prints ``ready``
once READY plays have finished, and goes on.
"""

from __future__ import annotations

import asyncio
import itertools
import sys
from pathlib import Path

from flow8_streams.bench import DIAMOND
from flow8_streams.domain.flow import FlowDefinition
from flow8_streams.modules.registry import ModuleRegistry
from flow8_streams.runtimes.local import LocalRuntime
from flow8_streams.stores.sqlite import SqliteStore

WAITS = FlowDefinition.model_validate(
    {
        "name": "waits",
        "flowlets": [
            {"name": "a", "module_ref": "noop"},
            {"name": "b", "module_ref": "sleep", "depends_on": ["a"], "input": {"seconds": 0.02}},
            {"name": "c", "module_ref": "noop", "depends_on": ["b"]},
        ],
    }
)


async def main(db: Path, in_flight: int, ready: int) -> None:
    store = SqliteStore(db)
    finished = 0
    async with LocalRuntime(store, ModuleRegistry.default(entry_points=False)) as runtime:

        async def one_at_a_time(worker: int) -> None:
            nonlocal finished
            for i in itertools.count():
                flow = DIAMOND if (worker + i) % 2 else WAITS  # half the workers wait at any time
                await runtime.run(flow, {"i": i}, company_id=f"c{worker % 4}", play_id=f"w{worker}-{i}")
                finished += 1
                if finished == ready:
                    print("ready", flush=True)

        await asyncio.gather(*(one_at_a_time(w) for w in range(in_flight)))


if __name__ == "__main__":
    asyncio.run(main(Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])))
