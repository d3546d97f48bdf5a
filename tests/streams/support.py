"""Helpers of the streams runtime's own tests (real ``flow8 worker`` processes)."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

from flow8_streams.domain.flow import FlowDefinition
from flow8_streams.modules import builtin
from flow8_streams.runtimes.streams.client import tail_results
from flow8_streams.settings import Settings
from tests.conformance.streams_harness import WorkerGroup
from tests.services import require_service


def make_flow(name: str, *flowlets: dict[str, Any]) -> FlowDefinition:
    """A validated flow of built-in modules."""
    return FlowDefinition.model_validate({"name": name, "flowlets": list(flowlets)}).check(builtin.MODULES)


def fl(name: str, module: str, *depends_on: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "module_ref": module, "depends_on": list(depends_on), **extra}


@contextlib.contextmanager
def running_group(workdir: Path, count: int = 1, **options: Any) -> Iterator[WorkerGroup]:
    """``count`` workers on topics, a group and a database of their own; all stopped at the end,
    and their topics deleted (unless FLOW8_TEST_KEEP=1). ``options`` go to ``WorkerGroup``."""
    kafka = require_service("KAFKA_BOOTSTRAP_SERVERS")
    mongodb_uri = require_service("MONGODB_URI")
    # FLOW8_TEST_WORKER_LOG_LEVEL=info makes the workers' logs (in ``workdir``) tell more when a test fails
    log_level = os.environ.get("FLOW8_TEST_WORKER_LOG_LEVEL", "warning")
    # FLOW8_TEST_TRANSACTIONS=worker runs them with one transaction per worker (FLOW8_TRANSACTIONS)
    mode = os.environ.get("FLOW8_TEST_TRANSACTIONS")
    if mode:
        options["extra_env"] = {"FLOW8_TRANSACTIONS": mode, **options.get("extra_env", {})}
    group = WorkerGroup(kafka, mongodb_uri, workdir, count=count, log_level=log_level, **options)
    try:
        asyncio.run(group.start())
        yield group
    finally:
        group.stop()
        assert group.processes == []
        if os.environ.get("FLOW8_TEST_KEEP") != "1":  # keep the topics to look at after a failure
            asyncio.run(group.discard())


class ResultCollector:
    """Every play result on ``flow8.play-results`` (read_committed, from the beginning), in the background."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.results: dict[str, Any] = {}
        self.seen: dict[str, int] = {}
        self._changed = asyncio.Condition()
        self._ready = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @property
    def duplicates(self) -> list[str]:
        return sorted(play_id for play_id, n in self.seen.items() if n > 1)

    async def open(self) -> ResultCollector:
        self._task = asyncio.create_task(self._run(), name="result-collector")
        ready = asyncio.create_task(self._ready.wait())
        await asyncio.wait({ready, self._task}, return_when=asyncio.FIRST_COMPLETED)
        if not ready.done():
            ready.cancel()
            self._task.result()  # the consumer failed to start: raise why
        return self

    async def _run(self) -> None:
        async for result, _ in tail_results(self.settings, from_beginning=True, on_ready=self._ready.set):
            self.results[result.play_id] = result
            self.seen[result.play_id] = self.seen.get(result.play_id, 0) + 1
            async with self._changed:
                self._changed.notify_all()

    async def wait_for(self, play_ids: set[str], timeout: float) -> None:
        async def until() -> None:
            async with self._changed:
                while not play_ids <= self.results.keys():
                    assert self._task is not None
                    if self._task.done():
                        self._task.result()
                    await self._changed.wait()

        try:
            async with asyncio.timeout(timeout):
                await until()
        except TimeoutError:
            missing = len(play_ids - self.results.keys())
            raise AssertionError(f"{missing} of {len(play_ids)} play results missing after {timeout} s") from None

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


@contextlib.asynccontextmanager
async def collecting_results(settings: Settings) -> AsyncIterator[ResultCollector]:
    collector = await ResultCollector(settings).open()
    try:
        yield collector
    finally:
        await collector.close()


async def trail(settings: Settings, play_ids: list[str], partition: int) -> str:
    """Where ``play_ids`` went on ``partition`` of the commands, tasks and completions topics:
    each record of theirs with its offset, committed or aborted (read uncommitted and committed
    both), and the group's committed offset there; what a play that stopped needs explaining."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    topics = settings.topics
    tps = [TopicPartition(t, partition) for t in (topics.commands, topics.tasks, topics.completions)]
    committed = await group_offsets(settings)
    seen: dict[str, dict[tuple[str, int], str]] = {}
    for isolation in ("read_committed", "read_uncommitted"):
        consumer = AIOKafkaConsumer(
            **settings.kafka_client_options(), isolation_level=isolation, enable_auto_commit=False
        )
        await consumer.start()
        try:
            consumer.assign(tps)
            await consumer.seek_to_beginning(*tps)
            ends = await consumer.end_offsets(tps)
            found = seen.setdefault(isolation, {})
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(20):
                    while [tp for tp in tps if await consumer.position(tp) < ends[tp]]:
                        for tp, records in (await consumer.getmany(timeout_ms=500)).items():
                            for r in records:
                                text = (r.value or b"").decode(errors="replace")
                                for play_id in play_ids:
                                    if play_id in text:
                                        found[(tp.topic, r.offset)] = text[:160]
        finally:
            await consumer.stop()
    lines = []
    for tp in tps:
        meta = committed.get(tp)
        lines.append(f"{tp.topic}[{partition}] committed at {None if meta is None else meta.offset}")
    for (topic, offset), text in sorted(seen.get("read_uncommitted", {}).items()):
        state = "committed" if (topic, offset) in seen.get("read_committed", {}) else "ABORTED"
        lines.append(f"  {topic}@{offset} ({state}): {text}")
    return "\n".join(lines)


async def group_offsets(settings: Settings) -> dict[Any, Any]:
    """The worker group's committed offsets (TopicPartition -> OffsetAndMetadata)."""
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(**settings.kafka_client_options())
    await admin.start()
    try:
        return dict(await admin.list_consumer_group_offsets(settings.group_id))
    finally:
        await admin.close()
