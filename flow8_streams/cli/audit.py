"""``flow8 audit``: keygen, verify, export. Thin callers of ``flow8_streams.audit``.

Exit codes of ``verify``: 0 every play clean, 1 findings, 2 bad input.
"""

from __future__ import annotations

import contextlib
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from rich.text import Text

from flow8_streams.audit import checkpoints as cp
from flow8_streams.audit.across import Across
from flow8_streams.audit.kafka import Range
from flow8_streams.audit.report import Report
from flow8_streams.audit.run import ArchiveWriter, Audit
from flow8_streams.audit.sources import Filter, SqliteSource, StoreSource
from flow8_streams.audit.verify import Summary, Verdict
from flow8_streams.cli.audit_sources import (
    FromOffsetOpt,
    KafkaOpt,
    PartitionOpt,
    ToOffsetOpt,
    audit_opened,
    finish,
    kafka_range,
    live_stores,
    one_source,
    open_source,
    with_projections,
)
from flow8_streams.cli.common import dumps, err, out, run_async
from flow8_streams.cli.options import id_option, name_option
from flow8_streams.domain.state import PlayStatus
from flow8_streams.errors import InvalidInput
from flow8_streams.live import plain

audit_app = typer.Typer(
    help="Audits: verify play histories against their hash chains, projections and signed checkpoints.",
    no_args_is_help=True,
)

DbSourceOpt = Annotated[Path | None, typer.Option("--db", help="Audit this SQLite database file (read-only).")]
MongoOpt = Annotated[bool, typer.Option("--mongodb", help="Audit the streams runtime's MongoDB ($MONGODB_URI).")]
CompanyOpt = Annotated[
    str | None, typer.Option("--company", help="The company to audit (required).", callback=id_option("--company"))
]
AllCompaniesOpt = Annotated[
    bool, typer.Option("--all-companies", help="Every company (an operator's whole-log run) instead of --company.")
]
PlayOpt = Annotated[str | None, typer.Option("--play", help="Only this play.", callback=id_option("--play"))]
FlowOpt = Annotated[str | None, typer.Option("--flow", help="Only plays of this flow.", callback=name_option("--flow"))]
StatusOpt = Annotated[str | None, typer.Option("--status", help="running, succeeded, failed or cancelled.")]
SinceOpt = Annotated[str | None, typer.Option("--since", help="Only plays started at or after this ISO time.")]
UntilOpt = Annotated[str | None, typer.Option("--until", help="Only plays started before this ISO time.")]
PublicKeyOpt = Annotated[
    Path | None,
    typer.Option("--public-key", help="Check each play against the checkpoints this key signed (audit-signing.pub)."),
]


def _time(value: str | None, flag: str) -> datetime | None:
    if value is None:
        return None
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        raise InvalidInput(f"{flag} {value!r} is not an ISO time (2026-11-30T02:00:00Z)") from None
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


def _filter(
    company: str | None,
    all_companies: bool,
    play: str | None,
    flow: str | None,
    status: str | None,
    since: str | None,
    until: str | None,
) -> Filter:
    if (company is None) == (not all_companies):
        raise InvalidInput("give --company C (the company to audit) or --all-companies (every company), not both")
    if status is not None and status not in {s.value for s in PlayStatus}:
        raise InvalidInput(f"--status {status!r} is not one of {', '.join(s.value for s in PlayStatus)}")
    return Filter(company, play, flow, status, _time(since, "--since"), _time(until, "--until"))


_one_source = one_source


@audit_app.command()
def keygen(
    out_dir: Annotated[Path, typer.Option("--out", help="Directory for audit-signing.key and audit-signing.pub.")],
) -> None:
    """Make the Ed25519 key pair that signs checkpoints: the private key (mode 0600) for the runtime
    (FLOW8_AUDIT_SIGNING_KEY), the public key for auditors (--public-key). Never replaces a key."""
    private, public, kid = cp.keygen(out_dir)
    out.print(
        Text.assemble(
            "wrote ",
            plain(str(private)),
            " (private, mode 0600: set FLOW8_AUDIT_SIGNING_KEY to it where flow8 runs) and ",
            plain(str(public)),
            f" (public: give it to auditors); key id {kid}",
        ),
        soft_wrap=True,
    )


