"""Channels in the streams runtime: long flowlets on the worker's ``ChannelPool``.

Executor side (``ChannelExecutor``): a task whose flowlet has ``defer_after_ms`` (or whose
module is declared ``channel``) is not run in the executor agent. It is handed to a
background task, so its Kafka message is acked at once; that task waits the defer, submits
the task to the pool, and sends on ``flow8.completions`` (the task's partition, keyed by
company) a ``FlowletDispatch`` when a channel accepts it and the ``FlowletResult`` at the
end. While it holds the task it sends a ``ChannelHeartbeat`` every third of the heartbeat
timeout.

Orchestrator side (``ChannelWatch``): the channel flowlets in flight of the plays this
worker owns, each with when it was last heard of (scheduled, or a heartbeat). One silent
for the heartbeat timeout is lost: the orchestrator sends itself a failed, retryable
``FlowletResult`` ("channel_lost: ..."), and the engine's retry policy applies. This is what
notices a worker that died with tasks on its channels: those tasks' messages were acked,
so nobody else would ever run them.

These messages go by a plain (not transactional) producer. A partition's transaction
commits only when its input offsets advance, so a send from a background task would wait,
unseen, for the partition's next input, forever on an idle one; and after a rebalance the
partition's transactional producer is no longer ours. They need no transaction: a
duplicate result or dispatch is dropped by the engine (it takes one per attempt), and
heartbeats are only read by the watchdog.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaConnectionError
from aiokafka.protocol.metadata import MetadataRequest
from cachetools import TTLCache
from pydantic import BaseModel

from flow8_streams.channels import placement
from flow8_streams.channels.placement import runs_on_channel as runs_on_channel  # one rule, used here and by app.py
from flow8_streams.clock import utcnow
from flow8_streams.domain.messages import ChannelHeartbeat, FlowletDispatch, FlowletResult, Task
from flow8_streams.domain.state import PlayState
from flow8_streams.engine import in_flight
from flow8_streams.errors import CompanyMismatch, Flow8Error
from flow8_streams.logs import log_context
from flow8_streams.runtimes.streams import codec

if TYPE_CHECKING:
    from flow8_streams.channels.pool import ChannelPool
    from flow8_streams.modules.registry import ModuleRegistry
    from flow8_streams.settings import Settings

log = logging.getLogger("flow8.streams.channels")
Key = tuple[str, str, int]  # play_id, flowlet, attempt
CLOSE_GRACE_S = 5.0
REPORTED_MAX = 100_000  # results sent, remembered for the watchdog (see ChannelExecutor.holds)
REPORTED_TTL_S = 600.0


def failed(task: Task | Key, company_id: str, error: str) -> FlowletResult:
    """A failed, retryable attempt: what a lost channel becomes."""
    play_id, flowlet, attempt = (task.play_id, task.flowlet, task.attempt) if isinstance(task, Task) else task
    return FlowletResult.failure((play_id, company_id, flowlet, attempt), error, now=utcnow())


def without_pending(result: FlowletResult, module_ref: str) -> FlowletResult:
    return placement.without_pending(result, module_ref, "flow8 worker --channels")


class DirectProducer:
    """Sends to ``flow8.completions`` outside any transaction: seen at once (see the module doc)."""

    def __init__(self, settings: Settings) -> None:
        self.topic = settings.topics.completions
        self.settings = settings
        self._producer: AIOKafkaProducer | None = None

    async def start(self) -> None:
        # made here, on the loop that runs it (aiokafka binds a producer to its loop)
        self._producer = AIOKafkaProducer(
            **self.settings.kafka_client_options(),
            client_id=f"{self.settings.worker_id}-direct",
            acks="all",
            enable_idempotence=True,
            linger_ms=1,
        )
        await self._producer.start()

    async def stop(self) -> None:
        if self._producer is not None:
            await self._producer.stop()

    async def ping(self) -> None:
        """One Metadata request (of no topic) to a broker: raises unless the cluster answers."""
        if self._producer is None:
            raise RuntimeError("DirectProducer.ping before start()")
        client = self._producer.client
        node = client.get_random_node()
        if node is None:
            raise KafkaConnectionError("no broker known")
        await client.send(node, MetadataRequest([]))

    async def send(self, partition: int, company_id: str, message: BaseModel, *, topic: str | None = None) -> None:
        """``message`` to ``topic`` (the completions topic by default)."""
        if self._producer is None:
            raise RuntimeError("DirectProducer.send before start()")
        await self._producer.send_and_wait(
            topic or self.topic, value=codec.encode(message), key=company_id.encode(), partition=partition
        )


@dataclass
class Held:
    task: Task
    partition: int
    runner: asyncio.Task[None]


class ChannelExecutor:
    """The executor's side: channel tasks run in the background on ``pool``."""

    def __init__(
        self,
        pool: ChannelPool,
        producer: DirectProducer,
        *,
        advertised_host: str,
        heartbeat_every_s: float,
    ) -> None:
        self.pool = pool
        self.producer = producer
        self.advertised_host = advertised_host
        self.heartbeat_every_s = heartbeat_every_s
        self.held: dict[Key, Held] = {}
        # attempts whose result was sent, for as long as the orchestrator may take to read it
        self.reported: TTLCache[Key, bool] = TTLCache(maxsize=REPORTED_MAX, ttl=REPORTED_TTL_S)
        if pool.on_pending is None:
            pool.on_pending = self._pending
        self._beating: asyncio.Task[None] | None = None
        self._closing = asyncio.Event()

    def address(self, channel: str) -> str:
        """``host:port`` as outside systems reach it: the worker's ADVERTISED_HOST."""
        return f"{self.advertised_host}:{channel.rsplit(':', 1)[-1]}"

    def _pending(self, play_id: str, flowlet: str, attempt: int, channel: str) -> None:
        log.info(
            "%s/%s attempt %d waits for an outside service to complete it at %s",
            play_id, flowlet, attempt, self.address(channel),
        )  # fmt: skip

    async def start(self) -> None:
        """After ``producer`` started: its owner starts and stops it."""
        await self.pool.start()
        self._beating = asyncio.create_task(self._heartbeats(), name="flow8-channel-heartbeats")

    async def close(self) -> None:
        """Close the pool: the tasks it held come back failed (``channel_lost``), and their
        results are sent, so the plays' owners retry them without waiting for the watchdog."""
        self._closing.set()  # tasks waiting for their defer stop waiting (and come back failed)
        await self.pool.close()
        runners = [h.runner for h in self.held.values()]
        if runners:
            _, late = await asyncio.wait(runners, timeout=CLOSE_GRACE_S)
            for runner in late:
                runner.cancel()
            await asyncio.gather(*late, return_exceptions=True)
        if self._beating is not None:
            self._beating.cancel()
            await asyncio.gather(self._beating, return_exceptions=True)

    def holds(self, key: Key) -> bool:
        """Whether ``key``'s attempt is this worker's: waiting for its defer or a channel, running,
        or done with its result sent (the orchestrator, behind on the completions partition, may
        not have read it yet: that result comes before any ``channel_lost``, on the same partition)."""
        return key in self.held or key in self.reported

    def hand_over(self, task: Task, partition: int) -> None:
        """Run ``task`` on a channel in the background; returns at once."""
        key = (task.play_id, task.flowlet, task.attempt)
        if key in self.held:
            return  # a redelivered task message: the attempt is already ours
        with log_context(company_id=task.company_id, play_id=task.play_id, flowlet=task.flowlet):
            runner = asyncio.create_task(
                self._run(task, partition), name=f"flow8-channel:{task.play_id}/{task.flowlet}"
            )
            self.held[key] = Held(task, partition, runner)
            runner.add_done_callback(lambda done: self._release(key, done))

    def cancel(self, play_id: str, flowlet: str, attempt: int) -> None:
        """The engine timed the attempt out or cancelled it: stop it (killing its channel
        worker if it runs); nothing is reported, the engine has decided already."""
        held = self.held.get((play_id, flowlet, attempt))
        if held is not None:
            held.runner.cancel()  # cancels its wait, its place in the queue, or its run
        self.pool.cancel(play_id, flowlet, attempt)

    def _release(self, key: Key, runner: asyncio.Task[None]) -> None:
        held = self.held.get(key)
        if held is not None and held.runner is runner:
            del self.held[key]
        if not runner.cancelled() and runner.exception() is not None:
            log.error("channel task %s/%s attempt %s failed", *key, exc_info=runner.exception())

    async def _run(self, task: Task, partition: int) -> None:
        company = task.company_id
        sends: list[asyncio.Task[None]] = []

        def dispatched(play_id: str, flowlet: str, attempt: int, channel: str) -> None:
            message = FlowletDispatch(
                play_id=play_id, company_id=company, flowlet=flowlet, attempt=attempt, channel=self.address(channel)
            )
            sends.append(asyncio.create_task(self.producer.send(partition, company, message)))

        if task.defer_after_ms:  # a delay the flow asked for, cut short by close()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._closing.wait(), task.defer_after_ms / 1000)
        try:
            result = await self.pool.submit(task, on_dispatch=dispatched)
        except Flow8Error as exc:  # the pool closed (this worker stops): another worker retries it
            result = failed(task, company, f"channel_lost: {exc}")
        for outcome in await asyncio.gather(*sends, return_exceptions=True):
            if isinstance(outcome, BaseException):
                log.warning("FlowletDispatch of %s/%s not sent: %s", task.play_id, task.flowlet, outcome)
        try:
            await self.producer.send(partition, company, result)
        except Exception as exc:  # the watchdog of the play's owner fails the attempt
            log.warning("result of %s/%s attempt %s not sent: %s", task.play_id, task.flowlet, task.attempt, exc)
        else:
            self.reported[(task.play_id, task.flowlet, task.attempt)] = True

    async def _heartbeats(self) -> None:
        while True:
            await asyncio.sleep(self.heartbeat_every_s)  # the heartbeat period, not a synchronisation
            sends = []
            for h in list(self.held.values()):
                t = h.task
                beat = ChannelHeartbeat(
                    play_id=t.play_id, company_id=t.company_id, flowlet=t.flowlet, attempt=t.attempt
                )
                sends.append(self.producer.send(h.partition, t.company_id, beat))
            for outcome in await asyncio.gather(*sends, return_exceptions=True):
                if isinstance(outcome, Exception):
                    log.warning("channel heartbeat not sent: %s", outcome)


