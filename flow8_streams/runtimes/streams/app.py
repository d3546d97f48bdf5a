"""The faust application: orchestrator, executor and projector agents.

Topology (every topic has the same partition count and is keyed by company_id):

    flow8.commands ─┐                       ┌─> flow8.events ──> projector ──> MongoDB plays
                    ├─> orchestrator (table) ┼─> flow8.tasks ───> executor ──┐
    flow8.completions┘      ^               └─> flow8.play-results           │
                            └────────────────────────────────────────────────┘

The orchestrator runs the engine. With ``processing_guarantee="exactly_once"`` its
table update (changelog), its events, tasks and results and the offsets of its
input go in the worker's one open Kafka transaction (``kafka.transactions``), fenced
by the consumer group's generation: a crash replays from the last commit and the
replay produces nothing twice. Every output goes to the partition of the
input it came from, so a company's plays, tasks, completions and changelog stay on
one partition whatever partitioner an upstream producer used.

The executor runs modules at least once (a redelivered task runs again); the engine
drops the duplicate result and KV counters are idempotent by operation id, so the
effect is exactly once. The projector folds events into MongoDB guarded by ``seq``.

A worker with channels hands long flowlets (``defer_after_ms``, channel modules) to its
``ChannelPool`` instead of running them in the executor, and watches their heartbeats
in the orchestrator: see ``channels``.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import defaultdict
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import TYPE_CHECKING, Any, TypeVar, cast

import faust
from faust.auth import SASLCredentials
from faust.types import EventT
from tenacity import AsyncRetrying, retry_if_exception_type, wait_exponential

from flow8_streams.domain import events as ev
from flow8_streams.domain.messages import (
    GENERATED_PREFIX,
    CancelPlay,
    ChannelHeartbeat,
    FlowletResult,
    Start,
    StartPlay,
    Task,
    Tick,
)
from flow8_streams.domain.state import PlayState
from flow8_streams.engine import in_flight, next_wakeup, step
from flow8_streams.engine.projection import ApplyResult
from flow8_streams.errors import CompanyMismatch, Flow8Error, LimitExceeded, StoreUnavailable
from flow8_streams.logs import bind, log_context
from flow8_streams.metrics import Metrics, replace_samples
from flow8_streams.modules.executor import execute_task
from flow8_streams.modules.registry import ModuleRegistry
from flow8_streams.modules.threads import ModuleThreads
from flow8_streams.runtimes.streams import codec
from flow8_streams.runtimes.streams.channels import (
    ChannelExecutor,
    ChannelWatch,
    DirectProducer,
    runs_on_channel,
    watch_for,
    without_pending,
)
from flow8_streams.runtimes.streams.claims import PlayIdClaims
from flow8_streams.runtimes.streams.kafka.faust_app import FaustApp, changelog_sent, committed_offset
from flow8_streams.runtimes.streams.kafka.partition_txn import Flow8Assignor
from flow8_streams.runtimes.streams.kafka.transactions import WorkerTransaction, transaction_timeout_ms
from flow8_streams.runtimes.streams.kafka.wiring import Wiring
from flow8_streams.runtimes.streams.repair import read_plays
from flow8_streams.runtimes.streams.table import TOMBSTONE, Slot, plays_table
from flow8_streams.settings import Settings
from flow8_streams.stores.ports import PlayProjection

if TYPE_CHECKING:
    from flow8_streams.channels.pool import ChannelPool
    from flow8_streams.stores.mongo import MongoStore

log = logging.getLogger("flow8.streams")
T = TypeVar("T")
PLAY_ID_NS = uuid.UUID("5d0c7f3e-93a1-4c1e-8d2e-6b7f0f1c2a44")
MAX_PEEK = 2048  # queued inputs looked at for play ids to claim with the one in hand
RECORD_OVERHEAD = 8 * 1024  # a record's key, headers and batch framing, within the producer's request size
READY_CHECK_TIMEOUT_S = 1.0  # each dependency answers /readyz's ping within this, or is not ready
READY_CACHE_S = 1.5  # /readyz answers from its last checks this long: a scrape storm pings nothing more


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class Decision:
    """What one input decided, encoded and checked to fit: written in one transaction."""

    play_id: str
    after: PlayState
    events: list[ev.Event]
    records: list[bytes]  # the events, encoded
    body: bytes  # the table entry's state (empty for a finished play)
    remote: list[ev.FlowletScheduled]  # tasks for executors
    partition: int


class Flow8App:
    """Builds and holds the faust app; the composition root passes everything in."""

    def __init__(
        self,
        settings: Settings,
        registry: ModuleRegistry,
        store: MongoStore,
        metrics: Metrics,
        channels: ChannelPool | None = None,
    ) -> None:
        self.settings = settings
        self.registry = registry
        self.store = store
        self.projection: PlayProjection = store.plays  # what the projector writes through
        self._lag_labels: set[tuple[str, ...]] = set()  # the consumer-lag samples on the page
        self.claims = PlayIdClaims(store.plays.claim, settings.limits)
        self._waiting: Any = None  # the orchestrator agent's queue of inputs (see _commands_waiting)
        self.metrics = metrics
        self.wakeups: dict[str, tuple[datetime, str, int]] = {}
        self._repairs: set[asyncio.Task[None]] = set()  # see _repair
        self._owned: set[int] = set()  # completions partitions assigned here (see _on_assigned)
        self._taken: dict[int, datetime] = {}  # partitions taken over and when, until _redispatch looked
        self._readiness: tuple[float, dict[str, Any]] | None = None  # (when, checks) of /readyz's last look
        self._readiness_check: asyncio.Future[dict[str, Any]] | None = None  # the look under way
        t = settings.topics
        s = settings
        datadir = s.data_dir / s.worker_id
        datadir.mkdir(parents=True, exist_ok=True)
        self.transaction = WorkerTransaction(
            transactional_id=f"{s.group_id}-{s.worker_id}",
            producer_options={**s.kafka_client_options(), "client_id": f"{s.worker_id}-txn", "linger_ms": 1},
            transaction_timeout_ms=transaction_timeout_ms(s.commit_interval_ms),
        )
        self.transaction.restore = self._restore
        self.wiring = Wiring(
            transaction=self.transaction,
            metrics=metrics,
            commit_linger_ms=s.commit_linger_ms,
            eager_topics=frozenset({t.commands, t.completions, t.tasks}),
            mode=s.transactions,
        )
        self.app = FaustApp(
            s.group_id,
            broker=[f"kafka://{h.strip()}" for h in s.kafka_bootstrap_servers.split(",")],
            broker_credentials=kafka_credentials(s),
            store="memory://",
            processing_guarantee=s.processing_guarantee,
            broker_commit_interval=s.commit_interval_ms / 1000,
            broker_commit_every=10_000,
            broker_session_timeout=s.session_timeout_ms / 1000,
            broker_heartbeat_interval=max(1.0, s.session_timeout_ms / 10_000),
            topic_partitions=t.partitions,
            topic_replication_factor=t.replication_factor,
            table_standby_replicas=0,
            key_serializer="raw",
            value_serializer="raw",
            web_enabled=True,
            web_router_enabled=False,
            web_tables_enabled=False,
            web_graph_enabled=False,
            web_stats_enabled=False,
            web_metrics_enabled=False,
            web_port=s.server_port,
            web_bind=s.server_host,
            web_host=s.advertised_host,
            datadir=str(datadir),
            producer_linger_ms=1,
            stream_wait_empty=False,
            consumer_auto_offset_reset="earliest",
            PartitionAssignor=Flow8Assignor,
            wiring=self.wiring,
        )
        app = self.app
        cast(Flow8Assignor, app.assignor).anchor = t.commands
        kw: dict[str, Any] = {"partitions": t.partitions, "key_serializer": "raw", "value_serializer": "raw"}
        self.inputs = app.topic(t.commands, t.completions, **kw)
        self.commands = app.topic(t.commands, **kw)
        self.completions = app.topic(t.completions, **kw)
        self.tasks = app.topic(t.tasks, **kw)
        self.events = app.topic(t.events, **kw)
        self.results = app.topic(t.play_results, **kw)
        self.dlq = app.topic(t.dlq, **kw)
        self.plays = plays_table(app, "plays", t.partitions)
        app.agent(self.inputs, name="orchestrator")(self._orchestrator)
        app.agent(self.tasks, name="executor", concurrency=s.executor_concurrency)(self._executor)
        app.agent(self.events, name="projector")(self._projector)
        app.timer(0.05, name="flow8-ticks")(self._fire_ticks)
        app.timer(5.0, name="flow8-rescan")(self._rescan)
        app.on_partitions_assigned.connect(cast(Any, self._on_assigned))

        # faust makes a View class of each page function: give it plain functions
        async def metrics_page(view: Any, request: Any) -> Any:
            return await self._metrics_page(view)

        async def health_page(view: Any, request: Any) -> Any:
            return await self._health_page(view)

        async def ready_page(view: Any, request: Any) -> Any:
            return await self._ready_page(view)

        app.page("/metrics")(metrics_page)
        app.page("/healthz")(health_page)
        app.page("/readyz")(ready_page)

        # one plain producer for what goes out of any transaction: ticks, re-sent tasks, channel messages
        self.direct = DirectProducer(s)
        app.flow8_on_start = (self.direct.start,)
        app.flow8_on_stop = (self.direct.stop,)

        # channels: the executor runs long flowlets on the pool, the orchestrator watches them
        self.channel_executor: ChannelExecutor | None = None
        self.channel_watch: ChannelWatch | None = None
        if channels is not None:
            heartbeat_timeout = s.execution.channel_heartbeat_timeout_seconds
            self.channel_executor = ChannelExecutor(
                channels, self.direct, advertised_host=s.advertised_host, heartbeat_every_s=heartbeat_timeout / 3
            )
            self.channel_watch = watch_for(registry, heartbeat_timeout)
            app.flow8_on_start = (self.direct.start, self.channel_executor.start)
            app.flow8_on_stop = (self.channel_executor.close, self.direct.stop)
        # plain modules run on these threads, never on the loop the agents share
        self.threads = ModuleThreads(s.module_threads, on_stuck=metrics.module_threads_stuck.set)
        app.flow8_on_stop = (*app.flow8_on_stop, self._close_threads)

    @property
    def topic_names(self) -> list[str]:
        t = self.settings.topics
        return [t.commands, t.completions, t.tasks, t.events, t.play_results, t.dlq]

    # ------------------------------------------------------------ orchestrator

    async def _orchestrator(self, stream: faust.StreamT[bytes]) -> None:
        self._waiting = getattr(stream.channel, "queue", None)
        async for event in stream.events():
            with log_context():  # one message's scope: _decision binds its play once decoded
                try:
                    decision = await self._decision(event)
                except codec.BadMessage as exc:
                    await self._dead_letter(event, exc.reason, exc.detail)
                    continue
                except Flow8Error as exc:  # refused: another company's play, a limit, an unknown flow
                    await self._dead_letter(event, exc.reason, str(exc))
                    continue
                except Exception as exc:  # whatever the engine could not take: the partition goes on
                    log.exception(
                        "deciding on %s[%d]@%d failed",
                        event.message.topic,
                        event.message.partition,
                        event.message.offset,
                    )
                    await self._dead_letter(event, "decide_failed", f"{type(exc).__name__}: {str(exc)[:1000]}")
                    continue
                if decision is not None:
                    await self._commit(decision)

    async def _decision(self, event: EventT[bytes]) -> Decision | None:
        """What ``event`` decides, checked to fit before anything is written; None when
        it changes nothing. Raises what makes it a dead letter."""
        message = event.message
        limits = self.settings.limits
        claim = False  # a client's own play id: reserve it for its company before writing anything
        if message.topic == self.settings.topics.commands:
            command = codec.decode_command(event.value, limits)
            claim = isinstance(command, StartPlay) and command.play_id is not None
            incoming = await self._resolve(command, message)
        else:
            incoming = codec.decode_internal(event.value, limits)
            if isinstance(incoming, ChannelHeartbeat):  # for the watchdog, not the engine
                if self.channel_watch is not None:
                    self.channel_watch.beat(incoming)
                return None
        play_id = incoming.play_id
        bind(company_id=incoming.company_id, play_id=play_id, flowlet=getattr(incoming, "flowlet", None))
        raw = self.plays.get(play_id)
        state: PlayState | None = None
        if raw is not None:
            _, body = Slot.unpack(raw)
            if body.startswith(TOMBSTONE):
                owner = Slot.finished_company(body)
                if owner is not None and owner != incoming.company_id:
                    raise CompanyMismatch.of(incoming.type, play_id, incoming.company_id)
                return None  # finished: repeats, late results and ticks change nothing
            state = PlayState.model_validate_json(body)
        elif claim:
            holder = await self._retrying(
                f"claiming play id {play_id!r}",
                partial(self.claims.holder, incoming.company_id, play_id, self._commands_waiting(), utcnow()),
            )
            if holder != incoming.company_id:
                raise CompanyMismatch.of("StartPlay", play_id, incoming.company_id)
        elif not isinstance(incoming, Start | Tick):
            # Not a play of this worker's partitions: a message keyed by another company lands
            # on that company's partition. Refused if another company holds the play.
            owner = await self._retrying(
                f"reading the owner of play {play_id!r}", partial(self.store.plays.owner, play_id)
            )
            if owner is not None and owner != incoming.company_id:
                raise CompanyMismatch.of(incoming.type, play_id, incoming.company_id)
            return None
        events, after, remote = await self._advance(state, incoming)
        if not events or after is None:
            return None
        body = b"" if after.finished else after.__pydantic_serializer__.to_json(after)
        records = [ev.event_adapter.dump_json(event) for event in events]
        cap = limits.max_message_bytes - RECORD_OVERHEAD
        too_large = max([len(body), *map(len, records)])
        if too_large > cap:
            raise LimitExceeded(
                f"play {play_id!r}: a record of this decision would be {too_large} bytes, over the limit of "
                f"{cap} (limits.max_message_bytes); nothing was written"
            )
        return Decision(play_id, after, events, records, body, remote, message.partition)

    def _commands_waiting(self) -> list[bytes | None]:
        """The raw commands queued behind the one in hand (read, not taken: the agent's queue
        is an ``asyncio.Queue``, whose items are its ``_queue``)."""
        commands = self.settings.topics.commands
        waiting = list(getattr(self._waiting, "_queue", ()))[:MAX_PEEK]
        return [e.value for e in waiting if getattr(getattr(e, "message", None), "topic", None) == commands]

    async def _commit(self, d: Decision) -> None:
        if self.channel_watch is not None:
            self.channel_watch.track(d.after, d.partition)
        if self.channel_executor is not None:
            for event in d.events:
                if isinstance(event, ev.FlowletTimedOut | ev.FlowletCancelled):
                    p = event.payload
                    self.channel_executor.cancel(d.play_id, p.flowlet, p.attempt)
        # One decision, one transaction: a commit between two of these sends split the
        # decision (a play's table entry said "finished" while its PlayCompleted was
        # aborted with the worker). The commit takes the same gate (the worker's, or the
        # partition's: see partition_txn.Flow8Producer).
        gate = self.transaction.gate if self.wiring.per_worker else self.wiring.partition_gates[d.partition]
        async with gate:
            await self._publish(d)

    def _restore(self, entries: Mapping[str, bytes | None]) -> None:
        """Put table entries back as they were before an aborted transaction wrote them."""
        data: Any = self.plays.data  # the table's store
        for play_id, before in entries.items():
            if before is None:
                data.pop(play_id, None)
            else:
                data[play_id] = before

    async def _resolve(self, command: Any, message: Any) -> Any:
        """A StartPlay names a flow; the engine needs its definition."""
        if isinstance(command, CancelPlay):
            return command
        assert isinstance(command, StartPlay)
        flow = await self._retrying(
            f"reading flow {command.flow!r} of {command.company_id!r}",
            partial(self.store.flows.get, command.company_id, command.flow, command.flow_version),
        )
        if flow is None:
            version = f" v{command.flow_version}" if command.flow_version else ""
            raise Flow8Error(
                f"StartPlay: company {command.company_id!r} has no flow {command.flow!r}{version} in the catalog"
            )
        flow.check(self.registry.names(), self.settings.limits)
        # No play_id: derive one from the command's place in the log, so that a replay
        # of the same command (after an aborted transaction) names the same play.
        play_id = command.play_id or GENERATED_PREFIX + str(
            uuid.uuid5(PLAY_ID_NS, f"{message.topic}/{message.partition}/{message.offset}")
        )
        return Start(play_id=play_id, company_id=command.company_id, flow=flow, input=command.input)

    async def _publish(self, d: Decision) -> None:
        """The table entry of ``d.after``, its events, tasks and result: sent now, in order."""
        play_id, after, partition = d.play_id, d.after, d.partition
        if after.finished:
            await self._store(play_id, Slot.finished(partition, after.status.value, after.company_id), partition)
            self.wakeups.pop(play_id, None)
        else:
            await self._store(play_id, Slot.pack(partition, d.body), partition)
            wake = next_wakeup(after)
            if wake is None:
                self.wakeups.pop(play_id, None)
            else:
                self.wakeups[play_id] = (wake, after.company_id, partition)
        key = after.company_id.encode()
        for event, record in zip(d.events, d.records, strict=True):
            await self.events.send(key=key, value=record, partition=partition)
            self.metrics.events.labels(event.type).inc()
            if isinstance(event, ev.PlayStarted):
                self.metrics.plays_started.inc()
        for task in d.remote:
            await self.tasks.send(key=key, value=codec.encode(Task.scheduled(task)), partition=partition)
        if after.finished:
            await self.results.send(key=key, value=codec.encode_result(after), partition=partition)
            status = after.status.value
            self.metrics.plays_finished.labels(status).inc()
            if after.ended_at is not None:
                self.metrics.play_duration.labels(status).observe((after.ended_at - after.started_at).total_seconds())

    async def _store(self, play_id: str, value: bytes, partition: int) -> None:
        """Set a table entry and send its changelog record now. ``table[key] = value``
        leaves the record to faust's send buffer, which may send it after the next
        commit: in another transaction than the decision's events."""
        table: Any = self.plays  # faust.Table: its serializers and changelog callback
        if self.wiring.per_worker:  # what an aborted transaction puts back
            self.transaction.writes(play_id, table.data.get(play_id))
        table.data[play_id] = value

        table.data.remember(play_id, partition)
        await table.changelog_topic.send(
            key=play_id,
            value=value,
            partition=partition,
            key_serializer=table.key_serializer,
            value_serializer=table.value_serializer,
            callback=changelog_sent(table),
        )

    async def _advance(
        self, state: PlayState | None, incoming: Any
    ) -> tuple[list[ev.Event], PlayState | None, list[ev.FlowletScheduled]]:
        """Run the engine on ``incoming``, and on the results of inline modules it
        schedules (quick pure functions: no trip through the tasks topic, the same
        events). Returns all events, the final state, and the tasks for executors."""
        all_events: list[ev.Event] = []
        remote: list[ev.FlowletScheduled] = []
        queue = [incoming]
        while queue:
            events, after = step(state, queue.pop(0), utcnow(), self.settings.limits)
            if not events:
                continue
            all_events += events
            state = after
            for event in events:
                if not isinstance(event, ev.FlowletScheduled):
                    continue
                p = event.payload
                deferred = self.channel_executor is not None and p.defer_after_ms is not None
                if p.module_ref in self.registry and self.registry.get(p.module_ref).inline and not deferred:
                    queue.append(await self._run_task(Task.scheduled(event)))
                else:
                    remote.append(event)
        if state is not None and state.finished:
            remote = []  # scheduled and then cancelled within this same decision
        return all_events, state, remote

    async def _dead_letter(self, event: EventT[bytes], reason: str, detail: str) -> None:
        message = event.message
        headers = [
            ("flow8-error", detail.encode()[:4000]),
            ("flow8-reason", reason.encode()),
            ("flow8-source-topic", message.topic.encode()),
            ("flow8-source-partition", str(message.partition).encode()),
            ("flow8-source-offset", str(message.offset).encode()),
        ]
        raw_headers: Any = message.headers or []
        original: list[tuple[str, Any]] = list(raw_headers.items() if isinstance(raw_headers, dict) else raw_headers)
        headers += [
            (k, v if isinstance(v, bytes) else str(v).encode()) for k, v in original if not k.startswith("flow8-")
        ]
        await self.dlq.send(key=event.key, value=event.value, headers=headers, partition=message.partition)
        self.metrics.dlq.labels(message.topic, reason).inc()
        log.warning("dead-lettered %s[%d]@%d: %s", message.topic, message.partition, message.offset, detail)

    # ------------------------------------------------------------ timers

    async def _fire_ticks(self) -> None:
        if self.channel_watch is not None and self.channel_watch.entries:
            await self._channels_lost()
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

    async def _channels_lost(self) -> None:
        """Channel flowlets not heard of for the heartbeat timeout: failed, ``channel_lost``."""
        assert self.channel_watch is not None and self.channel_executor is not None
        owned = self._owned_partitions()
        for key, watched in self.channel_watch.overdue():
            if watched.partition not in owned:
                continue  # the partition went to another worker, whose watch has the flowlet now
            result = self.channel_watch.lost(key, watched)
            log.warning("channel flowlet %s/%s attempt %s lost: %s", *key, result.error)
            self.metrics.channels_lost.inc()
            try:
                await self.direct.send(watched.partition, watched.company_id, result)
            except Exception as exc:  # Kafka unavailable: the next rescan watches it again
                log.warning("channel_lost of %s/%s not sent: %s", key[0], key[1], exc)

    async def _rescan(self) -> None:
        """Rebuild the wakeups and channel watch of the plays this instance owns (after a rebalance)."""
        found: dict[str, tuple[datetime, str, int]] = {}
        owned: list[tuple[PlayState, int]] = []
        for play_id, raw in list(self.plays.items()):
            partition, body = Slot.unpack(raw)
            if body.startswith(TOMBSTONE):
                continue
            state = PlayState.model_validate_json(body)
            owned.append((state, partition))
            wake = next_wakeup(state)
            if wake is not None:
                found[play_id] = (wake, state.company_id, partition)
        self.wakeups = found
        if self.channel_watch is not None:
            # the table may still hold plays of partitions revoked from us: not ours to watch
            mine = self._owned_partitions()
            self.channel_watch.rescan((state, partition) for state, partition in owned if partition in mine)
        self.metrics.inflight_plays.set(sum(1 for _ in found))
        await self._redispatch(owned)

    async def _on_assigned(self, sender: Any, assigned: Any, **kwargs: Any) -> None:
        completions = self.settings.topics.completions
        owned = {tp.partition for tp in assigned if tp.topic == completions}
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
        if getattr(self.app, "in_recovery", False) or not self._taken:
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
                    await self.direct.send(partition, state.company_id, task, topic=self.settings.topics.tasks)
                    sent += 1
                except Exception as exc:  # Kafka unavailable: the flowlet's timeout still applies
                    log.warning("task %s/%s not sent again: %s", state.play_id, name, exc)
        if sent:
            log.info("took over partitions %s: sent %d task(s) in flight there again", sorted(taken), sent)

    def _owned_partitions(self) -> set[int]:
        completions = self.settings.topics.completions
        return {tp.partition for tp in self.app.consumer.assignment() if tp.topic == completions}

    # ------------------------------------------------------------ executor

    async def _executor(self, stream: faust.StreamT[bytes]) -> None:
        async for event in stream.events():
            try:
                task = codec.decode_task(event.value, self.settings.limits)
            except codec.BadMessage as exc:
                await self._dead_letter(event, exc.reason, exc.detail)
                continue
            channels = self.channel_executor
            if channels is not None and runs_on_channel(self.registry, task.module_ref, task.defer_after_ms):
                channels.hand_over(task, event.message.partition)  # acked now; it reports later
                continue
            result = await self._run_task(task)
            await self.completions.send(key=event.key, value=codec.encode(result), partition=event.message.partition)

    async def _close_threads(self) -> None:
        self.threads.close()

    async def _run_task(self, task: Task) -> FlowletResult:
        t0 = time.perf_counter()
        try:
            result = await asyncio.wait_for(
                execute_task(self.registry, self.store.kv, utcnow, task, threads=self.threads),
                # the engine times the attempt out; this only frees the slot
                timeout=max(0.0, (task.deadline - utcnow()).total_seconds()) + 1.0,
            )
        except TimeoutError:
            result = FlowletResult.failure(task, f"timed out after {task.timeout_ms} ms", now=utcnow())
        result = without_pending(result, task.module_ref)
        outcome = "ok" if result.ok else "error"
        self.metrics.flowlet_duration.labels(task.module_ref, outcome).observe(time.perf_counter() - t0)
        return result

    # ------------------------------------------------------------ projector

    async def _projector(self, stream: faust.StreamT[bytes]) -> None:
        batch_size = self.settings.projector_batch
        async for received in stream.take_events(batch_size, within=0.05):  # type: ignore[attr-defined]
            batch: list[ev.Event] = []
            partition_of: dict[str, int] = {}
            for event in received:
                try:
                    batch.append(ev.event_adapter.validate_json(event.value or b""))
                except ValueError as exc:  # a foreign producer wrote to the events topic
                    await self._dead_letter(event, "invalid_event", f"event: {str(exc)[:500]}")
                    continue
                partition_of[batch[-1].play_id] = event.message.partition
            if not batch:
                continue
            result = await self._retrying(f"projection of {len(batch)} events", partial(self.projection.apply, batch))
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
        now = utcnow()
        for at in result.appended_at:
            self.metrics.projection_lag.observe(max(0.0, (now - at).total_seconds()))

    async def _repair(self, partition: int, play_ids: set[str]) -> None:
        """Project ``play_ids`` again from their events read back from the log (``repair``)."""
        try:
            events = await read_plays(self.settings, partition, play_ids)
            result = await self._retrying(f"repair of {len(play_ids)} play(s)", partial(self.projection.apply, events))
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

    async def _retrying(self, what: str, call: Callable[[], Awaitable[T]]) -> T:
        """``call()`` again while MongoDB is unavailable. The message that needs it stays
        unacked meanwhile (a crash reads it again), so the agent falls behind and skips
        nothing; the projector's writes are guarded by seq, so a half-applied batch
        applied again is harmless."""
        async for attempt in AsyncRetrying(
            retry=retry_if_exception_type(StoreUnavailable),
            wait=wait_exponential(multiplier=0.1, max=5),
            before_sleep=lambda state: log.warning(
                "%s failed (attempt %d), retrying: %s",
                what,
                state.attempt_number,
                state.outcome.exception() if state.outcome else "?",
            ),
        ):
            with attempt:
                return await call()
        raise AssertionError("unreachable: retried until it succeeds")  # pragma: no cover

    # ------------------------------------------------------------ web

    async def _metrics_page(self, web: Any) -> Any:
        await self._update_lag()
        return web.bytes(self.metrics.render(), headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"})

    async def _health_page(self, web: Any) -> Any:
        """Live: this answer comes from the worker's event loop, whatever Kafka and MongoDB do."""
        consumer = self.app.consumer
        assigned = sorted(f"{tp.topic}[{tp.partition}]" for tp in consumer.assignment())
        return web.json({"status": "ok", "worker": self.settings.worker_id, "assigned": assigned})

    async def _ready_page(self, web: Any) -> Any:
        """Ready: Kafka and MongoDB answer a ping and this worker has partitions; 503 names what fails."""
        checks = await self._readiness_checks()
        failing = sorted(name for name, check in checks.items() if not check["ok"])
        body: dict[str, Any] = {
            "status": "not_ready" if failing else "ready",
            "worker": self.settings.worker_id,
            "checks": checks,
        }
        if failing:
            body["failing"] = failing
        return web.json(body, status=503 if failing else 200)

    async def _readiness_checks(self) -> dict[str, Any]:
        """The last checks if younger than READY_CACHE_S, else new ones; requests that come
        while a check runs share it."""
        if self._readiness is not None and time.monotonic() - self._readiness[0] < READY_CACHE_S:
            return self._readiness[1]
        if self._readiness_check is None:
            self._readiness_check = asyncio.ensure_future(self._check_readiness())
        check = self._readiness_check
        try:
            return await asyncio.shield(check)
        finally:
            if check.done() and self._readiness_check is check:
                self._readiness_check = None

    async def _check_readiness(self) -> dict[str, Any]:
        async def bounded(ping: Callable[[], Awaitable[Any]]) -> dict[str, Any]:
            started = time.perf_counter()
            try:
                async with asyncio.timeout(READY_CHECK_TIMEOUT_S):
                    await ping()
            except TimeoutError:
                return {"ok": False, "error": f"no answer within {READY_CHECK_TIMEOUT_S} s"}
            except Exception as exc:  # the error's type only: messages can carry addresses
                return {"ok": False, "error": type(exc).__name__}
            return {"ok": True, "ms": round((time.perf_counter() - started) * 1000, 1)}

        kafka, mongodb = await asyncio.gather(
            bounded(self.direct.ping), bounded(partial(self.store.client.admin.command, "ping"))
        )
        assigned = len(self.app.consumer.assignment())
        checks = {
            "kafka": kafka,
            "mongodb": mongodb,
            "partitions": {"ok": assigned > 0, "assigned": assigned},
        }
        self._readiness = (time.monotonic(), checks)
        return checks

    async def _update_lag(self) -> None:
        """Lag of each partition assigned now; a partition revoked since the last sample leaves the page."""
        consumer = self.app.consumer
        samples: dict[tuple[str, ...], float] = {}
        for tp in consumer.assignment():
            high = consumer.highwater(tp)
            if high is not None:
                samples[(tp.topic, str(tp.partition))] = max(0, high - (committed_offset(consumer, tp) or 0))
        self._lag_labels = replace_samples(self.metrics.consumer_lag, samples, self._lag_labels)


def kafka_credentials(settings: Settings) -> SASLCredentials | None:
    """faust's login for every client it makes (consumer, producers, admin), from the settings."""
    if not settings.kafka_security_protocol.startswith("SASL_"):
        return None
    assert settings.kafka_sasl_password is not None  # Settings._kafka_login
    return SASLCredentials(
        username=settings.kafka_sasl_username,
        password=settings.kafka_sasl_password.get_secret_value(),
        mechanism=settings.kafka_sasl_mechanism,
        ssl_context=settings.kafka_ssl_context(),
    )
