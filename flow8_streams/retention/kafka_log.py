"""The streams runtime's log, as retention reads it: MongoDB holds the plays' projections, their
events are on ``flow8.events``, so an archived play's events are read from there.

Read once per company and batch: the company's partition (the one Kafka's default partitioner
gives its key over the commands topic's partitions, as ``http/history.py`` finds a play) from
the batch's earliest start less ``START_MARGIN`` to its latest end plus ``END_MARGIN`` (a batch
is listed by start: its plays are neighbours in time), keeping only the batch's plays; the plays
not found whole there are looked for on every partition from the same start to the topic's end,
in one more read (an upstream producer with another partitioner, a grown topic, or records
stamped later than their events, as a copied topic may be).
Each read is bounded by a ``Budget`` (``retention.kafka_max_records``/``kafka_max_bytes``):
past it the run stops (``ReadTooLarge``) before anything of the batch is deleted.

A play's events are whole when they run from seq 1 to its projection's head (seq and hash) and
end with a terminal event. A play whose events are not found whole is archived as found and
kept, with the reason: its projection is never deleted while the log cannot vouch for it. When
the log is gone already (the partition's oldest record is younger than the play: the topic's
retention deleted its events) the reason says so, and ``retention.prune_without_log`` is the
operator's choice to delete such projections anyway, archived by their heads alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta

from flow8_streams.audit import checkpoints as cp
from flow8_streams.audit.kafka import Budget, Consumers, KafkaSource, commands_partitions, company_partition
from flow8_streams.audit.verify import Finding, PlayHistory
from flow8_streams.domain.events import TERMINAL_EVENT_TYPES
from flow8_streams.domain.state import PlayState
from flow8_streams.errors import ReadTooLarge
from flow8_streams.settings import Settings

# a worker's clock wrote both the events' ``at`` and the records' timestamps (set when produced);
# an event stamped outside the margins is not found, and its play kept: never a wrong delete
START_MARGIN = timedelta(seconds=10)
END_MARGIN = timedelta(seconds=60)
GONE = "events no longer in Kafka"


def gap(docs: Sequence[dict[str, object]], state: PlayState, topic: str) -> str | None:
    """Why ``docs`` are not the whole history of the play ``state`` projects (None: they are)."""
    if not docs:
        return f"no event of it found in {topic}"
    first, last = docs[0], docs[-1]
    if first.get("seq") != 1:
        return f"its events in {topic} begin at seq {first.get('seq')}, not 1"
    if last.get("seq") != state.seq or last.get("hash") != state.last_hash:
        return f"its events in {topic} end at seq {last.get('seq')}, its projection's head is seq {state.seq}"
    if last.get("type") not in TERMINAL_EVENT_TYPES:
        return f"its last event in {topic} (seq {last.get('seq')}) is not terminal"
    return None


class KafkaLog:
    """Where retention reads the events and signed checkpoints MongoDB does not hold."""

    def __init__(self, settings: Settings, *, prune_without_log: bool = False) -> None:
        retention = settings.retention
        self.settings = settings
        self.topic = settings.topics.events
        self.prune_without_log = prune_without_log
        self.budget = Budget(
            retention.kafka_max_records,
            retention.kafka_max_bytes,
            ("retention.kafka_max_records", "retention.kafka_max_bytes"),
        )
        self.consumers = Consumers(settings, 1, client_id="flow8-retention")
        self._partitions: int | None = None
        self._checkpoints: dict[str, list[cp.SignedCheckpoint | Finding]] = {}

    async def close(self) -> None:
        await self.consumers.close()

    async def fill(self, company: str, histories: Sequence[PlayHistory]) -> dict[str, str]:
        """Sets each history's documents to its events as found in the topic (each has its
        projection); returns, for each play that may not be deleted, why."""
        states = {h.play_id: h.projection for h in histories if h.projection is not None}
        if not states:
            return {}
        since = min(s.started_at for s in states.values()) - START_MARGIN
        ends = [s.ended_at for s in states.values() if s.ended_at is not None]
        until = max(ends) + END_MARGIN if len(ends) == len(states) else None  # a finished play has its end
        ours = company_partition(company, await self._count())
        found, trimmed = await self._read(company, since, until, [ours], states)
        if [p for p, s in states.items() if gap(found.get(p, []), s, self.topic)]:
            self._partitions = None  # the topic may have grown since it was counted
            anywhere, trimmed_anywhere = await self._read(company, since, None, None, states)
            for play_id, docs in anywhere.items():
                if gap(found.get(play_id, []), states[play_id], self.topic) and not gap(
                    docs, states[play_id], self.topic
                ):
                    found[play_id] = docs
            trimmed |= trimmed_anywhere
        why: dict[str, str] = {}
        for history in histories:
            state = history.projection
            if state is None:
                continue
            history.documents = found.get(history.play_id, [])
            reason = gap(history.documents, state, self.topic)
            if reason is None:
                continue
            if not history.documents and trimmed:
                if self.prune_without_log:
                    continue
                reason = (
                    f"{GONE}: {self.topic} keeps no record as old as its start (its retention deleted them); "
                    "set retention.prune_without_log to delete it archived by its head alone"
                )
            why[history.play_id] = reason
        return why

    async def checkpoints(self, company: str) -> list[cp.SignedCheckpoint | Finding]:
        """The signed checkpoints on the company's partition of the checkpoints topic (a worker
        signs a company's heads on the partition of its plays), read once a run."""
        if company not in self._checkpoints:
            partition = company_partition(company, await self._count())
            source = KafkaSource(self.settings, partitions=[partition], budget=self.budget, consumers=self.consumers)
            self._checkpoints[company] = await source.checkpoints()
        return self._checkpoints[company]

    async def _read(
        self,
        company: str,
        since: datetime,
        until: datetime | None,
        partitions: list[int] | None,
        states: dict[str, PlayState],
    ) -> tuple[dict[str, list[dict[str, object]]], set[int]]:
        """The plays' events found on ``partitions`` (None: all) from ``since`` to ``until``, and
        the partitions read whose older records are gone."""
        source = KafkaSource(
            self.settings,
            since=since,
            until=until,
            partitions=partitions,
            budget=self.budget,
            consumers=self.consumers,
        )
        try:
            found = await source.plays(company, states.keys())
        except ReadTooLarge as exc:
            raise ReadTooLarge(
                f"{company}: {exc}; the run stopped before deleting any play of this batch "
                "(raise the setting, or lower retention.batch_plays)"
            ) from None
        return {p: h.documents for p, h in found.items()}, source.trimmed

    async def _count(self) -> int:
        """The commands topic's partitions (what a company's partition is taken over)."""
        if self._partitions is None:
            self._partitions = await commands_partitions(self.settings, self.consumers)
        return self._partitions
