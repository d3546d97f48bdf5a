"""The orchestrator agent: runs the engine on ``flow8.commands`` and ``flow8.completions``.

Each input is decided first (decoded, checked, the engine stepped, every record encoded
and sized) and only then written: its table entry (changelog), events, tasks and result
go out in one transaction, with the input's offset (``kafka.transactions``), fenced by
the consumer group's generation; a crash replays from the last commit and the replay
produces nothing twice. Every output goes to the partition of the input it came from, so
a company's plays, tasks, completions and changelog stay on one partition whatever
partitioner an upstream producer used.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any

import faust
from faust.types import EventT

from flow8_streams.clock import utcnow
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
from flow8_streams.engine import next_wakeup, step
from flow8_streams.errors import CompanyMismatch, Flow8Error, LimitExceeded
from flow8_streams.logs import bind, log_context
from flow8_streams.metrics import Metrics
from flow8_streams.modules.registry import ModuleRegistry
from flow8_streams.runtimes.streams import codec
from flow8_streams.runtimes.streams.channels import ChannelExecutor, ChannelWatch
from flow8_streams.runtimes.streams.checkpoints import StreamCheckpoints, last_body, table_entry, table_key
from flow8_streams.runtimes.streams.claims import PlayIdClaims
from flow8_streams.runtimes.streams.deadletters import DeadLetters
from flow8_streams.runtimes.streams.kafka.faust_app import changelog_sent
from flow8_streams.runtimes.streams.kafka.rules import of_this_generation
from flow8_streams.runtimes.streams.kafka.wiring import Wiring
from flow8_streams.runtimes.streams.retrying import StoreOutage
from flow8_streams.runtimes.streams.table import TOMBSTONE, Slot
from flow8_streams.runtimes.streams.timers import Wakeups
from flow8_streams.settings import Settings
from flow8_streams.stores.ports import FlowCatalog

log = logging.getLogger("flow8.streams")
PLAY_ID_NS = uuid.UUID("5d0c7f3e-93a1-4c1e-8d2e-6b7f0f1c2a44")
MAX_PEEK = 2048  # queued inputs looked at for play ids to claim with the one in hand
RECORD_OVERHEAD = 8 * 1024  # a record's key, headers and batch framing, within the producer's request size


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
    generation: int | None  # the consumer group generation its input was read in


@dataclass(frozen=True, slots=True)
class Outputs:
    """Where a decision goes: the faust topics of events, tasks and results, and the table."""

    events: Any
    tasks: Any
    results: Any
    checkpoints: Any
    plays: Any  # faust.Table of play id -> Slot (and company -> its last signed checkpoint)


class Orchestrator:
    def __init__(
        self,
        settings: Settings,
        registry: ModuleRegistry,
        flows: FlowCatalog,
        owner_of: Callable[[str], Awaitable[str | None]],
        claims: PlayIdClaims,
        outputs: Outputs,
        wiring: Wiring,
        metrics: Metrics,
        dead_letters: DeadLetters,
        wakeups: Wakeups,
        run_inline: Callable[[Task], Awaitable[FlowletResult]],
        *,
        generation: Callable[[], int],
        channel_executor: ChannelExecutor | None,
        channel_watch: ChannelWatch | None,
        checkpoints: StreamCheckpoints | None = None,
        outage: StoreOutage,
    ) -> None:
        self.settings = settings
        self.registry = registry
        self.flows = flows
        self.owner_of = owner_of  # play id -> the company that holds it in the store, if any
        self.claims = claims
        self.out = outputs
        self.plays = outputs.plays
        self.wiring = wiring
        self.metrics = metrics
        self.dead_letters = dead_letters
        self.wakeups = wakeups
        self.run_inline = run_inline  # an inline module's task -> its FlowletResult, awaited
        self.generation = generation  # the consumer group generation now
        self.channel_executor = channel_executor
        self.channel_watch = channel_watch
        self.checkpoints = checkpoints  # signs the heads published, with FLOW8_AUDIT_SIGNING_KEY
        self.outage = outage  # MongoDB calls wait out an outage: an input cannot be skipped
        self._waiting: Any = None  # the agent's queue of inputs (see _commands_waiting)
        wiring.transaction.restore = self.restore

    async def __call__(self, stream: faust.StreamT[bytes]) -> None:
        self._waiting = getattr(stream.channel, "queue", None)
        async for event in stream.events():
            with log_context():  # one message's scope: decide binds its play once decoded
                try:
                    decision = await self.decide(event)
                except codec.BadMessage as exc:
                    await self.dead_letters.send(event, exc.reason, exc.detail)
                    continue
                except Flow8Error as exc:  # refused: another company's play, a limit, an unknown flow
                    await self.dead_letters.send(event, exc.reason, str(exc))
                    continue
                except Exception as exc:  # whatever the engine could not take: the partition goes on
                    message = event.message
                    log.exception("deciding on %s[%d]@%d failed", message.topic, message.partition, message.offset)
                    await self.dead_letters.send(event, "decide_failed", f"{type(exc).__name__}: {str(exc)[:1000]}")
                    continue
                if decision is not None:
                    await self.commit(decision)

    async def decide(self, event: EventT[bytes]) -> Decision | None:
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
            holder = await self.outage.call(
                "orchestrator",
                "claim_play_id",
                partial(self.claims.holder, incoming.company_id, play_id, self._commands_waiting(), utcnow()),
            )
            if holder != incoming.company_id:
                raise CompanyMismatch.of("StartPlay", play_id, incoming.company_id)
        elif not isinstance(incoming, Start | Tick):
            # Not a play of this worker's partitions: a message keyed by another company lands
            # on that company's partition. Refused if another company holds the play.
            owner = await self.outage.call("orchestrator", "read_owner", partial(self.owner_of, play_id))
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
        return Decision(play_id, after, events, records, body, remote, message.partition, message.generation_id)

    def _commands_waiting(self) -> list[bytes | None]:
        """The raw commands queued behind the one in hand (read, not taken: the agent's queue
        is an ``asyncio.Queue``, whose items are its ``_queue``)."""
        commands = self.settings.topics.commands
        waiting = list(getattr(self._waiting, "_queue", ()))[:MAX_PEEK]
        return [e.value for e in waiting if getattr(getattr(e, "message", None), "topic", None) == commands]

    async def commit(self, d: Decision) -> None:
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
        # A rebalance while it was decided (awaiting MongoDB) and its input is read again from
        # the committed offset, here or by the partition's new owner: published, it would be
        # twice (``rules.of_this_generation``). The revocation's commit takes the gate, so the
        # check and the sends are on one side of it.
        wiring = self.wiring
        gate = wiring.transaction.gate if wiring.per_worker else wiring.partition_gates[d.partition]
        async with gate:
            if not of_this_generation(d.generation, self.generation()):
                self.metrics.stale_decisions.inc()
                log.info("decision on %s dropped: read before a rebalance, it is read again", d.play_id)
                return
            await self._publish(d)

    async def checkpoint(self) -> None:
        """Sign, per company, the heads published since its last checkpoint, each partition's in
        that partition's transaction (see ``checkpoints``)."""
        cps = self.checkpoints
        if cps is None:
            return
        generation = self.generation()
        for partition in cps.partitions(generation):
            wiring = self.wiring
            gate = wiring.transaction.gate if wiring.per_worker else wiring.partition_gates[partition]
            async with gate:
                if not of_this_generation(generation, self.generation()):
                    return  # a rebalance while waiting for the gate: the next round looks again
                grouped = cps.due(partition)
                for company, heads in grouped.items():
                    key = table_key(company)
                    raw = self.plays.get(key)
                    signed = cps.sign(company, heads, None if raw is None else last_body(Slot.unpack(raw)[1]))
                    await self._store(key, Slot.pack(partition, table_entry(signed)), partition)
                    await self.out.checkpoints.send(key=company.encode(), value=signed.line(), partition=partition)
                    self.metrics.checkpoints.inc()
                cps.signed(partition, grouped)

    def restore(self, entries: Mapping[str, bytes | None]) -> None:
        """Put table entries back as they were before an aborted transaction wrote them."""
        if self.checkpoints is not None:
            self.checkpoints.forget()
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
        flow = await self.outage.call(
            "orchestrator",
            "read_flow",
            partial(self.flows.get, command.company_id, command.flow, command.flow_version),
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
        out = self.out
        for event, record in zip(d.events, d.records, strict=True):
            await out.events.send(key=key, value=record, partition=partition)
            self.metrics.events.labels(event.type).inc()
            if isinstance(event, ev.PlayStarted):
                self.metrics.plays_started.inc()
        if self.checkpoints is not None:
            self.checkpoints.note(partition, d.events, self.generation())
        for task in d.remote:
            await out.tasks.send(key=key, value=codec.encode(Task.scheduled(task)), partition=partition)
        if after.finished:
            await out.results.send(key=key, value=codec.encode_result(after), partition=partition)
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
            self.wiring.transaction.writes(play_id, table.data.get(play_id))
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
                    queue.append(await self.run_inline(Task.scheduled(event)))
                else:
                    remote.append(event)
        if state is not None and state.finished:
            remote = []  # scheduled and then cancelled within this same decision
        return all_events, state, remote