@dataclass
class Watched:
    last_seen: float  # monotonic
    company_id: str
    partition: int


class ChannelWatch:
    """The orchestrator's side: the heartbeat watchdog of channel flowlets in flight."""

    def __init__(
        self,
        timeout_s: float,
        is_channel: Callable[[str, int | None], bool],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.timeout_s = timeout_s
        self.is_channel = is_channel  # (module_ref, defer_after_ms) -> bool
        self.clock = clock
        self.entries: dict[Key, Watched] = {}
        self._by_play: dict[str, set[Key]] = {}
        # attempts whose channel_lost was sent: not watched again by a rescan while that result waits
        # to be read (behind a burst, a rescan re-watched them and failed them again every 35 s)
        self.declared_lost: TTLCache[Key, bool] = TTLCache(maxsize=REPORTED_MAX, ttl=REPORTED_TTL_S)

    def _watched(self, state: PlayState) -> set[Key]:
        if state.finished:
            return set()
        keys = set()
        for name, f in in_flight(state):
            spec = state.flow.by_name[name]
            if self.is_channel(spec.module_ref, spec.defer_after_ms):
                keys.add((state.play_id, name, f.attempts))
        return keys

    def track(self, state: PlayState, partition: int) -> None:
        """After a decision on ``state``: watch its channel flowlets in flight (a new one from
        now), forget the others."""
        want = self._watched(state)
        have = self._by_play.pop(state.play_id, set())
        for key in have - want:
            self.entries.pop(key, None)
        self._add(want - have, state, partition)
        if want:
            self._by_play[state.play_id] = want

    def forget(self, play_id: str) -> None:
        for key in self._by_play.pop(play_id, set()):
            self.entries.pop(key, None)

    def beat(self, heartbeat: ChannelHeartbeat) -> None:
        """A heartbeat keeps its flowlet watched; one naming another company than the
        play's raises ``CompanyMismatch``."""
        entry = self.entries.get((heartbeat.play_id, heartbeat.flowlet, heartbeat.attempt))
        if entry is None:
            return  # a finished attempt, or a play not (yet) ours
        if entry.company_id != heartbeat.company_id:
            raise CompanyMismatch.of("ChannelHeartbeat", heartbeat.play_id, heartbeat.company_id)
        entry.last_seen = self.clock()

    def overdue(self, held: Callable[[Key], bool] = lambda key: False) -> list[tuple[Key, Watched]]:
        """The entries silent for the timeout, taken out of the watch (reported once). One this
        worker's own channel executor ``held`` is alive, however late its heartbeats: they go
        through the completions partition, which a burst can put far behind its reader, and
        waiting tasks were failed by the thousand (``channel_lost``) while their channels ran."""
        now = self.clock()
        limit = now - self.timeout_s
        late = []
        for key, w in self.entries.items():
            if w.last_seen <= limit:
                if held(key):
                    w.last_seen = now
                else:
                    late.append((key, w))
        for key, _ in late:
            del self.entries[key]
            keys = self._by_play.get(key[0])
            if keys is not None:
                keys.discard(key)
                if not keys:
                    del self._by_play[key[0]]
        return late

    def rescan(self, owned: Iterable[tuple[PlayState, int]]) -> None:
        """The plays this worker owns now (after a rebalance): their channel flowlets not yet
        watched are, from now (a grace of one timeout); plays no longer ours are forgotten."""
        seen: set[str] = set()
        for state, partition in owned:
            seen.add(state.play_id)
            missing = self._watched(state) - self._by_play.get(state.play_id, set())
            if missing:
                self._add(missing, state, partition)
        for play_id in [p for p in self._by_play if p not in seen]:
            self.forget(play_id)

    def _add(self, keys: set[Key], state: PlayState, partition: int) -> None:
        keys = {key for key in keys if key not in self.declared_lost}
        if not keys:
            return
        now = self.clock()
        for key in keys:
            self.entries[key] = Watched(now, state.company_id, partition)
        self._by_play.setdefault(state.play_id, set()).update(keys)

    def sent_lost(self, key: Key) -> None:
        """``key``'s channel_lost result was sent: its play will read it; a rescan leaves it be."""
        self.declared_lost[key] = True

    def lost(self, key: Key, watched: Watched) -> FlowletResult:
        return failed(key, watched.company_id, f"channel_lost: no heartbeat for {self.timeout_s:g} s")


def watch_for(registry: ModuleRegistry, timeout_s: float) -> ChannelWatch:
    def is_channel(module_ref: str, defer_after_ms: int | None) -> bool:
        return runs_on_channel(registry, module_ref, defer_after_ms)

    return ChannelWatch(timeout_s, is_channel)
