"""The executor agent: runs the tasks of ``flow8.tasks`` and answers on ``flow8.completions``.

Modules run at least once (a redelivered task runs again); the engine drops the duplicate
result and KV counters are idempotent by operation id, so the effect is exactly once. A
long flowlet goes to the worker's channel pool instead, which reports on its own.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

import faust

from flow8_streams.domain.limits import Limits
from flow8_streams.domain.messages import FlowletResult, Task
from flow8_streams.metrics import Metrics
from flow8_streams.modules.executor import execute_task
from flow8_streams.modules.registry import ModuleRegistry
from flow8_streams.modules.threads import ModuleThreads
from flow8_streams.runtimes.streams import codec
from flow8_streams.runtimes.streams.channels import ChannelExecutor, runs_on_channel, without_pending
from flow8_streams.runtimes.streams.deadletters import DeadLetters
from flow8_streams.stores.ports import KVStore

SLOT_GRACE_S = 1.0  # past a task's deadline, its slot is freed this much later: the engine times it out


class TaskRunner:
    """Runs one task's module, bounded by its deadline, on the worker's module threads."""

    def __init__(
        self,
        registry: ModuleRegistry,
        kv: KVStore,
        threads: ModuleThreads,
        metrics: Metrics,
        clock: Callable[[], datetime],
    ) -> None:
        self.registry = registry
        self.kv = kv
        self.threads = threads
        self.metrics = metrics
        self.clock = clock

    async def run(self, task: Task) -> FlowletResult:
        t0 = time.perf_counter()
        try:
            result = await asyncio.wait_for(
                execute_task(self.registry, self.kv, self.clock, task, threads=self.threads),
                timeout=max(0.0, (task.deadline - self.clock()).total_seconds()) + SLOT_GRACE_S,
            )
        except TimeoutError:
            result = FlowletResult.failure(task, f"timed out after {task.timeout_ms} ms", now=self.clock())
        result = without_pending(result, task.module_ref)
        outcome = "ok" if result.ok else "error"
        self.metrics.flowlet_duration.labels(task.module_ref, outcome).observe(time.perf_counter() - t0)
        return result

    async def close(self) -> None:
        self.threads.close()


class Executor:
    """The agent: a task in, its result out on the completions partition it came from."""

    def __init__(
        self,
        runner: TaskRunner,
        completions: Any,
        dead_letters: DeadLetters,
        limits: Limits,
        channels: ChannelExecutor | None,
    ) -> None:
        self.runner = runner
        self.completions = completions
        self.dead_letters = dead_letters
        self.limits = limits
        self.channels = channels

    async def __call__(self, stream: faust.StreamT[bytes]) -> None:
        async for event in stream.events():
            try:
                task = codec.decode_task(event.value, self.limits)
            except codec.BadMessage as exc:
                await self.dead_letters.send(event, exc.reason, exc.detail)
                continue
            channels = self.channels
            if channels is not None and runs_on_channel(self.runner.registry, task.module_ref, task.defer_after_ms):
                channels.hand_over(task, event.message.partition)  # acked now; it reports later
                continue
            result = await self.runner.run(task)
            await self.completions.send(key=event.key, value=codec.encode(result), partition=event.message.partition)
