"""Retention as a whole: which store, which companies, how old, where to; the same for
``flow8 archive`` and the job ``flow8 serve`` runs every ``retention.interval_seconds``."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from flow8_streams.audit import checkpoints as cp
from flow8_streams.audit.sources import Filter, SqliteSource, StoreSource
from flow8_streams.audit.verify import Finding, PlayHistory
from flow8_streams.errors import Flow8Error, InvalidInput
from flow8_streams.retention.archiver import Archiver, Log, Outcome, ReadPlay
from flow8_streams.retention.destination import Destination, destination
from flow8_streams.settings import Retention, Settings, parse_duration
from flow8_streams.stores.ports import RetentionPort

if TYPE_CHECKING:
    from flow8_streams.metrics import Metrics

log = logging.getLogger("flow8.retention")
LOG_KAFKA = "kafka"  # a manifest head's ``log`` for events read off the events topic


def older_than(retention: Retention, company: str, flag: str | None) -> timedelta | None:
    """``--older-than`` when given, else the company's days (None: its plays are kept forever)."""
    if flag is not None:
        return timedelta(seconds=parse_duration(flag, "--older-than"))
    days = retention.days_of(company)
    return None if days is None else timedelta(days=days)


def where_to(retention: Retention, to: str | None, *, prune: bool, dry_run: bool = False) -> Destination | None:
    """The destination (``--to`` or ``retention.archive``). None only for a prune the operator
    allowed without one (``retention.delete_without_archive``) or a dry run."""
    given = to if to is not None else retention.archive
    if given is not None:
        return destination(given, retention.s3)
    if dry_run:
        return None
    if prune and retention.delete_without_archive:
        return None
    if prune:
        raise InvalidInput(
            "nothing is deleted before it is archived: give --to DIR or set retention.archive, or set "
            "retention.delete_without_archive: true to delete finished plays without an archive"
        )
    raise InvalidInput("give --to DIR (or set retention.archive): where the archives are written")


@dataclass
class Store:
    """An open store as retention sees it."""

    port: RetentionPort
    read: ReadPlay
    checkpoints: list[cp.SignedCheckpoint | Finding]
    source: str  # for the manifest and messages: never a URI
    log_in_store: bool
    log: Log | None = None  # where the events of a store without its log are read (the streams runtime's Kafka)


@contextlib.asynccontextmanager
async def open_sqlite(path: Path) -> AsyncIterator[Store]:
    """The embedded runtime's db: deleted through a writer, read through the audit's read-only source."""
    from flow8_streams.stores.sqlite import SqliteStore

    if not path.is_file():
        raise InvalidInput(f"no database at {path}")
    reader = SqliteSource(path)
    writer = SqliteStore(path)
    try:

        async def read(company: str, play_id: str) -> PlayHistory | None:
            return next(iter(reader.histories(Filter(company, play=play_id))), None)

        yield Store(writer.retention, read, list(reader.checkpoints()), f"{path.name} (SQLite)", True)
    finally:
        writer.close()
        reader.close()


@contextlib.asynccontextmanager
async def open_mongodb(
    settings: Settings, checkpoints: Path | None = None, *, kafka: bool = True
) -> AsyncIterator[Store]:
    """MongoDB (``$MONGODB_URI``): the streams runtime keeps only projections there (its log is
    ``flow8.events``), so with ``kafka`` a play without events in MongoDB has them read off the
    topic (``kafka_log``), with its company's signed checkpoints; without, it is archived by its
    head alone and kept (unless ``retention.prune_without_log``)."""
    from flow8_streams.extras import require_streams

    require_streams("flow8 archive --mongodb")
    from flow8_streams.retention.kafka_log import KafkaLog
    from flow8_streams.stores.mongo import MongoStore

    mongo = MongoStore(settings.mongodb_uri, settings.mongodb_database)
    log = KafkaLog(settings, prune_without_log=settings.retention.prune_without_log) if kafka else None
    try:
        await mongo.open()
        reader = StoreSource(mongo)

        async def read(company: str, play_id: str) -> PlayHistory | None:
            async for history in reader.histories(Filter(company, play=play_id)):
                return history
            return None

        signed = list(cp.read_jsonl(checkpoints)) if checkpoints is not None else []
        source = f"MongoDB database {settings.mongodb_database}"
        if log is not None:
            source += f", events from Kafka topic {log.topic}"
        yield Store(mongo.retention, read, signed, source, False, log)
    finally:
        if log is not None:
            await log.close()
        await mongo.close()


async def run(
    store: Store,
    retention: Retention,
    *,
    companies: Sequence[str] | None,
    older: str | None,
    to: str | None,
    prune: bool,
    dry_run: bool,
    on_play: Callable[[int], None] | None = None,
) -> list[Outcome]:
    """Archive (and with ``prune`` delete) the expired plays of ``companies`` (None: every company
    of the store with a retention); a company kept forever is left alone."""
    target = where_to(retention, to, prune=prune, dry_run=dry_run)
    archiver = Archiver(
        port=store.port,
        read=store.read,
        checkpoints=store.checkpoints,
        destination=target,
        source=store.source,
        log_in_store=store.log_in_store,
        log=store.log,
        log_name=LOG_KAFKA,
        prune_without_log=retention.prune_without_log,
        prune=prune,
        dry_run=dry_run,
        batch=retention.batch_plays,
        on_play=on_play,
    )
    outcomes = []
    for company in companies if companies is not None else await store.port.companies():
        if companies is None and company in retention.companies and retention.companies[company] is None:
            continue  # kept forever (a legal hold): only a run naming the company touches it
        age = older_than(retention, company, older)
        if age is None:
            if companies is not None:
                raise InvalidInput(
                    f"no retention for {company}: give --older-than (30d, 12h) or set retention.days "
                    "(or retention.companies)"
                )
            continue
        outcomes.append(await archiver.run(company, age))
    return outcomes


def check_settings(retention: Retention) -> None:
    """At start, with retention on: refuse to prune without a destination (unless allowed)."""
    if retention.enabled:
        where_to(retention, None, prune=True)


async def every_interval(
    open_store: Callable[[], contextlib.AbstractAsyncContextManager[Store]], settings: Settings, metrics: Metrics
) -> None:
    """The scheduled job: archive and prune every ``retention.interval_seconds`` while the
    process runs, each run on a thread with a loop of its own (reading, compressing and hashing
    an archive would otherwise hold the server's loop). A failed run is logged and counted, and
    tried again at the next interval; a run cut short by a stop is finished by the next one."""
    retention = settings.retention

    async def once() -> list[Outcome]:
        async with open_store() as store:
            return await run(store, retention, companies=None, older=None, to=None, prune=True, dry_run=False)

    while True:
        try:
            outcomes = await asyncio.to_thread(lambda: asyncio.run(once()))
            for o in outcomes:
                metrics.archive_plays.inc(o.plays)
                metrics.archive_files.inc(len(o.archives))
                metrics.pruned_plays.inc(o.pruned)
                metrics.pruned_events.inc(o.pruned_events)
                if o.plays:
                    log.info(
                        "retention: %s: archived %d plays (%d events) to %s; deleted %d; kept %d",
                        o.company, o.plays, o.events, ", ".join(o.archives) or "nowhere", o.pruned, len(o.kept),
                    )  # fmt: skip
            metrics.retention_runs.labels("ok").inc()
        except Flow8Error as exc:
            metrics.retention_runs.labels("failed").inc()
            log.error("retention run failed, tried again in %g s: %s", retention.interval_seconds, exc)
        await asyncio.sleep(retention.interval_seconds)
