"""The projector agent: folds ``flow8.events`` into the play projection every reader of
MongoDB sees, a batch at a time (``PlayProjection.apply``: one write per play, guarded by
seq), and repairs a play whose projection is behind the log by reading its events back."""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from datetime import UTC, datetime
from functools import partial

import faust

from flow8_streams.domain import events as ev
from flow8_streams.engine.projection import ApplyResult
from flow8_streams.logs import log_context
from flow8_streams.metrics import Metrics
from flow8_streams.runtimes.streams.deadletters import DeadLetters
from flow8_streams.runtimes.streams.repair import read_plays
from flow8_streams.runtimes.streams.retrying import StoreOutage
from flow8_streams.settings import Settings
from flow8_streams.stores.ports import PlayProjection

log = logging.getLogger("flow8.streams")
BATCH_WITHIN_S = 0.05  # a batch waits this long for more events before it is written


class Projector:
    def __init__(
        self,
        settings: Settings,
        projection: PlayProjection,
        metrics: Metrics,
        dead_letters: DeadLetters,
        outage: StoreOutage,
    ) -> None:
        self.settings = settings
        self.outage = outage  # a batch waits out a MongoDB outage: its events cannot be skipped
        self.projection = projection
        self.metrics = metrics
        self.dead_letters = dead_letters
        self._repairs: set[asyncio.Task[None]] = set()  # running repairs, held until done

    async def __call__(self, stream: faust.StreamT[bytes]) -> None:
        batch_size = self.settings.projector_batch
        async for received in stream.take_events(batch_size, within=BATCH_WITHIN_S):  # type: ignore[attr-defined]
            batch: list[ev.Event] = []
            partition_of: dict[str, int] = {}
            for event in received:
                try:
                    batch.append(ev.event_adapter.validate_json(event.value or b""))
                except ValueError as exc:  # a foreign producer wrote to the events topic
                    await self.dead_letters.send(event, "invalid_event", f"event: {str(exc)[:500]}")
                    continue
                partition_of[batch[-1].play_id] = event.message.partition
            if not batch:
                continue
            result = await self.outage.call("projector", "project", partial(self.projection.apply, batch))
            self._projected(result)
            self.metrics.projection_batch.observe(len(batch))
            by_partition: defaultdict[int, set[str]] = defaultdict(set)
            for gap in result.gaps:
                with log_context(play_id=gap.play_id):
                    log.warning("projection of %s is behind the log: %s; reading its events again", gap.play_id, gap)
                by_partition[partition_of[gap.play_id]].add(gap.play_id)
            for partition, play_ids in by_partition.items():
                task = asyncio.create_task(self._repair(partition, play_ids), name=f"flow8-repair-{partition}")
                self._repairs.add(task)
                task.add_done_callback(self._repairs.discard)

    def _projected(self, result: ApplyResult) -> None:
        """The projection lag of each event just projected: now minus its append time."""
        now = datetime.now(UTC)
        for at in result.appended_at:
            self.metrics.projection_lag.observe(max(0.0, (now - at).total_seconds()))

    async def _repair(self, partition: int, play_ids: set[str]) -> None:
        """Project ``play_ids`` again from their events read back from the log (``repair``)."""
        try:
            events = await read_plays(self.settings, partition, play_ids)
            result = await self.outage.call("projector", "repair", partial(self.projection.apply, events))
            self._projected(result)
        except Exception:  # the next gap of these plays tries again
            log.exception("repair of the projection of %s failed", sorted(play_ids))
            return
        still = {gap.play_id for gap in result.gaps}
        for play_id in sorted(play_ids):
            if play_id in still:
                log.warning("projection of %s: events still missing from the log", play_id)
            else:
                log.warning("projection of %s repaired from the log", play_id)
