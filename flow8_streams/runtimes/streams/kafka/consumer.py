"""faust's consumer, with the rules it breaks kept (see each override; the rules themselves
are pure functions in ``rules``)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any, cast

from aiokafka import AIOKafkaConsumer
from aiokafka.errors import KafkaError
from faust.sensors import Sensor
from faust.transport.consumer import ensure_TP
from faust.transport.drivers import aiokafka as kafka_driver
from mode import Service

from flow8_streams.runtimes.streams import changelog
from flow8_streams.runtimes.streams.kafka import rules
from flow8_streams.runtimes.streams.kafka.partition_txn import Flow8Producer
from flow8_streams.runtimes.streams.kafka.transactions import WorkerTransactions
from flow8_streams.runtimes.streams.kafka.wiring import Wiring

log = logging.getLogger("flow8.streams")


class Flow8ConsumerThread(kafka_driver.AIOKafkaConsumerThread):
    """Under exactly-once faust takes a changelog's highwater from aiokafka's
    ``last_stable_offset``, which aiokafka knows only after it fetched that partition:
    for a partition just taken over it is None, faust reads -1 ("empty changelog") and
    does not restore the table. The plays of a dead worker were then lost to its
    successor (their results found no state). A ListOffsets request of this
    read_committed consumer answers the last stable offset itself, and for a changelog
    the highwater is one past its last record (``changelog.last_records``): the commit
    marker after it is never delivered, and faust waited 10 s for it."""

    _tail: AIOKafkaConsumer | None

    async def _highwaters(self, partitions: Any) -> Any:
        ends = await self._ensure_consumer().end_offsets(list(partitions))
        changelogs = {tp: end for tp, end in ends.items() if self.consumer._is_changelog_tp(tp)}
        if changelogs:
            try:
                async with self._tail_lock:  # one reader, one question at a time
                    last = await changelog.last_records(await self._tail_reader(), changelogs)
            except (KafkaError, TimeoutError) as exc:  # faust's wait for the last marker is the fallback
                log.warning("could not find where the changelog ends (%s): the restore will take 10 s longer", exc)
                self.exact.difference_update(changelogs)
            else:
                ends.update({tp: offset + 1 for tp, offset in last.items()})
                self.exact.update(last)
        return ends

    async def _tail_reader(self) -> AIOKafkaConsumer:
        """A consumer of no group on this thread's loop, for ``changelog.last_records``."""
        if self._tail is None:
            conf = self.consumer.app.conf
            tail = AIOKafkaConsumer(
                bootstrap_servers=self._ensure_consumer()._client._bootstrap_servers,
                **kafka_driver.credentials_to_aiokafka_auth(conf.broker_credentials, conf.ssl_context),
                isolation_level="read_committed",
                enable_auto_commit=False,
            )
            await tail.start()
            self._tail = tail
        return self._tail

    def key_partition(self, topic: str, key: bytes | None, partition: int | None = None) -> int | None:
        """faust's transaction manager asks this for the partition of a send, from the
        consumer's metadata, which knows subscribed topics only. For the results and DLQ
        topics it answered None, and faust then sent them with its plain producer, outside
        the partition's transaction: a worker killed before its commit left a result
        whose events were aborted, and the play's successor published it again. Every
        send here names its partition (the input's); it is the answer."""
        if partition is not None and self._ensure_consumer()._client.cluster.partitions_for_topic(topic) is None:
            return partition
        return super().key_partition(topic, key, partition)

    def verify_event_path(self, now: float, tp: Any) -> Any:
        """faust's livelock check reads the position of every assigned partition; one just
        sought to its beginning (never committed) has none until the fetcher resets it, and
        aiokafka asserts it has one: the check crashed the worker at a fresh group's first
        rebalance. Such a partition is not checked until it has a position."""
        try:
            return super().verify_event_path(now, tp)
        except AssertionError:  # aiokafka's TopicPartitionState.position: no position yet
            return None

    async def on_thread_stop(self) -> None:
        await super().on_thread_stop()
        if self._tail is not None:
            await self._tail.stop()

    # Seek epochs. faust iterates a fetched batch on its own loop while this thread goes
    # on, and a seek (a rebalance, a resumed partition) can come in between: records of
    # a batch fetched before the seek were then delivered after it. faust took the jump
    # from the seek's offset to such a record for a gap of transaction markers, counted
    # the records in between as done, and dropped them when they were fetched again (a
    # completion lost this way left its play unfinished). Every seek runs on this
    # thread's loop and bumps its partition's epoch; a batch carries the epochs of when
    # aiokafka handed it over (aiokafka itself drops what it fetched before a seek);
    # a record whose partition was sought since is not delivered: it is read again
    # from the new position.
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.epochs: dict[Any, int] = {}
        self.sought_to: dict[Any, tuple[int, int | None]] = {}  # tp -> (epoch, offset) of its last seek
        self.handed: dict[Any, tuple[int, int]] = {}  # tp -> (offset, epoch) of the last record handed over
        self._tail = None  # see _tail_reader
        self.exact: set[Any] = set()  # changelog partitions whose highwater is their last record
        self._tail_lock = asyncio.Lock()
        super().__init__(*args, **kwargs)

    def _bump(self, tps: Any, offset: int | None = None) -> None:
        """A seek of ``tps`` to ``offset`` (None: their beginning): a new epoch, where reading resumes."""
        for tp in tps:
            epoch = self.epochs.get(tp, 0) + 1
            self.sought_to[tp] = (epoch, offset)  # first: whoever sees the epoch sees where it begins
            self.epochs[tp] = epoch

    def seek(self, partition: Any, offset: int) -> None:
        self._bump([partition], offset)
        super().seek(partition, offset)

    async def seek_now(self, partition: Any, offset: int) -> None:
        """``seek`` on this thread's loop (between two fetches, never inside one)."""

        async def seek() -> None:
            self.seek(partition, offset)

        await self.call_thread(seek)

    async def seek_to_committed(self) -> Any:
        async def seek() -> Any:
            # aiokafka's seek_to_committed, with the epoch bumped exactly for the partitions
            # sought (one that is not sought, e.g. a changelog, must keep its fetched records)
            consumer = self._ensure_consumer()
            committed = {}
            for tp in consumer.assignment():
                committed[tp] = offset = await consumer.committed(tp)
                if offset and offset > 0:
                    self._bump([tp], offset)
                    consumer.seek(tp, offset)
            return committed

        return await self.call_thread(seek)

    def rejoin(self) -> None:
        """Leave this generation and join the next one: a revocation and an assignment, after
        which every input is read again from its committed offset. Asked of this thread's loop
        without waiting for it: a caller may be inside a revocation, which that loop awaits."""
        coordinator = self._ensure_consumer()._coordinator
        self.thread_loop.call_soon_threadsafe(coordinator.request_rejoin)

    async def seek_to_beginning(self, *partitions: Any) -> None:
        async def seek() -> None:
            self._bump(partitions)
            await self._ensure_consumer().seek_to_beginning(*partitions)

        await self.call_thread(seek)

    async def _fetch_records(
        self, consumer: Any, active_partitions: Any, timeout: float | None = None, max_records: int | None = None
    ) -> Any:
        records = await super()._fetch_records(consumer, active_partitions, timeout=timeout, max_records=max_records)
        epochs = self.epochs
        return {tp: self._handing(tp, epochs.get(tp, 0), batch) for tp, batch in records.items()}

    def _handing(self, tp: Any, epoch: int, batch: Any) -> Any:
        """The records of ``batch`` not sought past, each noted as handed over when faust takes it."""
        handed = self.handed
        for record in rules.unless_sought(self.epochs, tp, epoch, batch):
            handed[tp] = (record.offset, epoch)
            yield record

    def sought_since(self, tp: Any, offset: int | None = None) -> bool:
        """Whether the record of ``tp`` faust took last (at ``offset``, if given) was fetched
        before a seek of ``tp`` that came since: faust checks a record's offset against
        the last delivered, hands it to the streams and only then notes it as delivered,
        awaiting in between, and a seek can come in that while (this thread runs beside
        faust's loop)."""
        handed = self.handed.get(tp)
        if handed is None or (offset is not None and handed[0] != offset):
            return False
        return handed[1] != self.epochs.get(tp, 0)


