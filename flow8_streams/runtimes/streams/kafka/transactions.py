"""The worker's one transaction (exactly-once v2): replaces faust's transaction per partition.

faust's exactly-once mode runs a transactional producer per input partition and commits
each partition's offsets in that partition's transaction; a zombie was fenced by the new
owner's ``InitProducerId`` on the same transactional id. Here one ``GroupProducer`` per
worker holds one open transaction spanning all its partitions, and a zombie is fenced by
the group's generation (``producer``). The rules it keeps:

- a decision (its table entry, events, tasks and result) is sent while holding ``gate``
  and a commit takes ``gate`` too: a commit never splits a decision, and a decision's
  input offset, acked after its records were sent, is never committed before them;
- every commit cycle sends the offsets of all partitions with the group metadata of the
  consumer that read them, commits, and begins the next transaction; records sent with no
  offset to commit (a result whose input was committed already) are committed by
  ``commit_unsettled`` on the commit interval;
- every commit carries offsets (the last committed ones of the input partitions assigned,
  with those that moved on): the group checks the generation of every commit, and a
  commit of records only would pass a zombie's. With no partition assigned, nothing is
  committed;
- a send waits while a commit or an abort is under way (aiokafka refuses sends outside
  an open transaction), and a commit waits for the sends under way;
- before a revocation completes, what was done is committed (``Flow8Consumer``; the old
  generation is still the group's until the rebalance completes); what is sent after that
  commit and before the next assignment is aborted at the assignment, and nothing is
  committed in between (``hold``);
- a commit the group refuses (this member's generation is over, or it is rejoining) is
  aborted, never retried: the table entries the transaction wrote are put back as they
  were (``WorkerTransaction.undo``), and the inputs are read again from the committed
  offsets when the consumer rejoins. Until that next assignment nothing more is committed:
  the inputs acked meanwhile include those whose outputs were just aborted, and a commit of
  their offsets (the revocation's) would lose them;
- a producer fenced while its transaction was open past the transaction timeout (the
  process was frozen: SIGSTOP, a paused VM) was fenced by the broker's abort of that
  transaction: it is replaced by a new producer on the same transactional id, the table
  entries put back, and nothing committed until the next assignment, which the worker asks
  for (its group session has most likely expired too); it then works on as a new member. A
  producer fenced sooner was fenced by another process with this transactional id: the
  worker stops.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, cast

from aiokafka import TopicPartition
from aiokafka.errors import IllegalOperation, KafkaError, ProducerFenced
from faust.transport.consumer import TransactionManager
from faust.types import TP

from flow8_streams.runtimes.streams.kafka.producer import GroupFenced, GroupProducer, group_member

# The broker aborts a transaction open this long. A worker killed with an open transaction
# holds back what its successor reads of its partitions (read_committed stops at the
# transaction's first record) until then; a transaction lives about one commit interval.
TRANSACTION_TIMEOUT_MS = 6_000
STOP_WAIT_S = 10.0  # at stop, how long the abort waits for a commit cycle under way


def transaction_timeout_ms(commit_interval_ms: int) -> int:
    """Long enough for three commit intervals: a transaction open past it is the broker's to abort."""
    return max(TRANSACTION_TIMEOUT_MS, 3 * commit_interval_ms)


@dataclass
class WorkerTransaction:
    """What the app gives the transaction manager: who commits and what a decision holds."""

    transactional_id: str  # stable per worker instance: its restart fences its previous life
    producer_options: dict[str, Any]  # aiokafka's: where, how to log in, request sizes
    transaction_timeout_ms: int = TRANSACTION_TIMEOUT_MS
    gate: asyncio.Lock = field(default_factory=asyncio.Lock)  # held by a decision while it sends
    # key -> its table entry before the open transaction first wrote it (None: there was none)
    undo: dict[str, bytes | None] = field(default_factory=dict)
    restore: Callable[[Mapping[str, bytes | None]], None] | None = None  # puts ``undo`` back

    def writes(self, key: str, before: bytes | None) -> None:
        """The open transaction writes ``key``'s entry, which was ``before``."""
        self.undo.setdefault(key, before)


