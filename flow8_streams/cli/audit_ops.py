"""``flow8 audit rebuild`` and ``flow8 audit replay``: thin callers of ``flow8_streams.audit``.

Exit codes: 0 the rebuilt projection equals the live one / every history replays as recorded,
1 differences or divergences (or a history that cannot be read), 2 bad input.
"""

from __future__ import annotations

import contextlib
import re
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.text import Text

from flow8_streams.audit.rebuild import Rebuild, RebuiltPlay
from flow8_streams.audit.replay import Divergence, parse, replay
from flow8_streams.audit.sources import Filter
from flow8_streams.audit.verify import Finding, PlayHistory
from flow8_streams.cli.audit import (
    AllCompaniesOpt,
    CompanyOpt,
    DbSourceOpt,
    FlowOpt,
    MongoOpt,
    PlayOpt,
    SinceOpt,
    StatusOpt,
    UntilOpt,
    _filter,
)
from flow8_streams.cli.audit_sources import (
    FromOffsetOpt,
    KafkaOpt,
    Opened,
    PartitionOpt,
    ToOffsetOpt,
    kafka_range,
    live_stores,
    open_source,
)
from flow8_streams.cli.common import dumps, err, out, run_async
from flow8_streams.domain.flow import FlowDefinition
from flow8_streams.errors import InvalidInput
from flow8_streams.live import plain