class ReadOffsets(defaultdict[Any, int | None]):
    """faust's ``_read_offset`` (tp -> the offset last delivered; after a seek, where reading
    resumes), kept per seek epoch of the consumer thread. faust's fetch loop reads it to drop
    a record below it (one read again) and to find holes (a jump past it), and sets it after
    handing a record to the streams; a seek runs on the consumer's thread, beside that loop.

    - A record fetched before a seek that came since reads it as "beyond" (dropped: it is read
      again from the new position), and its set is ignored: it once set the offset back past
      the records the seek was for, and they were dropped as read.
    - A value set before the last seek is superseded by where that seek went: faust learns
      it only once the whole seek is done, and records fetched from the new position in
      between were compared with the old value, dropped as read, and the jump to the next
      one was taken for a hole that commits passed.

    Changelog partitions (a table's restore seeks them its own way) are left as faust has them."""

    def __init__(self, thread: Callable[[], Flow8ConsumerThread | None], is_changelog: Callable[[Any], bool]) -> None:
        super().__init__(lambda: None)
        self._thread = thread
        self._is_changelog = is_changelog
        self._epoch: dict[Any, int] = {}  # tp -> the seek epoch its value was set in

    def _ours(self, tp: Any) -> Flow8ConsumerThread | None:
        thread = self._thread()
        return None if thread is None or self._is_changelog(tp) else thread

    def _value(self, tp: Any, thread: Flow8ConsumerThread) -> int | None:
        sought = thread.sought_to.get(tp)
        if sought is not None and sought[0] > self._epoch.get(tp, 0):
            return sought[1]
        return super().get(tp)

    def __getitem__(self, tp: Any) -> int | None:
        thread = self._ours(tp)
        if thread is None:
            return super().__getitem__(tp)
        if thread.sought_since(tp):
            return BEYOND
        return self._value(tp, thread)

    def get(self, tp: Any, default: Any = None) -> Any:
        thread = self._ours(tp)
        if thread is None:
            return super().get(tp, default)
        value = self._value(tp, thread)
        return default if value is None else value

    def __setitem__(self, tp: Any, offset: int | None) -> None:
        thread = self._ours(tp)
        if thread is not None and offset is not None and thread.sought_since(tp, offset):
            log.info("a record of %s at %s fetched before a seek was not delivered", tp, offset)
            return
        self._set(tp, offset, thread)

    def _set(self, tp: Any, offset: int | None, thread: Flow8ConsumerThread | None) -> None:
        super().__setitem__(tp, offset)
        self._stamp(tp, thread)

    def _stamp(self, tp: Any, thread: Flow8ConsumerThread | None) -> None:
        """``tp``'s value is of its current seek epoch."""
        if thread is not None:
            self._epoch[tp] = thread.epochs.get(tp, 0)

    def seek(self, tp: Any, offset: int | None) -> None:
        """Where reading resumes after a seek: always set."""
        self._set(tp, offset, self._ours(tp))

    def update(self, *args: Any, **kwargs: Any) -> None:
        """faust's ``perform_seek`` sets the committed offsets here once its seek is done: the
        consumer thread noted each seek as it happened (and records delivered since set
        their offsets), so those of partitions sought in their current epoch are not set."""
        for tp, offset in dict(*args, **kwargs).items():
            thread = self._ours(tp)
            if thread is not None:
                sought = thread.sought_to.get(tp)
                if sought is not None and sought[0] == thread.epochs.get(tp, 0):
                    continue
            self._set(tp, offset, thread)

    def pop(self, tp: Any, *default: Any) -> Any:
        """A partition revoked: nothing delivered from it (until its next seek)."""
        self._stamp(tp, self._ours(tp))
        return super().pop(tp, *default)