@audit_app.command("verify")
def verify_cmd(
    db: DbSourceOpt = None,
    mongodb: MongoOpt = False,
    archive: Annotated[
        list[Path] | None,
        typer.Option(
            "--archive",
            help="Audit a flow8 audit export or archive file (repeatable; with --db or --mongodb: archives and "
            "live data together, each play once).",
        ),
    ] = None,
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
    public_key: PublicKeyOpt = None,
    checkpoints: Annotated[
        Path | None,
        typer.Option(
            "--checkpoints", help="Signed checkpoints (JSONL) to use besides the db's (default DB.checkpoints.jsonl)."
        ),
    ] = None,
    require_anchor: Annotated[
        bool,
        typer.Option("--require-anchor", help="A play not covered to its end by a signed checkpoint is a finding."),
    ] = False,
    json_out: Annotated[bool, typer.Option("--json", help="One JSON object per play, then the summary.")] = False,
) -> None:
    """Verify each play: its hash chain (the first bad seq named: altered, reordered, missing,
    duplicated), that a finished play ends in its terminal event, its projection, and with
    --public-key the signed checkpoints. Archives with --db or --mongodb: the chain continuous across
    them (a play in both identical, a signed play found in one). Exit 0 clean, 1 findings, 2 bad input."""
    archives = archive or []
    if not archives:
        _one_source(db, mongodb, None, kafka)
    elif kafka or (db is not None and mongodb):
        raise InvalidInput("--archive goes alone or with one live store, --db FILE or --mongodb (not --kafka)")
    flt = _filter(company, all_companies, play, flow, status, since, until)
    only = kafka_range(kafka, partition, from_offset, to_offset)
    key = cp.load_public_key(public_key) if public_key is not None else None
    if require_anchor and key is None:
        raise InvalidInput("--require-anchor needs --public-key FILE")
    report = _Report(json_out)
    if archives:
        summary = run_async(_verify_across(flt, archives, db, mongodb, key, require_anchor, checkpoints, report))
    elif kafka:
        summary = run_async(_verify_kafka(flt, only, key, require_anchor, checkpoints, report))
    elif db is not None:
        source = SqliteSource(db, checkpoints=checkpoints)
        try:
            audit = Audit(flt, source.checkpoints(), public_key=key, require_anchor=require_anchor)
            for history in source.histories(flt):
                report.play(audit.play(history))
            summary = audit.finish()
        finally:
            source.close()
    else:
        summary = run_async(_verify_mongodb(flt, key, require_anchor, checkpoints, report))
    report.end(summary)
    raise typer.Exit(0 if summary.clean else 1)


async def _verify_across(
    flt: Filter,
    archives: list[Path],
    db: Path | None,
    mongodb: bool,
    key: Ed25519PublicKey | None,
    require_anchor: bool,
    checkpoints: Path | None,
    report: _Report,
) -> Summary:
    """``archives`` alone, or after the live store (--db or --mongodb): each play once."""
    live = db is not None or mongodb
    if not live:
        extra = list(cp.read_jsonl(checkpoints)) if checkpoints is not None else []
        across = Across(flt, archives, extra, live_label=None, public_key=key, require_anchor=require_anchor)
        across.archived(report.play)
        return across.finish()
    async with open_source(flt, db=db, mongodb=mongodb, archive=None, kafka=False, checkpoints=checkpoints) as opened:
        label = f"{db.name} (SQLite)" if db is not None else "MongoDB"
        across = Across(
            flt, archives, opened.checkpoints, live_label=label, public_key=key, require_anchor=require_anchor
        )
        await across.live(opened.stream, report.play)
        across.archived(report.play)
        return across.finish(opened.problems)