DATABASE_NAME = re.compile(r"[A-Za-z0-9_-]{1,63}")  # what MongoDB and FerretDB both take
ArchiveOpt = Annotated[Path | None, typer.Option("--archive", help="Read a flow8 audit export file.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="One JSON object per play, then the summary.")]


def _mark(ok: bool) -> str:
    return "[green]✔[/]" if ok else "[red]✘[/]"


@contextlib.contextmanager
def _progress(what: str, enabled: bool) -> Iterator[Any]:
    """A spinner with a count on a terminal's stderr; nothing elsewhere (a pipe, --json)."""
    if not (enabled and err.is_terminal):
        yield None
        return
    with Progress(
        SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), console=err, transient=True
    ) as progress:
        yield (progress, progress.add_task(what, total=None))


def _advance(bar: Any, text: str) -> None:
    if bar is not None:
        progress, task = bar
        progress.update(task, description=text)


def _source_problems(opened: Opened) -> list[dict[str, Any]]:
    return [f.as_json() for f in opened.problems]


# ---------------------------------------------------------------- rebuild


def rebuild(
    into_db: Annotated[
        Path | None, typer.Option("--into-db", help="Fold into this SQLite file (made if absent).")
    ] = None,
    into_mongodb: Annotated[
        str | None, typer.Option("--into-mongodb", help="Fold into this database on $MONGODB_URI.")
    ] = None,
    db: DbSourceOpt = None,
    mongodb: MongoOpt = False,
    archive: ArchiveOpt = None,
    kafka: KafkaOpt = False,
    partition: PartitionOpt = None,
    from_offset: FromOffsetOpt = None,
    to_offset: ToOffsetOpt = None,
    company: CompanyOpt = None,
    all_companies: AllCompaniesOpt = False,
    play: PlayOpt = None,
    flow: FlowOpt = None,
    status: StatusOpt = None,
    since: SinceOpt = None,
    until: UntilOpt = None,
    batch: Annotated[int, typer.Option("--batch", min=1, max=100_000, help="Events per write.")] = 1000,
    json_out: JsonOpt = False,
) -> None:
    """Fold the log into a fresh projection (idempotent: run again, nothing changes), then compare
    it with the live one (the source's: the db's plays, MongoDB's for --mongodb and --kafka), each
    difference named by play and field. Exit 0 the same, 1 differences, 2 bad input."""
    if (into_db is None) == (into_mongodb is None):
        raise InvalidInput("give one target: --into-db FILE or --into-mongodb DBNAME")
    if into_mongodb is not None and not DATABASE_NAME.fullmatch(into_mongodb):
        raise InvalidInput(
            f"--into-mongodb {into_mongodb[:80]!r} is not a database name: letters, digits, _ and -, at most 63"
        )
    flt = _filter(company, all_companies, play, flow, status, since, until)
    only = kafka_range(kafka, partition, from_offset, to_offset)
    where = {"db": db, "mongodb": mongodb, "archive": archive, "kafka": kafka}
    clean = run_async(_rebuild(flt, where, only, into_db, into_mongodb, batch, json_out))
    raise typer.Exit(0 if clean else 1)


@contextlib.asynccontextmanager
async def _target(into_db: Path | None, into_mongodb: str | None) -> AsyncIterator[Any]:
    if into_db is not None:
        from flow8_streams.stores.sqlite import SqliteStore

        store = SqliteStore(into_db)
        try:
            yield store
        finally:
            store.close()
        return
    assert into_mongodb is not None
    from flow8_streams.extras import require_streams

    require_streams("flow8 audit rebuild --into-mongodb")
    from flow8_streams.settings import load_settings
    from flow8_streams.stores.mongo import MongoStore

    settings = load_settings()
    if "mongodb_uri" not in settings.model_fields_set:  # never the default server, guessed
        raise InvalidInput("--into-mongodb needs $MONGODB_URI")
    mongo = await MongoStore(settings.mongodb_uri, into_mongodb).open()
    try:
        yield mongo
    finally:
        await mongo.close()


async def _rebuild(
    flt: Filter,
    where: dict[str, Any],
    only: Any,
    into_db: Path | None,
    into_mongodb: str | None,
    batch: int,
    json_out: bool,
) -> bool:
    async with (
        open_source(flt, **where, partition=only, since=flt.since) as opened,
        _target(into_db, into_mongodb) as target,
    ):
        job = Rebuild(target.plays, batch=batch)
        with _progress("rebuilding", not json_out) as bar:
            async for history in opened.stream:
                await job.add(history)
                _advance(bar, f"rebuilding: {job.plays} plays, {job.events} events")
            await job.flush()
            async with live_stores(opened) as live:
                _advance(bar, "comparing with the live projection")
                rebuilt = await job.compare(flt, live.plays if live is not None else None)
        return _report_rebuild(job, rebuilt, opened, job.from_source or live is not None, json_out)


def _report_rebuild(job: Rebuild, rebuilt: list[RebuiltPlay], opened: Opened, compared: bool, json_out: bool) -> bool:
    differing = [p for p in rebuilt if p.findings]
    clean = not differing and not job.findings and not opened.problems
    if json_out:
        for p in rebuilt:
            sys.stdout.write(dumps(p.as_json(), indent=False) + "\n")
        summary = {
            "summary": True,
            "plays": job.plays,
            "events": job.events,
            "applied": job.result.applied,
            "skipped_as_folded": job.result.skipped,
            "compared": compared,
            "with_differences": len(differing),
            "findings": [f.as_json() for f in [*job.findings, *opened.problems]],
            "skipped": dict(sorted(opened.skipped.items())),
            "verdict": "ok" if clean else "findings",
        }
        sys.stdout.write(dumps(summary, indent=False) + "\n")
        return clean
    for p in differing:
        for f in p.findings:
            where = f"{f.field}: " if f.field else ""
            out.print(Text.assemble(("✘ ", "red"), plain(p.play_id), f" {f.kind} ", plain(where + f.detail)))
    for f in [*job.findings, *opened.problems]:
        out.print(Text.assemble(("✘ ", "red"), f"{f.kind}: ", plain(f.detail)), soft_wrap=True)
    against = "compared with the live projection" if compared else "no live projection to compare with"
    line = (
        f"rebuilt {job.plays} plays from {job.events} events ({job.result.applied} folded, "
        f"{job.result.skipped} there already); {against}: {len(differing)} with differences"
    )
    err.print(f"{_mark(clean)} {line}", soft_wrap=True)
    return clean


# ---------------------------------------------------------------- replay


def replay_cmd(
    db: DbSourceOpt = None,
    mongodb: MongoOpt = False,
    archive: ArchiveOpt = None,
    kafka: KafkaOpt = False,
    partition: PartitionOpt = None,
    from_offset: FromOffsetOpt = None,
    to_offset: ToOffsetOpt = None,
    company: CompanyOpt = None,
    all_companies: AllCompaniesOpt = False,
    play: PlayOpt = None,
    status: StatusOpt = None,
    since: SinceOpt = None,
    until: UntilOpt = None,
    flow_file: Annotated[
        Path | None,
        typer.Option(
            "--flow",
            help="Replay with this flow file (only plays of its name); default: the flow catalog's latest version "
            "(MongoDB), else the flow each play recorded.",
        ),
    ] = None,
    json_out: JsonOpt = False,
) -> None:
    """Re-run today's engine decisions over recorded histories (module outcomes taken from the
    history) and report, per play, the first event where the decisions part from the record.
    Exit 0 every play replays as recorded, 1 divergences, 2 bad input."""
    flow: FlowDefinition | None = None
    if flow_file is not None:
        from flow8_streams.flowfile import load_flow

        flow = load_flow(flow_file)
    flt = _filter(company, all_companies, play, flow.name if flow is not None else None, status, since, until)
    only = kafka_range(kafka, partition, from_offset, to_offset)
    where = {"db": db, "mongodb": mongodb, "archive": archive, "kafka": kafka}
    clean = run_async(_replay(flt, where, only, flow, flow_file, json_out))
    raise typer.Exit(0 if clean else 1)


class _Flows:
    """The flow each play is replayed with: --flow, else the catalog's latest, else the recorded one."""

    def __init__(self, given: FlowDefinition | None, given_from: Path | None, catalog: Any) -> None:
        self.given, self.given_from, self.catalog = given, given_from, catalog
        self._cache: dict[tuple[str, str], FlowDefinition | None] = {}

    async def of(self, company: str, recorded: FlowDefinition) -> tuple[FlowDefinition, str]:
        if self.given is not None:
            return self.given, f"--flow {self.given_from}"
        if self.catalog is not None:
            key = (company, recorded.name)
            if key not in self._cache:
                self._cache[key] = await self.catalog.get(company, recorded.name)
            found = self._cache[key]
            if found is not None:
                return found, f"catalog v{found.version}"
        return recorded, f"recorded v{recorded.version}"


async def _replay(
    flt: Filter, where: dict[str, Any], only: Any, flow: FlowDefinition | None, flow_file: Path | None, json_out: bool
) -> bool:
    plays = events = diverged = unreadable = 0
    async with open_source(flt, **where, partition=only, since=flt.since) as opened, live_stores(opened) as stores:
        flows = _Flows(flow, flow_file, stores.flows if stores is not None else None)
        async for history in opened.stream:
            plays += 1
            events += len(history.documents)
            verdict = await _replay_one(history, flows)
            diverged += verdict["divergence"] is not None
            unreadable += bool(verdict["findings"])
            _report_replay(verdict, json_out)
    clean = not diverged and not unreadable and not opened.problems
    if json_out:
        summary = {
            "summary": True,
            "plays": plays,
            "events": events,
            "ok": plays - diverged - unreadable,
            "diverged": diverged,
            "unreadable": unreadable,
            "findings": _source_problems(opened),
            "skipped": dict(sorted(opened.skipped.items())),
            "verdict": "ok" if clean else "findings",
        }
        sys.stdout.write(dumps(summary, indent=False) + "\n")
    else:
        for f in opened.problems:
            out.print(Text.assemble(("✘ ", "red"), f"{f.kind}: ", plain(f.detail)), soft_wrap=True)
        err.print(
            f"{_mark(clean)} {plays} plays, {events} events replayed: {plays - diverged - unreadable} as recorded, "
            f"{diverged} diverged, {unreadable} unreadable",
            soft_wrap=True,
        )
    return clean


async def _replay_one(history: PlayHistory, flows: _Flows) -> dict[str, Any]:
    verdict: dict[str, Any] = {
        "play_id": history.play_id,
        "company_id": history.company_id,
        "flow_id": history.documents[0].get("flow_id") if history.documents else None,
        "flow": None,
        "events": len(history.documents),
        "divergence": None,
        "findings": [f.as_json() for f in history.problems],
    }
    parsed = parse(history.documents)
    if isinstance(parsed, str) or not parsed or parsed[0].type != "PlayStarted":
        problem = parsed if isinstance(parsed, str) else "the history does not begin with PlayStarted"
        verdict["findings"].append(Finding("invalid", problem, 1).as_json())
    else:
        flow, named = await flows.of(history.company_id, parsed[0].payload.flow)
        verdict["flow"] = named
        divergence: Divergence | None = replay(parsed, flow)
        verdict["divergence"] = divergence.as_json() if divergence is not None else None
    verdict["verdict"] = "ok" if verdict["divergence"] is None and not verdict["findings"] else "findings"
    return verdict


def _report_replay(verdict: dict[str, Any], json_out: bool) -> None:
    if json_out:
        sys.stdout.write(dumps(verdict, indent=False) + "\n")
        return
    play = plain(verdict["play_id"])
    for f in verdict["findings"]:
        out.print(Text.assemble(("✘ ", "red"), play, f" {f['kind']}: ", plain(f["detail"])), soft_wrap=True)
    d = verdict["divergence"]
    if d is None:
        return
    out.print(
        Text.assemble(
            ("✘ ", "red"), play, f" diverges at seq {d['seq']} (flow {verdict['flow']}): ", plain(d["detail"])
        ),
        soft_wrap=True,
    )
    for label, side in (("recorded", d["expected"]), ("replayed", d["got"])):
        shown = "nothing" if side is None else dumps(side, indent=False)
        out.print(Text.assemble(f"    {label}: ", plain(shown)), soft_wrap=True)