BEYOND = sys.maxsize  # an offset no record reaches: faust drops a record below its read offset


class Done(Sensor):
    """``done`` is set when a message of ``topics`` is done (acked by every stream that
    reads it): faust's compiled stream iterator acks without calling ``Consumer.ack``,
    and tells only its sensors."""

    def __init__(self, topics: set[str]) -> None:
        super().__init__()
        self.topics = topics
        self.done = asyncio.Event()

    def on_message_out(self, tp: Any, offset: int, message: Any) -> None:
        if tp.topic in self.topics:
            self.done.set()


class AckRules(Sensor):
    """faust's compiled stream iterator (its Cython extension, used whenever it is installed)
    acks a message inline, past ``Consumer.ack``, and then tells the sensors of a message's
    last ack. The rule ``Flow8Consumer.ack`` keeps is kept here for it: an ack that does not
    count (``rules.ack_counts``) is taken back at once, with no await in between for a commit
    to come in. Without it the ack of a record skipped unprocessed, or read before a
    rebalance, let a commit pass the record (a play whose StartPlay or completion it was
    waited forever)."""

    def __init__(self, consumer: Flow8Consumer) -> None:
        super().__init__()
        self.consumer = consumer

    def on_message_out(self, tp: Any, offset: int, message: Any) -> None:
        self.consumer.take_back(tp, offset, message)


