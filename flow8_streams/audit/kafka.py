"""Audited histories from the ``flow8.events`` topic on Kafka.

``KafkaSource`` reads the topic as a reader, never a member: no consumer group, no offset
commit, ``read_committed`` (a transaction the runtime aborted is not history). It reads every
partition (or those given) from its beginning, from a time (``since``: offsets-for-times), or one
partition's ``[from_offset, to_offset)`` range, up to the end offsets as they were when it
started, and groups the records into one ``PlayHistory`` per play in ``seq`` order; ``play``
reads one play's, up to its terminal event. A ``Budget`` bounds what one read may take: past it
the read is refused (``ReadTooLarge``), never answered with part of a history. ``Consumers``
keeps reader consumers open between reads, for a long-running face (``flow8 serve --streams``).

A record is hostile input: one that is not a JSON object of at most ``MAX_EVENT_BYTES``, or
whose ``type`` this version does not know, is reported with its partition and offset and
skipped (``problems``), never folded and never a crash; in one company's run only that
company's records are read, and an undecodable one keyed by another company is not reported
there. A record identical to one already read for the same play and ``seq`` is a redelivery
and is read once; a different record at that ``seq`` is kept, so the verdict names it
(``duplicated``).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import time
from collections import Counter
from collections.abc import AsyncGenerator, AsyncIterator, Collection, Iterator
from dataclasses import dataclass
from datetime import datetime

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaConnectionError, KafkaError

from flow8_streams.audit import checkpoints as cp
from flow8_streams.audit.sources import UNDECODABLE, UNKNOWN_TYPE, Filter, _decode, known_type
from flow8_streams.audit.verify import Finding, PlayHistory
from flow8_streams.domain.events import TERMINAL_EVENT_TYPES
from flow8_streams.errors import InvalidInput, ReadTooLarge, StoreUnavailable
from flow8_streams.redact import redact_uri, scrub
from flow8_streams.settings import Settings

FETCH_RECORDS = 10_000  # records asked for per fetch
FETCH_TIMEOUT_MS = 1_000
STALL_SECONDS = 60.0  # a read that gets no record and ends no partition for this long gives up


@dataclass(frozen=True, slots=True)
class Range:
    """One partition's offsets ``[start, stop)``; ``stop`` None: to the end as of start."""

    partition: int
    start: int
    stop: int | None = None


@dataclass(frozen=True, slots=True)
class Budget:
    """The most one read may take: records and bytes read off the topic (every record read counts,
    whoever's it is), and the settings that set them, named when a read would pass them."""

    records: int
    bytes: int
    names: tuple[str, str] = ("records", "bytes")

    def check(self, records: int, size: int, where: str) -> None:
        if records > self.records:
            raise ReadTooLarge(f"{where}: more than {self.records} records to read ({self.names[0]})")
        if size > self.bytes:
            raise ReadTooLarge(f"{where}: more than {self.bytes} bytes to read ({self.names[1]})")


@dataclass(slots=True)
class _Record:
    offset: int
    partition: int
    seq: int
    doc: dict[str, object]


async def start_reader(settings: Settings, client_id: str = "flow8-audit") -> AIOKafkaConsumer:
    """A started consumer that reads as an auditor does: no group, no commit, read_committed."""
    consumer = AIOKafkaConsumer(
        **settings.kafka_client_options(),
        group_id=None,
        enable_auto_commit=False,
        isolation_level="read_committed",
        client_id=client_id,
        max_partition_fetch_bytes=8 * 1024 * 1024,
    )
    try:
        await consumer.start()
    except KafkaConnectionError as exc:
        await consumer.stop()
        from flow8_streams.runtimes.streams.admin import kafka_unavailable

        raise await kafka_unavailable(settings, exc) from None
    except KafkaError as exc:
        await consumer.stop()
        raise StoreUnavailable(f"Kafka: {scrub(str(exc), settings.kafka_bootstrap_servers)}") from None
    except BaseException:  # cancelled (a read's time bound) while it started: nothing left open
        await consumer.stop()
        raise
    return consumer