class WorkerTransactions(TransactionManager):
    """faust's transaction manager, with one transaction for the whole worker."""

    def __init__(self, transport: Any, *, consumer: Any, producer: Any, worker: WorkerTransaction, **kwargs: Any):
        super().__init__(transport, consumer=consumer, producer=producer, **kwargs)
        self.worker = worker
        self._producer: GroupProducer | None = None
        self._unsettled = False  # records sent since the last commit
        self._refused = False  # the group refused a commit: nothing is committed until the next assignment
        self._closed = False  # the worker stops: nothing more is committed (see Flow8Consumer.close_commits)
        self._known: dict[TopicPartition, int] = {}  # committed offsets (see _with_known)
        self._open = asyncio.Event()  # a transaction is open: sends may go
        self._sending = 0  # sends under way
        self._idle = asyncio.Event()  # no send under way
        self._idle.set()
        self._began = 0.0  # time.monotonic() when the open transaction began
        self._renewing = asyncio.Lock()  # one replacement of a fenced producer at a time

    async def on_start(self) -> None:
        self._producer = await self._new_producer()
        self._open.set()

    async def _new_producer(self) -> GroupProducer:
        """A started producer with a transaction open; made on the loop that runs it (aiokafka
        binds a producer to its loop). Its ``InitProducerId`` fences any earlier one of this id."""
        producer = GroupProducer(
            **self.worker.producer_options,
            transactional_id=self.worker.transactional_id,
            transaction_timeout_ms=self.worker.transaction_timeout_ms,
            acks="all",
            enable_idempotence=True,
        )
        await producer.start()
        await self._begin(producer)
        return producer

    async def _begin(self, producer: GroupProducer) -> None:
        await producer.begin_transaction()
        self._began = time.monotonic()

    async def _renew(self, fenced: GroupProducer, exc: Exception, *, rejoin: bool = True) -> bool:
        """``fenced`` was fenced (see the module's rules): replace it (True), or stop the worker
        when another process took its transactional id (False). Not under ``gate``: a send
        inside a decision may find the fence. ``rejoin``: ask the group for a new assignment
        (not needed at an assignment)."""
        async with self._renewing:
            if self._producer is not fenced:  # replaced already
                return self._producer is not None
            open_s = time.monotonic() - self._began
            if open_s < self.worker.transaction_timeout_ms / 1000:
                self.log.error("this worker's producer was fenced by another with its id (%s): stopping", exc)
                await self.app.crash(exc)
                return False
            self.log.warning(
                "this worker's transaction was open %.1f s, past its timeout (was the process frozen?): the broker "
                "aborted it and fenced the producer; a new one goes on, and the worker rejoins the group",
                open_s,
            )
            cast(Any, self.app).wiring.metrics.producers_renewed.inc()
            self._refused = True  # see the module's rules: not before the next assignment
            self._open.clear()
            try:
                worker = self.worker
                if worker.restore is not None:
                    worker.restore(worker.undo)
                worker.undo.clear()
                self._unsettled = False
                await fenced.stop_fenced()
                self._producer = await self._new_producer()
            finally:
                self._open.set()  # still fenced (a new producer could not start): the next send tries again
        if rejoin:
            cast(Any, self.consumer)._thread.rejoin()
        return True

    async def on_stop(self) -> None:
        """What was not committed is aborted: the partitions' next owner does it again. Under the
        gate: a commit cycle already under way (shielded, so its caller's cancellation did not stop
        it) ends first; an abort in the middle of it made its commit an invalid state transition,
        which crashed a worker as it left the group. No new cycle starts once the producer is gone."""
        producer, self._producer = self._producer, None
        if producer is None:
            return
        try:
            async with asyncio.timeout(STOP_WAIT_S), self.worker.gate:
                if producer.transaction_open():
                    await producer.abort_transaction()
        except TimeoutError:  # the broker aborts it at the transaction timeout
            self.log.warning("the open transaction was not aborted within %g s: the broker aborts it", STOP_WAIT_S)
        except KafkaError as exc:
            self.log.warning("could not abort the open transaction: %s", exc)
        finally:
            await producer.stop()

    def _ensure(self) -> GroupProducer:
        if self._producer is None:
            raise KafkaError("the worker's transactional producer is not started")
        return self._producer

    async def send(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        partition: int | None,
        timestamp: float | None,
        headers: Any,
        *,
        transactional_id: str | None = None,
    ) -> Awaitable[Any]:
        """Send in the worker's open transaction (once the commit under way, if any, is done)."""
        while not self._open.is_set():
            await self._open.wait()
        self._sending += 1
        self._idle.clear()
        try:
            producer = self._ensure()
            if producer.fenced():  # sent in the next transaction, aborted at the next assignment
                if not await self._renew(producer, ProducerFenced()):
                    raise ProducerFenced()
                producer = self._ensure()
            self._unsettled = True
            if isinstance(headers, Mapping):
                headers = list(headers.items())
            timestamp_ms = int(timestamp * 1000) if timestamp else None
            try:
                sent: Awaitable[Any] = await producer.send(
                    topic, value, key=key, partition=partition, timestamp_ms=timestamp_ms, headers=headers
                )
            except IllegalOperation:  # fenced while this send was under way: once more, on its successor
                if not (producer.fenced() and await self._renew(producer, ProducerFenced())):
                    raise
                sent = await self._ensure().send(
                    topic, value, key=key, partition=partition, timestamp_ms=timestamp_ms, headers=headers
                )
            return sent
        finally:
            self._sending -= 1
            if not self._sending:
                self._idle.set()

    async def flush(self) -> None:
        await self._ensure().flush()

    async def on_rebalance(self, assigned: Any, revoked: Any, newly_assigned: Any) -> None:
        """At a new assignment, what was sent since the revocation's commit is aborted: a
        member between two generations sent it, for partitions it may no longer own (their
        inputs are read again from the committed offsets, by whoever owns them now)."""
        producer = self._producer
        if producer is not None:
            await asyncio.shield(self._settle_assignment(producer))

    async def _settle_assignment(self, producer: GroupProducer) -> None:
        """Under the gate, so a commit cycle under way is over first: one started before the
        revocation (its caller gone, the cycle shielded) was refused after the assignment once,
        and its refusal held every commit back for good (the broker then timed the transaction
        out and fenced the producer; the worker's partitions stopped)."""
        async with self.worker.gate:
            self._open.clear()
            try:
                await self._idle.wait()
                producer = self._ensure()
                if producer.fenced():  # what it held is aborted: as the abort below
                    await self._renew(producer, ProducerFenced(), rejoin=False)
                elif self._unsettled:
                    await self._abort(producer, "sent between the revocation's commit and the assignment")
                self._refused = False  # the inputs are read again from the committed offsets from here
            finally:
                self._reopen()

    async def on_partitions_revoked(self, revoked: set[TP]) -> None:
        """Nothing: ``Flow8Consumer`` commits before faust forgets the revoked partitions' acks."""

    def committed(self, offsets: Mapping[Any, int | None]) -> None:
        """The group's committed offsets, as the consumer read them at an assignment."""
        self._known.update({_tp(tp): offset for tp, offset in offsets.items() if offset is not None})

    def hold(self) -> None:
        """The revocation's commit is done: nothing more is committed before the assignment
        aborts what is sent meanwhile (``on_rebalance``)."""
        self._refused = True

    def close(self) -> None:
        """Commit nothing more: the worker stops, and what it does from here is aborted."""
        self._closed = True

    async def commit(self, offsets: Mapping[TP, int], start_new_transaction: bool = True) -> bool:
        """Commit the open transaction with ``offsets`` (of every partition), between two decisions."""
        return await self._cycle(offsets)

    async def commit_unsettled(self) -> None:
        """Commit the records sent since the last commit, when no offset moved on with them."""
        if self._unsettled:
            await self._cycle({})

    async def _cycle(self, offsets: Mapping[TP, int]) -> bool:
        """One commit cycle; shielded: a cycle cancelled between its commit and the next
        begin left no transaction open, and every send waited for one forever."""
        producer = self._producer
        if producer is None:  # stopped: what was not committed was aborted (on_stop)
            return False
        return await asyncio.shield(self._locked_cycle(producer, offsets))

    async def _locked_cycle(self, producer: GroupProducer, offsets: Mapping[TP, int]) -> bool:
        worker = self.worker
        async with worker.gate:
            self._open.clear()
            try:
                await self._idle.wait()
                producer = self._ensure()  # replaced, if it was fenced, while the cycle waited
                if producer.fenced():
                    await self._renew(producer, ProducerFenced())
                if self._refused or self._closed:  # see the module's rules: not before the next assignment
                    return False
                sending = self._with_known(offsets)
                if not sending:  # nothing to prove this member's generation with: not now
                    return False
                try:
                    member = group_member(cast(Any, self.consumer)._thread._ensure_consumer())
                    await producer.send_offsets_to_transaction(sending, member)
                    self._unsettled = False
                    await producer.commit_transaction()
                except GroupFenced as exc:
                    await self._abort(producer, f"commit refused: {exc}")
                    self._refused = True
                    return False
                except ProducerFenced as exc:
                    await self._renew(producer, exc)
                    return False
                self._known.update(sending)
                worker.undo.clear()
                await self._begin(producer)
            finally:
                self._reopen()
        return True

    def _reopen(self) -> None:
        """Sends may go again, if a transaction is open."""
        producer = self._producer
        if producer is not None and producer.transaction_open():
            self._open.set()

    def _with_known(self, offsets: Mapping[TP, int]) -> dict[TopicPartition, int]:
        """``offsets`` and the committed offsets of the other input partitions assigned: every
        commit carries offsets, so the group checks the generation of every commit (one of
        records only would be a zombie's way past the check)."""
        assigned = {_tp(tp) for tp in self.consumer.assignment()}
        sending = {tp: offset for tp, offset in self._known.items() if tp in assigned}
        sending.update({_tp(tp): offset for tp, offset in offsets.items()})
        return sending

    async def _abort(self, producer: GroupProducer, reason: str) -> None:
        """Abort the open transaction and put back the table entries it wrote."""
        worker = self.worker
        self.log.warning("transaction aborted (%s); its inputs are read again from the committed offsets", reason)
        try:
            if producer.fenced():
                raise ProducerFenced()
            await producer.abort_transaction()
        except ProducerFenced as exc:  # the broker aborted it at its timeout: the same, and a new producer
            await self._renew(producer, exc, rejoin=False)
            return
        if worker.restore is not None:
            worker.restore(worker.undo)
        worker.undo.clear()
        self._unsettled = False
        await self._begin(producer)


def _tp(tp: Any) -> TopicPartition:
    return TopicPartition(tp.topic, tp.partition)