async def _verify_mongodb(
    flt: Filter, key: Ed25519PublicKey | None, require_anchor: bool, checkpoints: Path | None, report: _Report
) -> Summary:
    from flow8_streams.settings import load_settings
    from flow8_streams.stores.mongo import MongoStore

    settings = load_settings()
    signed = list(cp.read_jsonl(checkpoints)) if checkpoints is not None else []
    audit = Audit(flt, signed, public_key=key, require_anchor=require_anchor)
    mongo = MongoStore(settings.mongodb_uri, settings.mongodb_database)
    try:
        async for history in StoreSource(mongo).histories(flt):
            report.play(audit.play(history))
    finally:
        await mongo.close()
    return audit.finish()


async def _verify_kafka(
    flt: Filter,
    only: Range | None,
    key: Ed25519PublicKey | None,
    require_anchor: bool,
    checkpoints: Path | None,
    report: _Report,
) -> Summary:
    async with (
        open_source(
            flt,
            db=None,
            mongodb=False,
            archive=None,
            kafka=True,
            partition=only,
            since=flt.since,
            checkpoints=checkpoints,
        ) as opened,
        live_stores(opened) as live,
    ):
        audit = Audit(flt, opened.checkpoints, public_key=key, require_anchor=require_anchor)
        return await audit_opened(opened, audit, report.play, live)


class _Report:
    """Verdicts as they come: a line per play with findings (every play with --json), then the summary."""

    def __init__(self, json_out: bool) -> None:
        self.json = json_out

    def play(self, verdict: Verdict) -> None:
        if self.json:
            sys.stdout.write(dumps(verdict.as_json(), indent=False) + "\n")
            return
        if verdict.ok and not verdict.unanchored:
            return
        for f in verdict.findings:
            where = f" seq {f.seq}" if f.seq is not None else ""
            out.print(
                Text.assemble(("✘ ", "red"), plain(verdict.play_id), f" {f.kind}{where}: ", plain(f.detail)),
                soft_wrap=True,
            )
        if verdict.ok:
            out.print(
                Text.assemble("· ", plain(verdict.play_id), " unanchored: written after the last signed checkpoint"),
                soft_wrap=True,
            )

    def end(self, summary: Summary) -> None:
        if self.json:
            sys.stdout.write(dumps(summary.as_json(), indent=False) + "\n")
            return
        for f in summary.findings:
            out.print(Text.assemble(("✘ ", "red"), f"{f.kind}: ", plain(f.detail)), soft_wrap=True)
        kinds = ", ".join(f"{n} {kind}" for kind, n in sorted(summary.by_kind.items()))
        line = (
            f"{summary.plays} plays, {summary.events} events: {summary.ok} ok, {summary.with_findings} with findings"
            f"{f' ({kinds})' if kinds else ''}; {summary.unanchored} unanchored; {summary.checkpoints} checkpoints"
        )
        if summary.skipped:
            line += "; skipped: " + ", ".join(f"{n} {why}" for why, n in sorted(summary.skipped.items()))
        mark = "[green]✔[/]" if summary.clean else "[red]✘[/]"
        err.print(f"{mark} {line}", soft_wrap=True)
        if summary.sources is not None and (summary.sources["archives"] > 1 or summary.sources["live"]):
            s = summary.sources
            live = f" and live data ({s['live']})" if s["live"] else ""
            what = "continuous" if summary.clean else "NOT continuous"
            err.print(
                f"{mark} the chain is {what} across {s['archives']} archive{'s' * (s['archives'] != 1)}{live}: "
                f"{s['plays_live']} plays live, {s['plays_only_archived']} only archived, "
                f"{s['identical_copies']} identical copies read once",
                soft_wrap=True,
                markup=True,
            )


CheckpointsOpt = Annotated[
    Path | None,
    typer.Option(
        "--checkpoints", help="Signed checkpoints (JSONL) to use besides the source's (default DB.checkpoints.jsonl)."
    ),
]


