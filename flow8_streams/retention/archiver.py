"""Archive a company's finished plays past their time, then delete them from the live store.

The order makes a crash at any point safe, and a re-run after it lose nothing:

1. the plays' events and checkpoints are written to ``X.jsonl.gz`` under a temporary name and
   renamed when whole (``ArchiveWriter``); then its manifest ``X.manifest.json``, the same way;
2. the archive is read back and checked against the manifest (sha256, each play's head): a
   difference stops the run before anything is deleted;
3. only then each play is deleted (``RetentionPort.prune``: one transaction on SQLite; events,
   then versions, then the play document on MongoDB), unless its log has grown past the head
   archived. A crash before 3 leaves the plays live: the next run archives them again, an
   identical copy that ``flow8 audit verify`` reads as one.

A play whose own history has findings (an altered event, a missing seq) is archived but never
deleted: retention does not destroy the evidence of tampering. On the streams runtime (MongoDB
holds projections, the log is ``flow8.events``) a play's events are read from its ``log``
(``kafka_log.KafkaLog``); one whose events are not found whole there is archived as found and
kept, with the reason.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol, TypeVar

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from flow8_streams.audit import checkpoints as cp
from flow8_streams.audit.run import ArchiveWriter
from flow8_streams.audit.sources import ArchiveSource, Filter
from flow8_streams.audit.verify import MISSING, Finding, PlayHistory, verify
from flow8_streams.errors import Flow8Error
from flow8_streams.retention import manifest as mf
from flow8_streams.retention.destination import Destination
from flow8_streams.stores.ports import RetentionPort

_T = TypeVar("_T")
ReadPlay = Callable[[str, str], Awaitable[PlayHistory | None]]  # (company, play_id) -> its history


class Log(Protocol):
    """Where the events of plays the store holds no log for are read (the streams runtime's
    ``flow8.events``), and the company's signed checkpoints with them."""

    async def fill(self, company: str, histories: Sequence[PlayHistory]) -> dict[str, str]:
        """Sets each history's documents from the log; returns why each play that may not be deleted may not."""
        ...

    async def checkpoints(self, company: str) -> list[cp.SignedCheckpoint | Finding]: ...


NO_LOG = (
    "its events are not in the store (the streams runtime's log is the events topic) and this run did not "
    "read Kafka: archive it with --kafka, or set retention.prune_without_log to delete it archived by its head"
)


class ArchiveNotWhole(Flow8Error):
    """An archive read back differs from what was written: nothing was deleted."""


def _iso(at: datetime) -> str:
    return at.astimezone(UTC).isoformat().replace("+00:00", "Z")


@dataclass(slots=True)
class Outcome:
    """One company's run: what was archived where, what was deleted, what was kept and why."""

    company: str
    ended_before: datetime
    dry_run: bool = False
    plays: int = 0
    events: int = 0
    archives: list[str] = field(default_factory=list)
    pruned: int = 0
    pruned_events: int = 0
    kept: dict[str, str] = field(default_factory=dict)  # play_id -> why it was not deleted
    more: bool = False  # plays past their time remain (a dry run or an archive-only run looks at one batch)

    def as_json(self) -> dict[str, Any]:
        return {
            "company_id": self.company,
            "ended_before": _iso(self.ended_before),
            "dry_run": self.dry_run,
            "plays": self.plays,
            "events": self.events,
            "archives": self.archives,
            "pruned": self.pruned,
            "pruned_events": self.pruned_events,
            "kept": self.kept,
            "more": self.more,
        }


@dataclass(slots=True)
class _Batch:
    heads: dict[str, mf.Head] = field(default_factory=dict)
    prunable: list[str] = field(default_factory=list)


