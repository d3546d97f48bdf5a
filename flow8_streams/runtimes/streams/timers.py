"""The worker's timers: ticks for plays that wait (a retry's backoff, a timeout), channel
flowlets whose heartbeats stopped, and the rescan that rebuilds both after a rebalance and
sends again the tasks in flight on partitions just taken over."""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from flow8_streams.clock import utcnow
from flow8_streams.domain.messages import Task, Tick
from flow8_streams.domain.state import PlayState
from flow8_streams.engine import in_flight, next_wakeup
from flow8_streams.metrics import Metrics
from flow8_streams.modules.registry import ModuleRegistry
from flow8_streams.runtimes.streams.channels import ChannelWatch, DirectProducer, Key, runs_on_channel
from flow8_streams.runtimes.streams.checkpoints import is_checkpoint_key
from flow8_streams.runtimes.streams.kafka.faust_app import FaustApp
from flow8_streams.runtimes.streams.table import TOMBSTONE, Slot

log = logging.getLogger("flow8.streams")
TICK_EVERY_S = 0.05
RESCAN_EVERY_S = 5.0

Wakeups = dict[str, tuple[datetime, str, int]]
"""play id -> (when it wakes, its company, its partition): the orchestrator sets, the timers fire."""


class Timers:
    def __init__(
        self,
        app: FaustApp,
        plays: Any,
        wakeups: Wakeups,
        direct: DirectProducer,
        registry: ModuleRegistry,
        metrics: Metrics,
        *,
        completions_topic: str,
        tasks_topic: str,
        channel_watch: ChannelWatch | None,
        channel_held: Callable[[Key], bool] = lambda key: False,
    ) -> None:
        self.app = app
        self.plays = plays  # the orchestrator's table
        self.wakeups = wakeups
        self.direct = direct
        self.registry = registry
        self.metrics = metrics
        self.completions_topic = completions_topic
        self.tasks_topic = tasks_topic
        self.channel_watch = channel_watch
        self.channel_held = channel_held  # a flowlet this worker's channel executor holds is not lost
        self._owned: set[int] = set()  # completions partitions assigned here (see on_assigned)
        self._taken: dict[int, datetime] = {}  # partitions taken over and when, until redispatch looked

    def register(self) -> None:
        self.app.timer(TICK_EVERY_S, name="flow8-ticks")(self.fire_ticks)
        self.app.timer(RESCAN_EVERY_S, name="flow8-rescan")(self.rescan)
        self.app.on_partitions_assigned.connect(self.on_assigned)  # type: ignore[arg-type]

    async def fire_ticks(self) -> None:
        if self.channel_watch is not None and self.channel_watch.entries:
            await self._channels_lost(self.channel_watch)
        if not self.wakeups:
            return
        now = utcnow()
        due = [(pid, company, part) for pid, (at, company, part) in self.wakeups.items() if at <= now]
        for play_id, company, partition in due:
            self.wakeups.pop(play_id, None)
            try:  # outside the partition's transaction: an idle partition would never commit it
                await self.direct.send(partition, company, Tick(play_id=play_id, company_id=company))
            except Exception as exc:  # lost the partition meanwhile: its new owner rescans
                log.info("tick for %s not sent: %s", play_id, exc)

    async def _channels_lost(self, watch: ChannelWatch) -> None:
        """Channel flowlets not heard of for the heartbeat timeout: failed, ``channel_lost``."""
        owned = self._owned_partitions()
        for key, watched in watch.overdue(self.channel_held):
            if watched.partition not in owned:
                continue  # the partition went to another worker, whose watch has the flowlet now
            result = watch.lost(key, watched)
            log.warning("channel flowlet %s/%s attempt %s lost: %s", *key, result.error)
            self.metrics.channels_lost.inc()
            try:
                await self.direct.send(watched.partition, watched.company_id, result)
            except Exception as exc:  # Kafka unavailable: the next rescan watches it again
                log.warning("channel_lost of %s/%s not sent: %s", key[0], key[1], exc)
            else:
                watch.sent_lost(key)

    async def rescan(self) -> None:
        """Rebuild the wakeups and channel watch of the plays this instance owns (after a rebalance)."""
        found: Wakeups = {}
        owned: list[tuple[PlayState, int]] = []
        for play_id, raw in list(self.plays.items()):
            if is_checkpoint_key(play_id):
                continue
            partition, body = Slot.unpack(raw)
            if body.startswith(TOMBSTONE):
                continue
            state = PlayState.model_validate_json(body)
            owned.append((state, partition))
            wake = next_wakeup(state)
            if wake is not None:
                found[play_id] = (wake, state.company_id, partition)
        self.wakeups.clear()
        self.wakeups.update(found)
        if self.channel_watch is not None:
            # the table may still hold plays of partitions revoked from us: not ours to watch
            mine = self._owned_partitions()
            self.channel_watch.rescan((state, partition) for state, partition in owned if partition in mine)
        self.metrics.inflight_plays.set(len(found))
        await self._redispatch(owned)

    async def on_assigned(self, sender: Any, assigned: Any, **kwargs: Any) -> None:
        owned = {tp.partition for tp in assigned if tp.topic == self.completions_topic}
        now = utcnow()
        self._taken.update((partition, now) for partition in owned - self._owned)
        self._owned = owned

    async def _redispatch(self, owned: list[tuple[PlayState, int]]) -> None:
        """Send again the tasks in flight on partitions this worker has just taken over
        (a rebalance, a restart) that were scheduled before it took them. A task or its
        result could be lost across a hand-over (faust's consumer has dropped records
        around rebalances), and its play would then wait for the flowlet's timeout. A task
        run twice is harmless: the engine keeps the first result of an attempt and KV
        increments count once. Tasks scheduled since are this worker's own and not sent
        again (at the first start of a group under load, that was hundreds of tasks run
        twice). Channel flowlets are left to the channel watchdog."""
        if self.app.in_recovery or not self._taken:
            return  # the table is not whole yet: the next rescan looks again
        taken = {p: at for p, at in self._taken.items() if p in self._owned}
        self._taken.clear()
        sent = 0
        for state, partition in owned:
            if partition not in taken:
                continue
            for name, flowlet in in_flight(state):
                spec = state.flow.by_name[name]
                if self.channel_watch is not None and runs_on_channel(
                    self.registry, spec.module_ref, spec.defer_after_ms
                ):
                    continue
                scheduled_at = flowlet.deadline and flowlet.deadline - timedelta(milliseconds=spec.timeout)
                if scheduled_at is not None and scheduled_at >= taken[partition]:
                    continue
                task = Task.in_flight(state, name, utcnow())
                try:
                    await self.direct.send(partition, state.company_id, task, topic=self.tasks_topic)
                    sent += 1
                except Exception as exc:  # Kafka unavailable: the flowlet's timeout still applies
                    log.warning("task %s/%s not sent again: %s", state.play_id, name, exc)
        if sent:
            log.info("took over partitions %s: sent %d task(s) in flight there again", sorted(taken), sent)

    def _owned_partitions(self) -> set[int]:
        return {tp.partition for tp in self.app.consumer.assignment() if tp.topic == self.completions_topic}