class Consumers:
    """Reader consumers kept open between reads: at most ``size``, each lent to one read at a
    time (a read is an assignment and seeks: two at once on one consumer would fetch each other's
    partitions). Starting a consumer costs a connection and a metadata round trip; a lent one
    answers at once. A read that fails stops the consumer it had, so the next read starts clean."""

    def __init__(self, settings: Settings, size: int, client_id: str = "flow8-serve") -> None:
        self.settings = settings
        self.client_id = client_id
        self._slots = asyncio.Semaphore(size)
        self._idle: list[AIOKafkaConsumer] = []
        self._closed = False
        self.started = 0  # consumers started so far: how often a read could not reuse one

    @contextlib.asynccontextmanager
    async def lend(self) -> AsyncIterator[AIOKafkaConsumer]:
        async with self._slots:
            consumer = self._idle.pop() if self._idle else await self._start()
            try:
                yield consumer
            except BaseException:
                await consumer.stop()
                raise
            if self._closed:
                await consumer.stop()
                return
            consumer.pause(*consumer.assignment())  # nothing is fetched for it while it waits
            self._idle.append(consumer)

    async def _start(self) -> AIOKafkaConsumer:
        consumer = await start_reader(self.settings, self.client_id)
        self.started += 1
        return consumer

    async def close(self) -> None:
        """Stop the idle consumers; one lent out is stopped when it comes back."""
        self._closed = True
        idle, self._idle = self._idle, []
        for consumer in idle:
            await consumer.stop()


def company_partition(company_id: str, partitions: int) -> int:
    """The partition Kafka's default partitioner gives the company's key on a topic of
    ``partitions``: where every flow8 producer sends its commands, so where a worker writes its
    plays' events and signs its checkpoints."""
    from aiokafka.partitioner import DefaultPartitioner

    every = list(range(partitions))
    partition: int = DefaultPartitioner()(company_id.encode(), every, every)
    return partition


async def partition_count(consumer: AIOKafkaConsumer, topic: str) -> int | None:
    """How many partitions ``topic`` has now (None: no such topic)."""
    found = (await consumer._client.fetch_all_metadata()).partitions_for_topic(topic)
    return len(found) if found else None


async def commands_partitions(settings: Settings, consumers: Consumers) -> int:
    """How many partitions the commands topic has now (what a company's partition is taken
    over), asked with a consumer ``consumers`` lends; ``StoreUnavailable`` if Kafka cannot say."""
    from aiokafka.errors import KafkaError

    topic = settings.topics.commands
    try:
        async with consumers.lend() as consumer:  # a lent one tracks the events topic only
            found = await partition_count(consumer, topic)
    except KafkaError as exc:
        raise StoreUnavailable(f"Kafka, reading the metadata of {topic}: {type(exc).__name__}") from None
    if not found:
        raise StoreUnavailable(f"Kafka has no topic {topic} (check FLOW8_TOPICS__PREFIX)")
    return found


