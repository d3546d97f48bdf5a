"""``flow8 audit as-of TIME``: each play as it was at TIME (the fold of its log up to then), each
play's history verified whole, and with ``--company`` (no ``--play``) its KV values at TIME as
far as the store can tell. Exit 0 clean, 1 findings, 2 bad input."""

from __future__ import annotations

import sys
from collections import Counter
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from pydantic import ValidationError
from rich.text import Text

from flow8_streams.audit import checkpoints as cp
from flow8_streams.audit.asof import KNOWN, KVAt, kv_from_versions, sqlite_kv_at, state_at
from flow8_streams.audit.run import Audit
from flow8_streams.audit.sources import ArchiveSource, Filter, SqliteSource, StoreSource
from flow8_streams.audit.verify import PlayHistory, Summary
from flow8_streams.cli.audit import (
    AllCompaniesOpt,
    CompanyOpt,
    DbSourceOpt,
    FlowOpt,
    MongoOpt,
    PlayOpt,
    PublicKeyOpt,
    SinceOpt,
    UntilOpt,
    _filter,
    _one_source,
    _time,
)
from flow8_streams.cli.common import dumps, err, out, run_async
from flow8_streams.domain.events import event_adapter
from flow8_streams.errors import EngineError
from flow8_streams.live import plain

MAX_KV_KEYS = 10_000  # keys shown per company (SQLite); the summary says how many there are
MAX_MONGO_KV_KEYS = 1_000  # three queries each


def _iso(when: datetime | None) -> str | None:
    return when.isoformat().replace("+00:00", "Z") if when is not None else None


class _AsOf:
    """Each play's state at ``when`` with its verdict, as it comes; then the summary."""

    def __init__(self, when: datetime, audit: Audit, json_out: bool) -> None:
        self.when, self.audit, self.json = when, audit, json_out
        self.by_status: Counter[str] = Counter()
        self.not_started = 0

    def play(self, history: PlayHistory) -> None:
        verdict = self.audit.play(history)
        error, state = None, None
        try:
            state = state_at([event_adapter.validate_python(d) for d in history.documents], self.when)
        except ValidationError as exc:
            problem = exc.errors(include_url=False)[0]
            error = f"an event cannot be read: {problem['msg']} at {problem['loc']}"
        except EngineError as exc:
            error = f"the events do not fold into a play: {exc}"
        if state is None and error is None:
            self.not_started += 1
            return
        status = state.status.value if state is not None else "unreadable"
        self.by_status[status] += 1
        record: dict[str, Any] = {
            "play_id": history.play_id,
            "company_id": history.company_id,
            "as_of": _iso(self.when),
            "status_then": status,
            "seq_then": state.seq if state is not None else None,
            "events": len(history.documents),
            "state": state.public() if state is not None else None,
            "error": error,
            "verdict": "ok" if verdict.ok else "findings",
            "findings": [f.as_json() for f in verdict.findings],
        }
        if self.json:
            sys.stdout.write(dumps(record, indent=False) + "\n")
            return
        line = Text.assemble(
            plain(history.play_id), f"  {status} at seq {record['seq_then']} of {len(history.documents)}"
        )
        if state is not None:
            flowlets = ", ".join(f"{name} {f.status.value}" for name, f in state.flowlets.items())
            line.append_text(Text.assemble(": ", plain(flowlets)))
        if error is not None:
            line.append_text(Text.assemble(": ", plain(error)))
        out.print(line, soft_wrap=True)
        for f in verdict.findings:
            where = f" seq {f.seq}" if f.seq is not None else ""
            out.print(Text.assemble(("  ✘ ", "red"), f"{f.kind}{where}: ", plain(f.detail)), soft_wrap=True)

    def end(self, summary: Summary, kv: list[KVAt] | None, kv_total: int, kv_note: str) -> None:
        record: dict[str, Any] = {
            "summary": True,
            "as_of": _iso(self.when),
            "plays": sum(self.by_status.values()),
            "not_started": self.not_started,
            "by_status": dict(sorted(self.by_status.items())),
            "kv": [k.as_json() for k in kv] if kv is not None else None,
            "kv_keys": kv_total,
            "kv_note": kv_note,
            "verification": summary.as_json(),
            "verdict": "ok" if summary.clean else "findings",
        }
        if self.json:
            sys.stdout.write(dumps(record, indent=False) + "\n")
            return
        for k in kv or []:
            shown = dumps(k.value, indent=False) if k.state == KNOWN else k.state
            out.print(Text.assemble("kv ", plain(k.key), " = ", plain(shown), f"  ({k.note} {_iso(k.updated_at)})"))
        counts = ", ".join(f"{n} {s}" for s, n in sorted(self.by_status.items())) or "no plays"
        mark = "[green]✔[/]" if summary.clean else "[red]✘[/]"
        err.print(
            f"{mark} as of {_iso(self.when)}: {counts}; {self.not_started} not started yet; "
            f"{summary.with_findings} plays with findings. KV: {kv_note}",
            soft_wrap=True,
            markup=True,
            highlight=False,
        )


