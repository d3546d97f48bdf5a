"""The sources every ``flow8 audit`` command takes, opened the same way for each: ``--db``,
``--mongodb``, ``--archive`` and ``--kafka`` (with its ``--partition`` range), as one async
stream of ``PlayHistory`` and what the source skipped."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import typer

from flow8_streams.audit import checkpoints as cp
from flow8_streams.audit.kafka import KafkaSource, Range
from flow8_streams.audit.run import Audit
from flow8_streams.audit.sources import MAX_PLAYS_LISTED, ArchiveSource, Filter, SqliteSource, StoreSource
from flow8_streams.audit.verify import Finding, PlayHistory, Summary, Verdict
from flow8_streams.errors import InvalidInput

KafkaOpt = Annotated[
    bool, typer.Option("--kafka", help="Read the flow8.events topic ($KAFKA_BOOTSTRAP_SERVERS, FLOW8_TOPICS__PREFIX).")
]
PartitionOpt = Annotated[
    int | None, typer.Option("--partition", min=0, help="With --kafka: only this partition of the events topic.")
]
FromOffsetOpt = Annotated[
    int | None, typer.Option("--from-offset", min=0, help="With --partition: the first offset read (default 0).")
]
ToOffsetOpt = Annotated[
    int | None,
    typer.Option(
        "--to-offset", min=0, help="With --partition: read up to this offset, not included (default: the end)."
    ),
]


def kafka_range(kafka: bool, partition: int | None, from_offset: int | None, to_offset: int | None) -> Range | None:
    """The partition range asked for, checked (exit 2 when the flags do not go together)."""
    if partition is None:
        if from_offset is not None or to_offset is not None:
            raise InvalidInput("--from-offset and --to-offset need --partition N")
        return None
    if not kafka:
        raise InvalidInput("--partition reads a range of the events topic: it needs --kafka")
    start = from_offset or 0
    if to_offset is not None and to_offset <= start:
        raise InvalidInput(f"--to-offset {to_offset} must be greater than --from-offset {start}")
    return Range(partition, start, to_offset)


def one_source(db: Path | None, mongodb: bool, archive: Path | None, kafka: bool = False) -> None:
    if sum((db is not None, mongodb, archive is not None, kafka)) != 1:
        raise InvalidInput("give one source: --db FILE, --mongodb ($MONGODB_URI), --kafka or --archive FILE")


@dataclass
class Opened:
    """An open source: its histories (``stream``), its checkpoints, and at the end what it skipped."""

    stream: AsyncIterator[PlayHistory]
    checkpoints: list[cp.SignedCheckpoint | Finding]
    kind: str  # "db", "mongodb", "archive" or "kafka"
    problems: list[Finding] = field(default_factory=list)
    skipped: dict[str, int] = field(default_factory=dict)
    stores: Any = None  # the source's Stores (its projection, its flow catalog), when it has them


async def _aiter(items: Iterable[PlayHistory]) -> AsyncIterator[PlayHistory]:
    for item in items:
        yield item


@contextlib.asynccontextmanager
async def open_source(
    flt: Filter,
    *,
    db: Path | None,
    mongodb: bool,
    archive: Path | None,
    kafka: bool,
    partition: Range | None = None,
    since: datetime | None = None,
    checkpoints: Path | None = None,
) -> AsyncIterator[Opened]:
    """The one source given; once its stream is read, ``problems`` and ``skipped`` say what it
    skipped."""
    one_source(db, mongodb, archive, kafka)
    extra = list(cp.read_jsonl(checkpoints)) if checkpoints is not None and db is None else []
    if db is not None:
        source = SqliteSource(db, checkpoints=checkpoints)
        try:
            yield Opened(_aiter(source.histories(flt)), list(source.checkpoints()), "db")
        finally:
            source.close()
    elif archive is not None:
        packed = ArchiveSource(archive)
        signed = [*packed.checkpoints(), *extra]
        opened = Opened(_aiter(packed.histories(flt)), signed, "archive", problems=packed.problems)
        yield opened
    elif kafka:
        from flow8_streams.settings import load_settings

        reader = KafkaSource(load_settings(), since=since, only=partition)
        signed = [*extra, *await reader.checkpoints()]  # the workers' own, beside a --checkpoints file
        opened = Opened(reader.histories(flt), signed, "kafka", problems=reader.problems, skipped=reader.skipped)
        yield opened
    else:
        from flow8_streams.extras import require_streams

        require_streams("flow8 audit with --mongodb")
        from flow8_streams.settings import load_settings
        from flow8_streams.stores.mongo import MongoStore

        settings = load_settings()
        mongo = MongoStore(settings.mongodb_uri, settings.mongodb_database)
        try:
            yield Opened(StoreSource(mongo).histories(flt), extra, "mongodb", stores=mongo)
        finally:
            await mongo.close()


@contextlib.asynccontextmanager
async def live_stores(opened: Opened) -> AsyncIterator[Any]:
    """The live projection to compare with: the source's stores, or for --kafka MongoDB's when
    $MONGODB_URI is set (in the environment or the settings file: the default URI is not the
    auditor's projection); None where there is none (an archive)."""
    if opened.stores is not None or opened.kind != "kafka":
        yield opened.stores
        return
    from flow8_streams.settings import load_settings

    settings = load_settings()
    if "mongodb_uri" not in settings.model_fields_set:
        yield None
        return
    from flow8_streams.extras import require_streams

    require_streams("comparing with the MongoDB projection ($MONGODB_URI)")
    from flow8_streams.stores.mongo import MongoStore

    mongo = MongoStore(settings.mongodb_uri, settings.mongodb_database)
    try:
        yield mongo
    finally:
        await mongo.close()


async def audit_opened(
    opened: Opened, audit: Audit, on_verdict: Callable[[Verdict], None], live: Any = None
) -> Summary:
    """Each play of ``opened`` through ``audit``, then its summary with what the source skipped.
    ``live``: the stores whose projection each play is compared with, when the source keeps none."""
    async for history in with_projections(opened, audit.filter, live):
        on_verdict(audit.play(history))
    return finish(audit, opened)


async def with_projections(opened: Opened, flt: Filter, live: Any) -> AsyncIterator[PlayHistory]:
    """The histories of ``opened``, each with its projection in ``live`` (stores) when given."""
    if live is None:
        async for history in opened.stream:
            yield history
        return
    states = {s.play_id: s for s in await live.plays.list(flt.company, None, MAX_PLAYS_LISTED)}
    async for history in opened.stream:
        history.projection, history.has_projection = states.get(history.play_id), True
        yield history


def finish(audit: Audit, opened: Opened) -> Summary:
    """The summary of ``audit`` over ``opened``'s stream, once read, with what the source skipped."""
    summary = audit.finish(opened.problems)
    summary.skipped.update(opened.skipped)
    return summary