class KafkaSource:
    """The events topic named by ``settings`` (``topics.events``), read once: its ``partitions``
    (all when None), within ``budget``, with a consumer of ``consumers`` (else one of its own)."""

    def __init__(
        self,
        settings: Settings,
        *,
        since: datetime | None = None,
        until: datetime | None = None,
        only: Range | None = None,
        partitions: Collection[int] | None = None,
        budget: Budget | None = None,
        consumers: Consumers | None = None,
    ) -> None:
        if since is not None and only is not None:
            raise InvalidInput("give --since or a --partition range, not both")
        self.settings = settings
        self.topic = settings.topics.events
        self.since = since
        self.until = until  # with ``since``: stop at the first record stamped at or after it
        self.only = only
        self.partitions = partitions
        self.budget = budget
        self.consumers = consumers
        self.problems: list[Finding] = []  # records skipped: reported in the summary
        self.skipped: Counter[str] = Counter()  # what was left out and why (not findings)
        self.records = 0
        self.bytes = 0
        self._company: str | None = None  # a company's run leaves other companies' records unread
        # partitions read from ``since`` whose oldest record kept is at or after it, older ones
        # deleted (a retention or delete-records): records written from ``since`` on may be gone
        self.trimmed: set[int] = set()
        self._reading = f"reading {self.topic}"  # what a refusal says was being read

    async def _consumer(self) -> AIOKafkaConsumer:
        return await start_reader(self.settings)

    @contextlib.asynccontextmanager
    async def _lent(self) -> AsyncIterator[AIOKafkaConsumer]:
        if self.consumers is not None:
            async with self.consumers.lend() as lent:
                yield lent
            return
        consumer = await self._consumer()
        try:
            yield consumer
        finally:
            await consumer.stop()

    async def _bounds(self, consumer: AIOKafkaConsumer) -> dict[TopicPartition, tuple[int, int]]:
        """Each partition to read: where to start and the end offset as of now."""
        partitions = consumer.partitions_for_topic(self.topic)
        if not partitions:
            await consumer._client.force_metadata_update()
            partitions = consumer.partitions_for_topic(self.topic)
        if not partitions:
            raise InvalidInput(f"Kafka has no topic {self.topic} (check FLOW8_TOPICS__PREFIX)")
        tps = [TopicPartition(self.topic, p) for p in sorted(partitions)]
        if self.partitions is not None:
            tps = [tp for tp in tps if tp.partition in self.partitions]
        if self.only is not None:
            if self.only.partition not in partitions:
                raise InvalidInput(
                    f"--partition {self.only.partition}: {self.topic} has partitions 0 to {max(partitions)}"
                )
            tps = [TopicPartition(self.topic, self.only.partition)]
        first = await consumer.beginning_offsets(tps)
        end = await consumer.end_offsets(tps)
        if self.only is not None:
            tp = tps[0]
            stop = end[tp] if self.only.stop is None else min(self.only.stop, end[tp])
            return {tp: (max(self.only.start, first[tp]), stop)}
        if self.since is None:
            return {tp: (first[tp], end[tp]) for tp in tps}
        at = await consumer.offsets_for_times({tp: int(self.since.timestamp() * 1000) for tp in tps})
        self.trimmed = {
            tp.partition
            for tp, found in at.items()
            if first[tp] > 0 and (first[tp] == end[tp] or (found is not None and found.offset == first[tp]))
        }
        stop = dict(end)
        if self.until is not None:
            later = await consumer.offsets_for_times({tp: int(self.until.timestamp() * 1000) for tp in tps})
            stop = {tp: found.offset if found is not None else end[tp] for tp, found in later.items()}
        return {tp: (found.offset if found is not None else end[tp], stop[tp]) for tp, found in at.items()}

    async def checkpoints(self) -> list[cp.SignedCheckpoint | Finding]:
        """Every committed record of the checkpoints topic (its ``partitions``), the workers'
        signed chain heads (none when the topic does not exist: no worker has signed)."""
        topic = self.settings.topics.checkpoints
        try:
            async with self._lent() as consumer:
                return await self._checkpoints(consumer, topic)
        except TimeoutError:
            raise StoreUnavailable(f"Kafka, reading {topic}: no progress in {STALL_SECONDS:.0f} s") from None
        except KafkaError as exc:
            raise StoreUnavailable(
                f"Kafka, reading {topic}: {scrub(str(exc), self.settings.kafka_bootstrap_servers)}"
            ) from None

    async def _checkpoints(self, consumer: AIOKafkaConsumer, topic: str) -> list[cp.SignedCheckpoint | Finding]:
        found: list[cp.SignedCheckpoint | Finding] = []
        cluster = await consumer._client.fetch_all_metadata()  # a lent consumer tracks only what it read last
        tps = [
            TopicPartition(topic, p)
            for p in sorted(cluster.partitions_for_topic(topic) or ())
            if self.partitions is None or p in self.partitions
        ]
        if not tps:
            return found
        end = await consumer.end_offsets(tps)
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        left = {tp for tp in tps if end[tp] > 0}
        async with asyncio.timeout(STALL_SECONDS):
            while left:
                fetched = await consumer.getmany(*left, timeout_ms=FETCH_TIMEOUT_MS, max_records=FETCH_RECORDS)
                for tp, messages in fetched.items():
                    for m in messages:
                        if m.offset >= end[tp]:
                            break
                        self.records += 1
                        self.bytes += len(m.value or b"")
                        if self.budget is not None:
                            self.budget.check(self.records, self.bytes, f"reading {topic}")
                        found.append(cp.parse_line(m.value or b"", f"{topic}[{tp.partition}]@{m.offset}"))
                left = {tp for tp in left if await consumer.position(tp) < end[tp]}
        return found

    async def _read(self) -> AsyncIterator[_Record]:
        try:
            async with self._lent() as consumer:
                async for record in self._records(consumer):
                    yield record
        except KafkaError as exc:
            raise StoreUnavailable(
                f"Kafka, reading {self.topic}: {scrub(str(exc), self.settings.kafka_bootstrap_servers)}"
            ) from None

    async def _records(self, consumer: AIOKafkaConsumer, needle: bytes | None = None) -> AsyncGenerator[_Record, None]:
        """The records read by ``consumer`` within the bounds; with ``needle``, only those whose
        bytes hold it (the others are counted, never decoded)."""
        bounds = {tp: b for tp, b in (await self._bounds(consumer)).items() if b[0] < b[1]}
        consumer.assign(list(bounds))
        for tp, (start, _) in bounds.items():
            consumer.seek(tp, start)
        positions = {tp: start for tp, (start, _) in bounds.items()}
        progressed = time.monotonic()  # a record read or a position moved (past aborted records too)
        while bounds:
            fetched = await consumer.getmany(*bounds, timeout_ms=FETCH_TIMEOUT_MS, max_records=FETCH_RECORDS)
            for tp, messages in fetched.items():
                stop = bounds[tp][1] if tp in bounds else -1
                for m in messages:
                    if m.offset >= stop:
                        break
                    value = m.value or b""
                    self.records += 1
                    self.bytes += len(value)
                    if self.budget is not None:
                        self.budget.check(self.records, self.bytes, self._reading)
                    if needle is not None and needle not in value:
                        continue
                    record = self._record(tp.partition, m.offset, m.key, value)
                    if record is not None:
                        yield record
            for tp in list(bounds):
                position = await consumer.position(tp)
                if position != positions[tp]:
                    positions[tp], progressed = position, time.monotonic()
                if position >= bounds[tp][1]:
                    del bounds[tp]
                    consumer.pause(tp)
            if bounds and time.monotonic() - progressed > STALL_SECONDS:
                raise self._stalled(bounds, positions)

    async def play(self, company: str, play_id: str) -> PlayHistory:
        """``company``'s play ``play_id`` as the read reaches it, up to its first terminal event (a
        finished play's history ends there; what follows is not read). Records that name the play
        but cannot be read are its ``problems``; a redelivered record is read once. Only records
        holding the play id's bytes are decoded (an id is ``ID_PATTERN``: JSON writes it as it is;
        a record spelling it with escapes is not this play's history, and the projector's reading
        of it shows as a projection finding)."""
        self._company = company
        self._reading = f"reading play {play_id}'s events off {self.topic}"
        found: list[_Record] = []
        before = len(self.problems)
        try:
            async with (
                self._lent() as consumer,
                contextlib.aclosing(self._records(consumer, play_id.encode())) as records,
            ):
                async for record in records:
                    if record.doc.get("play_id") != play_id:
                        continue
                    found.append(record)
                    if record.doc.get("type") in TERMINAL_EVENT_TYPES:
                        break
        except KafkaError as exc:
            raise StoreUnavailable(
                f"Kafka, reading {self.topic}: {scrub(str(exc), self.settings.kafka_bootstrap_servers)}"
            ) from None
        history = PlayHistory(play_id, company, [r.doc for r in self._kept(found)])
        history.problems = self.problems[before:]
        return history

    async def plays(self, company: str, play_ids: Collection[str]) -> dict[str, PlayHistory]:
        """The events of ``company``'s plays ``play_ids`` that the read reaches, each play's as
        found: it may begin after seq 1 (the read began after its start) or stop short; the caller
        judges whether a history is whole (retention holds it against the play's projection).
        Only those plays' records are held."""
        self._company = company
        self._reading = f"reading {len(play_ids)} plays' events off {self.topic}"
        wanted = set(play_ids)
        found: dict[str, list[_Record]] = {}
        async for record in self._read():
            play_id = record.doc["play_id"]
            if play_id in wanted:
                found.setdefault(str(play_id), []).append(record)
        return {p: PlayHistory(p, company, [r.doc for r in self._kept(rs)]) for p, rs in found.items()}

    def _stalled(
        self, bounds: dict[TopicPartition, tuple[int, int]], at: dict[TopicPartition, int]
    ) -> StoreUnavailable:
        where = ", ".join(f"partition {tp.partition} at offset {at[tp]} of {end}" for tp, (_, end) in bounds.items())
        servers = redact_uri(self.settings.kafka_bootstrap_servers)
        return StoreUnavailable(
            f"Kafka at {servers} gave no record of {self.topic} for {STALL_SECONDS:g} s ({where}); "
            "check that the brokers run and that their partitions have a leader"
        )

    def _where(self, partition: int, offset: int) -> str:
        return f"{self.topic} partition {partition} offset {offset}"

    def _record(self, partition: int, offset: int, key: bytes | None, value: bytes | None) -> _Record | None:
        doc = _decode(value or b"")
        if isinstance(doc, str):
            if self._company is not None and key is not None and key != self._company.encode():
                return None  # another company's (by its key), and nothing in it can be read as ours
            self.problems.append(
                Finding(
                    UNDECODABLE, f"{self._where(partition, offset)}: {doc}: skipped", partition=partition, offset=offset
                )
            )
            return None
        if self._company is not None and doc.get("company_id") != self._company:
            return None
        kind, seq = doc.get("type"), doc.get("seq")
        if not known_type(kind):
            self.problems.append(
                Finding(
                    UNKNOWN_TYPE,
                    f"{self._where(partition, offset)}: event type {kind!r} is unknown to this version: skipped",
                    seq if type(seq) is int else None,
                    partition=partition,
                    offset=offset,
                )
            )
            return None
        if type(seq) is not int or not isinstance(doc.get("play_id"), str):
            self.problems.append(
                Finding(
                    UNDECODABLE,
                    f"{self._where(partition, offset)}: no play_id or seq: skipped",
                    partition=partition,
                    offset=offset,
                )
            )
            return None
        return _Record(offset, partition, seq, doc)

    async def histories(self, flt: Filter) -> AsyncIterator[PlayHistory]:
        """Every play the read reaches that ``flt`` admits; a play whose first record read is not
        its seq 1 began before the time or range read and is left out (``skipped``)."""
        plays: dict[str, list[_Record]] = {}
        self._company = flt.company
        # every record is held until the plays are yielded: the collector would walk them all again
        # and again (most of the time a run takes); they are trees of JSON values, with no cycle, so
        # they are left out of collections (disabled while read, frozen while yielded)
        collecting = gc.isenabled()
        gc.disable()
        try:
            async for record in self._read():
                play_id = str(record.doc["play_id"])
                if flt.play is None or play_id == flt.play:
                    plays.setdefault(play_id, []).append(record)
            gc.freeze()
        finally:
            if collecting:
                gc.enable()
        try:
            for history in self._grouped(plays):
                if flt.admits(history):
                    yield history
        finally:
            gc.unfreeze()

    def _kept(self, records: list[_Record]) -> list[_Record]:
        """``records`` in seq order (log order within a seq), each redelivery left out."""
        records.sort(key=lambda r: r.seq)  # stable: log order within a seq
        kept: list[_Record] = []
        for r in records:
            if kept and kept[-1].seq == r.seq and kept[-1].doc == r.doc:
                self.skipped["redelivered"] += 1
                continue
            kept.append(r)
        return kept

    def _grouped(self, plays: dict[str, list[_Record]]) -> Iterator[PlayHistory]:
        for play_id, records in plays.items():
            kept = self._kept(records)
            if (self.since is not None or self.only is not None) and kept[0].seq != 1:
                self.skipped["begun before the read"] += 1
                continue
            yield PlayHistory(play_id, str(kept[0].doc.get("company_id")), [r.doc for r in kept])