class Flow8Consumer(kafka_driver.Consumer):
    """Records fetched while a rebalance stops the flow are dropped, and faust then seeks
    every partition back to its committed offset to fetch them again. aiokafka's
    ``seek_to_committed`` leaves a partition WITHOUT a committed offset where it is, so
    there the dropped records were skipped for good: commands sent while a worker joined
    were never processed. Such a partition goes back to its beginning here (the group's
    reset policy is earliest); what is read again, the engine has seen and ignores."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._reseeks: set[asyncio.Future[None]] = set()  # see resume_partitions
        self._sought: set[Any] = set()  # partitions sought to their committed offsets since the assignment
        self._closed = False  # see close_commits
        super().__init__(*args, **kwargs)
        self._read_offset = ReadOffsets(lambda: cast(Flow8ConsumerThread | None, self._thread), self._is_changelog_tp)
        self.app.sensors.add(AckRules(self))

    @property
    def _worker_transactions(self) -> WorkerTransactions | None:
        """The worker's one transaction (``Settings.transactions`` "worker"), if it runs one."""
        if self.in_transaction and cast(Any, self.app).wiring.per_worker:
            return cast(WorkerTransactions, self.transactions)
        return None

    def _new_consumer_thread(self) -> Any:
        return Flow8ConsumerThread(self, loop=self.loop, beacon=self.beacon)

    @Service.task
    async def _commit_handler(self) -> None:
        """Commit the engine's inputs soon after one is done, not on faust's timer only.

        A record's output is visible downstream only once its transaction commits. faust
        commits every ``commit_interval_ms`` (100 ms), and a play crosses several such hops
        (its command, each task, each completion). Here a commit of the partitions of
        ``Wiring.eager_topics`` (commands, completions, tasks) starts ``commit_linger_ms``
        after the first of their records done since the last commit. Each commit ends the
        worker's transaction (``WorkerTransactions``), which the broker and this worker pay
        for: under load the wait grows to three times the last commit's duration (a quarter
        of the time at most goes to committing; up to ``commit_interval_ms``), and each
        commit takes all that was done meanwhile. Everything else (the projector's
        events) commits every ``commit_interval_ms``: nothing waits for it.

        Measured (diamond, one worker, 2 cores shared with the broker and FerretDB):
        one play at a time, p50 108 ms -> 31-36 ms; 50 at a time, 131-150 -> 132-173 plays/s.
        Committing 2 ms after each record instead: p50 18 ms alone, but 50 at a time
        fell to 67-83 plays/s."""
        interval = self.commit_interval
        wiring: Wiring = cast(Any, self.app).wiring
        linger = min(interval, wiring.commit_linger_ms / 1000)
        eager = set(wiring.eager_topics)
        sensor = Done(eager)
        self.app.sensors.add(sensor)
        everything_at = time.monotonic() + interval
        took = 0.0
        while not self.should_stop:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0.0, everything_at - time.monotonic())):
                    await sensor.done.wait()
            wait = rules.commit_wait(interval, linger, took)
            if wait:
                await asyncio.sleep(wait)
            sensor.done.clear()
            started = time.monotonic()
            if started >= everything_at:
                everything_at = started + interval
                await self.commit_all()
            else:
                await self.commit(eager)
            took = time.monotonic() - started

    async def commit_all(self, force: bool = False) -> None:
        """Commit what was done: the offsets acked, and the records sent with no offset moving
        on with them (a result whose input was committed already, a checkpoint)."""
        if self._closed:
            return
        await (self.force_commit() if force else self.commit())
        worker = self._worker_transactions
        if worker is not None:
            await worker.commit_unsettled()
        elif self.in_transaction:
            try:
                await cast(Flow8Producer, self.app.producer).commit_unsettled()
            except KafkaError as exc:  # the next commit of offsets meets it too, and faust crashes then
                log.warning("could not commit the records sent since the last commit: %s", exc)

    def _new_offset(self, tp: Any) -> int | None:
        """The offset to commit for ``tp``: never past a message a stream still works on.

        faust commits the first run of consecutive acked offsets, and lets that run start
        one past the committed offset (room for a transaction marker there). With the
        executor's concurrent actors, acks come out of order: a slow task at the committed
        offset was stepped over once its successors were acked, and a worker that died
        then lost it (its play never finished). Acked offsets above the lowest message
        still in flight are held back from faust here until that message is acked."""
        if tp not in self._sought:  # see seek_to_committed
            return None
        generation = self.app.consumer_generation_id
        in_flight = [
            m.offset
            for m in list(self._unacked_messages)
            if m.tp == tp and not m.acked and m.generation_id == generation
        ]
        acked = self._acked[tp]
        below, held = rules.hold_back(acked, in_flight)
        if not held:
            return super()._new_offset(tp)
        acked[:] = below
        try:
            return super()._new_offset(tp)
        finally:
            self._acked[tp].extend(held)

    async def _add_gap(self, tp: Any, offset_from: int, offset_to: int) -> None:
        """Offsets no record will come for (transaction markers, aborted records) count
        as acked, so commits can pass them. faust calls this with ``offset_to`` = the
        offset of the record just read, and adds the interval up to and *including*
        it: that record counted as acked before any agent saw it. An executor task
        right after a transaction marker was committed while it still ran (or before
        it ran), and a worker killed then lost it: its play never finished. The gap
        here ends before that record."""
        if cast(Flow8ConsumerThread, self._thread).sought_since(tp, offset_to):
            return  # a record fetched before a seek since: no hole (``ReadOffsets`` drops it)
        gap = rules.gap_before(offset_from, offset_to)
        if gap is not None:
            await super()._add_gap(tp, *gap)

    def resume_partitions(self, tps: Any) -> None:
        """faust's fetch loop drops the records of a partition that is no longer in the
        (live) set of active partitions when it gets to them: records fetched just before
        a rebalance or a table recovery paused the partition were lost, with the consumer's
        position already past them. A completion dropped so was never applied (its play
        never finished) and the next record made the hole a "gap" that commits skip. A
        resumed partition reads again from the last record delivered (at most one
        duplicate, which the engine and the executor take as a repeat)."""
        thread = cast(Flow8ConsumerThread, self._thread)
        for tp, offset in rules.reseeks(set(tps), self._paused_partitions, self._read_offset, self._is_changelog_tp):
            reseek = asyncio.ensure_future(thread.seek_now(tp, offset))
            self._reseeks.add(reseek)  # held until done
            reseek.add_done_callback(self._reseeks.discard)
        super().resume_partitions(tps)

    async def _seek(self, partition: Any, offset: int) -> None:
        await cast(Flow8ConsumerThread, self._thread).seek_now(partition, offset)

    async def seek(self, partition: Any, offset: int) -> None:
        """faust's ``seek``, with the read offset set as a seek's (``ReadOffsets``)."""
        await self._seek(partition, offset)
        cast(ReadOffsets, self._read_offset).seek(ensure_TP(partition), offset if offset else None)

    async def position(self, tp: Any) -> int | None:
        """Only faust's restore asks this, to end a restore stuck below a commit marker:
        once the position reaches the highwater it takes the changelog as read. With the
        highwater at the last record (``Flow8ConsumerThread._highwaters``) the position
        reaches it before that record is read, and the restore ended without it (and
        dropped it when it came): a play restored after a restart was missing. Such a
        restore ends on its last record, so the question is not answered for it."""
        if tp in cast(Flow8ConsumerThread, self._thread).exact:
            return -1
        return await super().position(tp)

    def _counts(self, message: Any) -> bool:
        return rules.ack_counts(message.tracked, message.generation_id, self.app.consumer_generation_id)

    def ack(self, message: Any) -> bool:
        """An ack counts only for a record a stream took in the current generation
        (``rules.ack_counts``): faust acks a record it skips for being of an earlier generation
        or for coming while the flow was stopped, and a stream acks one it took before a
        rebalance; all of them are read again from the committed offset. (faust's compiled
        stream iterator acks past this method: see ``AckRules``.)"""
        if not self._counts(message):
            message.acked = True  # its final ack, counted by nobody
            self._unacked_messages.discard(message)  # nor held as in flight by every commit after
            return False
        acked: bool = super().ack(message)
        return acked

    def take_back(self, tp: Any, offset: int, message: Any) -> None:
        """Undo an ack of ``message`` (at ``offset`` of ``tp``) counted past ``ack`` if it does not count."""
        if self._counts(message):
            return
        index = self._acked_index.get(tp)
        if index is not None and offset in index:
            index.discard(offset)
            self._acked[tp].remove(offset)
            self._n_acked -= 1
        self._unacked_messages.discard(message)

    async def force_commit(self, topics: Any = None, start_new_transaction: bool = True) -> bool:
        if self._closed:
            return False
        done: bool = await super().force_commit(topics, start_new_transaction=start_new_transaction)
        return done

    async def close_commits(self) -> None:
        """At a graceful stop, before faust cancels the agents: commit what was done, then
        nothing more. An agent cancelled in the middle of a message acks it as its stream
        unwinds, and a decision cancelled between two of its sends leaves half of itself in
        the open transaction: faust's last commit at the consumer's stop then passed records
        never processed (a play joined by a worker that stopped a second later never
        started) or could commit half a decision. What the worker does from here is aborted
        with its open transaction, and its partitions' next owner does it again."""
        await self.commit_all(force=True)
        self._closed = True
        worker = self._worker_transactions
        if worker is not None:
            worker.close()

    async def on_partitions_assigned(self, assigned: Any, generation_id: int = 0) -> None:
        """What was acked before this assignment and not committed by the revocation's commit
        is void: its records were acked between the revocation and now, and their outputs went
        in the transaction aborted at this assignment (worker mode) or to a stopped partition
        producer. faust forgot the committed offsets at the revocation, so nothing held those
        acks back, and the first commit of the new generation committed past records whose
        outputs were lost (a play on a survivor's partition then waited for its completion
        forever). Every partition is read again from its committed offset now."""
        self._acked.clear()
        self._acked_index.clear()
        self._gap.clear()
        self._sought.clear()
        await super().on_partitions_assigned(assigned, generation_id)

    async def on_partitions_revoked(self, revoked: Any) -> None:
        """Commit what was done (offsets with their records) before faust forgets what the
        revoked partitions acked, while the generation is still this member's: the
        revocation then completes with nothing of this member's left open. Nothing more is
        committed until the assignment has aborted what was sent meanwhile: faust lets the
        messages in flight finish after this, and a commit of the commit handler's that came
        after aiokafka took the new assignment (the new generation's, accepted) and before
        that abort once committed their decisions without their inputs (read again, a play
        started twice)."""
        worker = self._worker_transactions
        if worker is not None:
            await self.force_commit()  # not skipped when the commit handler's is under way
            await worker.commit_unsettled()
            worker.hold()
        await super().on_partitions_revoked(revoked)

    async def seek_to_committed(self) -> Any:
        """After an assignment faust resumes the flow before it seeks back to the committed
        offsets (faust's recovery resumes streams, then seeks), and forgot those offsets at the revocation: a
        partition kept through the rebalance went on from where it was, and a commit in between
        took its acks for a run from nowhere and committed past the records it had read before
        the rebalance but not committed (a completion lost so left its play waiting forever). A
        partition commits nothing until it is sought here, and its acks and holes from before are
        void: what follows the committed offset is read again. It may commit once its committed
        offset is known (faust learns it only when this returns)."""
        committed = await super().seek_to_committed()
        for tp in committed:
            self._acked.pop(tp, None)
            self._acked_index.pop(tp, None)
            self._gap.pop(tp, None)
        never = rules.never_committed(committed, self._is_changelog_tp)
        if never:
            await self._thread.seek_to_beginning(*never)
        self._committed_offset.update({ensure_TP(tp): offset for tp, offset in committed.items() if offset})
        self._sought.update(committed)
        worker = self._worker_transactions
        if worker is not None:
            worker.committed(committed)
        return committed