@audit_app.command("export")
def export_cmd(
    out_file: Annotated[Path, typer.Option("--out", help="The archive to write (gzipped JSONL, FILE.jsonl.gz).")],
    db: DbSourceOpt = None,
    mongodb: MongoOpt = False,
    archive: Annotated[
        Path | None, typer.Option("--archive", help="Export from a flow8 audit export file (a part of it, again).")
    ] = None,
    kafka: KafkaOpt = False,
    partition: PartitionOpt = None,
    from_offset: FromOffsetOpt = None,
    to_offset: ToOffsetOpt = None,
    company: Annotated[
        str, typer.Option("--company", help="The company to export (required).", callback=id_option("--company"))
    ] = "",
    play: PlayOpt = None,
    flow: FlowOpt = None,
    status: StatusOpt = None,
    since: SinceOpt = None,
    until: UntilOpt = None,
    public_key: Annotated[
        Path | None, typer.Option("--public-key", help="Put this public key in the archive's header.")
    ] = None,
    checkpoints: CheckpointsOpt = None,
    html: Annotated[
        Path | None,
        typer.Option("--html", help="Also write a report: one self-contained page, a verdict and timeline per play."),
    ] = None,
) -> None:
    """Write a company's events from any source (--db, --mongodb, --kafka, --archive), its signed
    checkpoints (--kafka: the workers', from flow8.checkpoints) and the public key as one archive
    that `flow8 audit verify --archive` and tools/verify-js check offline. With --html, verify each
    play (against the checkpoints when --public-key is given) into a report: exit 1 on findings."""
    _one_source(db, mongodb, archive, kafka)
    if not company:
        raise InvalidInput("--company C is required: an export is one company's")
    for given, flag in ((html, "--html"), (archive, "--archive"), (db, "--db")):
        if given is not None and given.resolve() == out_file.resolve():
            raise InvalidInput(f"{flag} {given} is the --out file: write the archive to a name of its own")
    flt = _filter(company, False, play, flow, status, since, until)
    only = kafka_range(kafka, partition, from_offset, to_offset)
    key = cp.load_public_key(public_key) if public_key is not None else None
    where = {"db": db, "mongodb": mongodb, "archive": archive, "kafka": kafka}
    written, summary = run_async(_export(out_file, flt, where, only, checkpoints, key, html))
    plays, events, n, skipped = written
    out.print(
        Text.assemble(
            f"wrote {plays} plays, {events} events and {n} checkpoints of ",
            plain(company),
            " to ",
            plain(str(out_file)),
        ),
        soft_wrap=True,
    )
    if summary is None:
        if skipped:
            err.print(
                f"[yellow]![/] skipped {skipped} records that are not events this version can read "
                "(flow8 audit verify names each)",
                soft_wrap=True,
            )
        return
    assert html is not None
    _Report(False).end(summary)
    out.print(Text.assemble("wrote the report ", plain(str(html))), soft_wrap=True)
    raise typer.Exit(0 if summary.clean else 1)


def _source_label(db: Path | None, mongodb: bool, archive: Path | None) -> str:
    if db is not None:
        return f"{db.name} (SQLite)"
    if archive is not None:
        return f"{archive.name} (archive)"
    return "MongoDB" if mongodb else "Kafka"


async def _export(
    out_file: Path,
    flt: Filter,
    where: dict[str, Any],
    only: Range | None,
    checkpoints: Path | None,
    key: Ed25519PublicKey | None,
    html: Path | None,
) -> tuple[tuple[int, int, int, int], Summary | None]:
    """The archive written (plays, events, checkpoints, source records skipped) and, with
    ``html``, the report's summary."""
    company = flt.company
    assert company is not None
    async with open_source(flt, **where, partition=only, since=flt.since, checkpoints=checkpoints) as opened:
        report = audit = None
        stream = opened.stream
        async with contextlib.AsyncExitStack() as stack:
            if html is not None:
                live = await stack.enter_async_context(live_stores(opened))
                stream = with_projections(opened, flt, live)
                audit = Audit(flt, opened.checkpoints, public_key=key)
                label = _source_label(where["db"], where["mongodb"], where["archive"])
                report = Report(company, source=label, key_id=cp.key_id(key) if key else None)
            with ArchiveWriter(out_file, opened.checkpoints, company=company, public_key=key) as writer:
                async for history in stream:
                    if report is not None and audit is not None:
                        report.add(history, audit.play(history))
                    writer.add(history)
        written = (writer.plays, writer.events, writer.signed, len(opened.problems))
        if report is None or audit is None or html is None:
            return written, None
        summary = finish(audit, opened)
        report.write(html, summary)
        return written, summary