class Archiver:
    """Archives (to ``destination``) and with ``prune`` deletes one company's expired plays of one
    store at a time (``run``). ``destination`` None deletes without an archive: the caller has
    checked that the operator asked for that (``retention.delete_without_archive``)."""

    def __init__(
        self,
        *,
        port: RetentionPort,
        read: ReadPlay,
        checkpoints: Sequence[cp.SignedCheckpoint | Finding],
        destination: Destination | None,
        source: str,
        log_in_store: bool = True,
        log: Log | None = None,
        log_name: str = "kafka",
        prune_without_log: bool = False,
        prune: bool = False,
        dry_run: bool = False,
        batch: int = 10_000,
        public_key: Ed25519PublicKey | None = None,
        on_play: Callable[[int], None] | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.port = port
        self.read = read
        self.checkpoints = checkpoints
        self.destination = destination
        self.source = source  # "flow8.db (SQLite)": written in the manifest, never a URI
        self.log_in_store = log_in_store  # False: MongoDB of the streams runtime (its log is flow8.events)
        self.log = log  # where such a store's plays' events are read (None: they are archived by their heads)
        self.log_name = log_name  # a head's ``log`` in the manifest for events read from ``log`` ("kafka")
        self.prune_without_log = prune_without_log
        self.prune = prune
        self.dry_run = dry_run
        self.batch = batch
        self.public_key = public_key
        self.on_play = on_play or (lambda _n: None)
        self.clock = clock

    async def run(self, company: str, older_than: timedelta) -> Outcome:
        now = self.clock()
        outcome = Outcome(company, now - older_than, dry_run=self.dry_run)
        done: set[str] = set()  # archived this run (kept ones are not listed again)
        while True:
            listed = await self.port.expired(company, outcome.ended_before, self.batch + len(done))
            ids = [p for p in listed if p not in done][: self.batch]
            if not ids:
                return outcome
            done.update(ids)
            if self.dry_run:
                for play_id in ids:
                    history = await self.read(company, play_id)
                    outcome.plays += 1
                    if history is not None:  # a projection without its log: its head's seq is its count
                        state = history.projection
                        outcome.events += len(history.documents) or (
                            state.seq if state and not self.log_in_store else 0
                        )
                    self.on_play(1)
            else:
                batch = await self._archive(company, ids, outcome)
                if self.prune:
                    await self._prune(company, batch, outcome)
            if self.dry_run or not self.prune:  # the same plays would be listed again: one batch
                outcome.more = len(await self.port.expired(company, outcome.ended_before, len(done) + 1)) > len(done)
                return outcome

    async def _archive(self, company: str, ids: Sequence[str], outcome: Outcome) -> _Batch:
        """Write the plays of ``ids`` to a new archive and its manifest, and check it read back;
        without a destination, only judge which may be deleted."""
        batch = _Batch()
        now = self.clock()
        if self.destination is None:
            async for history, why, log in self._histories(company, ids):
                self._judge(history, batch, outcome, why, log)
            return batch
        checkpoints: list[cp.SignedCheckpoint | Finding] = list(self.checkpoints)
        read: AsyncIterator[tuple[PlayHistory, str | None, str]] | list[tuple[PlayHistory, str | None, str]]
        read = self._histories(company, ids)
        if self.log is not None:  # read before the archive is begun: its checkpoints come first in it
            read = [found async for found in read]
            if any(log == self.log_name for _, _, log in read):  # Kafka only when a play's events are there
                checkpoints += await self.log.checkpoints(company)
        # the time orders a company's archives; the token keeps two instances' runs apart
        name = f"{company}-{now.strftime('%Y%m%dT%H%M%S%fZ')}-{secrets.token_hex(3)}"
        with self.destination.staging(company) as where:
            out, manifest_file = where / f"{name}{mf.ARCHIVE_SUFFIX}", where / f"{name}.manifest.json"
            header = {"retention": {"manifest": manifest_file.name, "ended_before": _iso(outcome.ended_before)}}
            with ArchiveWriter(out, checkpoints, company=company, public_key=self.public_key, header=header) as writer:
                async for history, why, log in _each(read):
                    self._judge(history, batch, outcome, why, log)
                    writer.add(history)
            manifest = mf.build(
                company=company,
                archive=out,
                heads=batch.heads,
                checkpoints=writer.written,
                older_than=_iso(outcome.ended_before),
                source=self.source,
                created_at=_iso(now),
            )
            mf.write(manifest_file, manifest)
            problems = mf.check(manifest, out, read_back(out, company))
            if problems:
                raise ArchiveNotWhole(
                    f"archive {out} does not read back as written ({problems[0].detail}); nothing was deleted"
                )
            archived, _ = self.destination.publish(company, [out, manifest_file])
        outcome.archives.append(archived)
        return batch

    async def _histories(self, company: str, ids: Sequence[str]) -> AsyncIterator[tuple[PlayHistory, str | None, str]]:
        """Each play of ``ids`` the store still has, with why it may not be deleted (None: it may,
        unless its history has findings) and where its events came from. A play whose log is not
        in the store waits for the others of the batch: their events are read off the log in one go."""
        waiting: list[PlayHistory] = []
        for play_id in ids:
            history = await self.read(company, play_id)
            self.on_play(1)
            if history is None:
                continue
            if not history.documents and not self.log_in_store and history.projection is not None:
                waiting.append(history)
            else:
                yield history, None, "archived"
        if not waiting:
            return
        if self.log is not None:
            why = await self.log.fill(company, waiting)
        else:
            why = {} if self.prune_without_log else {h.play_id: NO_LOG for h in waiting}
        for history in waiting:
            yield history, why.get(history.play_id), self.log_name

    def _judge(
        self, history: PlayHistory, batch: _Batch, outcome: Outcome, why: str | None, log: str = "archived"
    ) -> None:
        """The play's head for the manifest, and whether it may be deleted (``why`` not: it may not)."""
        verdict = verify(history)
        state = history.projection
        docs = history.documents
        started = docs[0].get("at") if docs else (_iso(state.started_at) if state else None)
        ended = docs[-1].get("at") if docs else (_iso(state.ended_at) if state and state.ended_at else None)
        no_log = not docs and not self.log_in_store and state is not None
        if no_log:
            assert state is not None
            head = mf.Head(state.seq, state.last_hash, 0, state.status.value, started, ended, log=mf.ABSENT)
        else:
            head = mf.Head(verdict.last_seq, verdict.head_hash, len(docs), verdict.status, started, ended, log=log)
        batch.heads[history.play_id] = head
        outcome.plays += 1
        outcome.events += len(docs)
        problems = [f for f in verdict.findings if not (no_log and f.kind == MISSING)]
        if why is not None:
            outcome.kept[history.play_id] = why
        elif problems:
            first = problems[0]
            outcome.kept[history.play_id] = f"{first.kind}{f' seq {first.seq}' if first.seq else ''}: {first.detail}"
        else:
            batch.prunable.append(history.play_id)

    async def _prune(self, company: str, batch: _Batch, outcome: Outcome) -> None:
        for play_id in batch.prunable:
            head = batch.heads[play_id]
            if await self.port.prune(company, play_id, head.last_seq):
                outcome.pruned += 1
                outcome.pruned_events += head.events
            else:
                outcome.kept[play_id] = "its log changed after it was archived (archived again by the next run)"


async def _each(items: AsyncIterator[_T] | list[_T]) -> AsyncIterator[_T]:
    if isinstance(items, list):
        for item in items:
            yield item
    else:
        async for item in items:
            yield item


def read_back(archive: Path, company: str) -> mf.Seen:
    """What an archive holds, as its manifest lists it: each play's head and event count, and
    its signed checkpoints."""
    source = ArchiveSource(archive)
    signed = [c for c in source.checkpoints() if isinstance(c, cp.SignedCheckpoint)]
    heads: dict[str, tuple[int, str | None, int]] = {}
    for history in source.histories(Filter(company)):
        verdict = verify(history)
        heads[history.play_id] = (verdict.last_seq, verdict.head_hash, len(history.documents))
    if source.problems:
        raise ArchiveNotWhole(f"archive {archive} has lines that cannot be read: {source.problems[0].detail}")
    return mf.Seen(heads, signed)