def as_of(
    when: Annotated[str, typer.Argument(metavar="TIME", help="The moment, an ISO time (2026-11-30T02:00:00Z).")],
    db: DbSourceOpt = None,
    mongodb: MongoOpt = False,
    archive: Annotated[Path | None, typer.Option("--archive", help="Read a flow8 audit export file.")] = None,
    company: CompanyOpt = None,
    all_companies: AllCompaniesOpt = False,
    play: PlayOpt = None,
    flow: FlowOpt = None,
    since: SinceOpt = None,
    until: UntilOpt = None,
    public_key: PublicKeyOpt = None,
    json_out: Annotated[
        bool, typer.Option("--json", help="One JSON object per play (its state then), then the summary.")
    ] = False,
) -> None:
    """Each play (or --play P) as it was at TIME: the fold of its log up to TIME, its whole history
    verified; with --company and no --play, the company's KV values at TIME as far as the store
    keeps them. Plays not started by TIME are counted, not shown. Exit 0 clean, 1 findings, 2 bad input."""
    _one_source(db, mongodb, archive)
    moment = _time(when, "TIME")
    assert moment is not None
    flt = _filter(company, all_companies, play, flow, None, since, until)
    key = cp.load_public_key(public_key) if public_key is not None else None
    summary = run_async(_run(moment, flt, key, db, mongodb, archive, json_out))
    raise typer.Exit(0 if summary.clean else 1)


async def _run(
    when: datetime,
    flt: Filter,
    key: Ed25519PublicKey | None,
    db: Path | None,
    mongodb: bool,
    archive: Path | None,
    json_out: bool,
) -> Summary:
    want_kv = flt.company is not None and flt.play is None
    kv: list[KVAt] | None = None
    kv_total, kv_note = 0, "not asked (give --company without --play)"
    if db is not None:
        source = SqliteSource(db)
        try:
            report = _AsOf(when, Audit(flt, source.checkpoints(), public_key=key), json_out)
            for history in source.histories(flt):
                report.play(history)
            if want_kv:
                assert flt.company is not None
                kv, kv_total = sqlite_kv_at(source.db, flt.company, when, MAX_KV_KEYS)
                kv_note = (
                    "the SQLite store keeps each key's latest value and its write time, no older values: "
                    "a key rewritten after TIME is 'unknown'"
                )
        finally:
            source.close()
        summary = report.audit.finish()
    elif archive is not None:
        packed = ArchiveSource(archive)
        report = _AsOf(when, Audit(flt, packed.checkpoints(), public_key=key), json_out)
        for history in packed.histories(flt):
            report.play(history)
        summary = report.audit.finish(packed.problems)
        kv_note = "an archive holds no KV values" if want_kv else kv_note
    else:
        from flow8_streams.settings import load_settings
        from flow8_streams.stores.mongo import MongoStore

        settings = load_settings()
        report = _AsOf(when, Audit(flt, (), public_key=key), json_out)
        mongo = MongoStore(settings.mongodb_uri, settings.mongodb_database)
        try:
            async for history in StoreSource(mongo).histories(flt):
                report.play(history)
            if want_kv:
                assert flt.company is not None
                versions, kv_total = await mongo.kv.versions_at(flt.company, when, MAX_MONGO_KV_KEYS)
                kv = kv_from_versions(flt.company, versions)
                kv_note = (
                    "the MongoDB store keeps each key's versions with their write time until they are older "
                    "than the increment dedup window (FLOW8_KV_INCR_DEDUP_SECONDS): a key whose versions "
                    "before TIME were pruned is 'unknown'"
                )
        finally:
            await mongo.close()
        summary = report.audit.finish()
    report.end(summary, kv, kv_total, kv_note)
    return summary
