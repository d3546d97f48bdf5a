"""``flow8 archive``: finished plays past their time written to cold storage (gzipped JSONL in the
audit export's format, with a manifest), then with ``--prune`` deleted from the live store.
A thin caller of ``flow8_streams.retention``. Exit 0 done, 2 bad input."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated

import typer
from rich.text import Text

from flow8_streams.cli.common import dumps, err, out, run_async
from flow8_streams.cli.options import id_option
from flow8_streams.cli.streams import ConfigOpt
from flow8_streams.errors import InvalidInput
from flow8_streams.live import plain
from flow8_streams.retention.archiver import Outcome


def archive(
    db: Annotated[Path | None, typer.Option("--db", help="The embedded runtime's SQLite file.")] = None,
    mongodb: Annotated[bool, typer.Option("--mongodb", help="The streams runtime's MongoDB ($MONGODB_URI).")] = False,
    company: Annotated[
        str | None, typer.Option("--company", help="This company's plays.", callback=id_option("--company"))
    ] = None,
    all_companies: Annotated[
        bool, typer.Option("--all-companies", help="Every company with a retention (retention.days/companies).")
    ] = False,
    older_than: Annotated[
        str | None,
        typer.Option("--older-than", help="Plays that ended longer ago than this: 30d, 12h, 90m (default: settings)."),
    ] = None,
    to: Annotated[str | None, typer.Option("--to", help="The archive directory (default: retention.archive).")] = None,
    prune: Annotated[bool, typer.Option("--prune", help="Delete the plays archived from the live store.")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Count what would be archived; write nothing.")] = False,
    checkpoints: Annotated[
        Path | None,
        typer.Option("--checkpoints", help="With --mongodb: signed checkpoints (JSONL) to put in each archive."),
    ] = None,
    kafka: Annotated[
        bool | None,
        typer.Option(
            "--kafka/--no-kafka",
            help="With --mongodb: read the plays' events and signed checkpoints off the events topic "
            "($KAFKA_BOOTSTRAP_SERVERS) into the archive (default: when the settings name Kafka).",
        ),
    ] = None,
    config: ConfigOpt = None,
    json_out: Annotated[bool, typer.Option("--json", help="One JSON object per company.")] = False,
) -> None:
    """Archive each finished play (succeeded, failed, cancelled) that ended before --older-than to
    DIR/COMPANY/COMPANY-TIME.jsonl.gz and its .manifest.json (counts, time range, each play's chain
    head, the archive's sha256, the signed checkpoints included); with --prune, once the archive is
    read back whole, delete those plays' events and projections. A running play is never touched.
    `flow8 audit verify --archive FILE --db DB` checks archive and live data together."""
    from flow8_streams.retention import job
    from flow8_streams.settings import load_settings

    if (db is None) == (not mongodb):
        raise InvalidInput("give one store: --db FILE (the embedded runtime) or --mongodb ($MONGODB_URI)")
    if (company is None) == (not all_companies):
        raise InvalidInput("give --company C (one company) or --all-companies (each with its retention), not both")
    if prune and dry_run:
        raise InvalidInput("--dry-run deletes nothing: give --prune or --dry-run, not both")
    if checkpoints is not None and not mongodb:
        raise InvalidInput("--checkpoints adds signed checkpoints to a --mongodb archive (a --db has its own)")
    if kafka and not mongodb:
        raise InvalidInput("--kafka reads the events of a --mongodb store's plays (a --db holds its own)")
    settings = load_settings(config)
    # the streams runtime's log is Kafka; a MongoDB deployment without Kafka keeps its events in MongoDB
    read_kafka = kafka if kafka is not None else "kafka_bootstrap_servers" in settings.model_fields_set
    if older_than is not None:
        job.older_than(settings.retention, "", older_than)  # a bad duration: exit 2 before anything is opened
    job.where_to(settings.retention, to, prune=prune, dry_run=dry_run)
    companies = [company] if company is not None else None

    async def go(advance: Callable[[int], None] | None) -> list[Outcome]:
        opener = job.open_sqlite(db) if db is not None else job.open_mongodb(settings, checkpoints, kafka=read_kafka)
        async with opener as store:
            return await job.run(
                store,
                settings.retention,
                companies=companies,
                older=older_than,
                to=to,
                prune=prune,
                dry_run=dry_run,
                on_play=advance,
            )

    with _progress(not json_out) as advance:
        outcomes = run_async(go(advance))
    for outcome in outcomes:
        _report(outcome, json_out)
    if not outcomes and not json_out:
        err.print("no company has a retention: nothing to archive", soft_wrap=True)


@contextlib.contextmanager
def _progress(enabled: bool) -> Iterator[Callable[[int], None] | None]:
    """A count of the plays archived on a terminal's stderr; nothing elsewhere (a pipe, --json)."""
    if not (enabled and err.is_terminal):
        yield None
        return
    from rich.progress import MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    with Progress(
        SpinnerColumn(), TextColumn("archiving plays"), MofNCompleteColumn(), TimeElapsedColumn(), console=err,
        transient=True,
    ) as progress:  # fmt: skip
        task = progress.add_task("plays", total=None)
        yield lambda n: progress.advance(task, n)


def _report(o: Outcome, json_out: bool) -> None:
    if json_out:
        sys.stdout.write(dumps(o.as_json(), indent=False) + "\n")
        return
    before = o.ended_before.isoformat(timespec="seconds").replace("+00:00", "Z")
    if o.dry_run:
        line = f"would archive {o.plays} plays ({o.events} events) that ended before {before}"
    elif o.archives:
        line = f"archived {o.plays} plays ({o.events} events) that ended before {before} to {', '.join(o.archives)}"
    elif o.plays:
        line = f"{o.plays} plays ({o.events} events) that ended before {before}, not archived"
    else:
        line = f"no finished play ended before {before}"
    if o.pruned or (o.plays and not o.dry_run):
        line += f"; deleted {o.pruned} from the live store"
    if o.more:
        line += "; more remain (run again)"
    out.print(Text.assemble(plain(o.company), ": ", plain(line)), soft_wrap=True)
    for play_id, why in sorted(o.kept.items()):
        err.print(Text.assemble(("! ", "yellow"), "kept ", plain(play_id), ": ", plain(why)), soft_wrap=True)
