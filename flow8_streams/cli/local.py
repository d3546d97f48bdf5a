"""``flow8`` commands of the embedded runtime: run, validate, plays, events, kv.

They drive plays through ``LocalRuntime`` and read through the store ports; ``plays`` and ``kv``
read the streams runtime's MongoDB instead when $MONGODB_URI is set and --db is not.
"""

from __future__ import annotations

import asyncio
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer
from rich import box
from rich.live import Live
from rich.markup import escape
from rich.table import Column, Table
from rich.text import Text

from flow8_streams.cli import streams
from flow8_streams.cli.common import (
    DEFAULT_DB,
    CompanyFilterOpt,
    CompanyOpt,
    DbOpt,
    ModulesOpt,
    PlayIdArg,
    ReadDbOpt,
    app,
    dumps,
    err,
    existing_db,
    kv_app,
    module_sources,
    out,
    plays_app,
    print_table,
    reader,
    registry_of,
    run_async,
    uses_mongodb,
)
from flow8_streams.cli.options import id_option, limits
from flow8_streams.domain.events import Event
from flow8_streams.domain.flow import FlowDefinition
from flow8_streams.domain.state import PlayState, PlayStatus
from flow8_streams.errors import CompanyMismatch, InvalidInput, NotFound
from flow8_streams.flowfile import load_flow, parse_json_arg
from flow8_streams.live import plain
from flow8_streams.modules.registry import ModuleRegistry
from flow8_streams.runtimes.local import LocalRuntime, play_lock

# ---------------------------------------------------------------- run


@app.command()
def run(
    flow_file: Annotated[Path, typer.Argument(metavar="FLOW", help="Flow definition (JSON or YAML).")],
    input: Annotated[str, typer.Option("--input", "-i", help="Play input: JSON, or @file.json.")] = "{}",
    company: CompanyOpt = "default",
    play_id: Annotated[
        str | None,
        typer.Option(
            "--play-id", help="Play id; an id the db holds is not run again.", callback=id_option("--play-id")
        ),
    ] = None,
    db: DbOpt = DEFAULT_DB,
    json_out: Annotated[bool, typer.Option("--json", help="Print only the final play as JSON.")] = False,
    modules: ModulesOpt = None,
    channels: Annotated[
        bool,
        typer.Option(
            "--channels",
            help="Run flowlets with defer_after_ms (and channel modules) on channel worker processes: "
            "a pool on CHANNEL_PORT_RANGE of at most CHANNEL_POOL_SIZE channels (CHANNEL_POOL_WARM started "
            "with it, the others when tasks wait), for this run.",
        ),
    ] = False,
) -> None:
    """Run one play of FLOW to its end on the embedded runtime (exit 0 if it succeeded, 1 if not)."""
    registry = registry_of(modules)
    bounds = limits()
    flow = load_flow(flow_file, bounds).check(registry.names())
    play_input = parse_json_arg(input, "--input", bounds)
    from flow8_streams.domain.messages import StartPlay

    command = StartPlay(company_id=company, flow=flow.name, play_id=play_id or str(uuid.uuid4()), input=play_input)
    assert command.play_id is not None
    live = not json_out and out.is_terminal
    drive = _Drive(db, registry, flow, command.play_id, company, play_input, module_sources(modules), channels, live)
    _drive_and_print(drive, json_out)


@dataclass(frozen=True, slots=True)
class _Drive:
    """A play to run (or resume) to its end on the local db."""

    db: Path
    registry: ModuleRegistry
    flow: FlowDefinition
    play_id: str
    company: str
    input: Any
    module_sources: list[str]
    channels: bool  # on a channel pool of the --modules, started for this run
    live: bool  # a live view of the play while it runs


def _drive_and_print(drive: _Drive, json_out: bool) -> None:
    """Run (or resume) a play to its end and print it; exit 0 if it succeeded, 1 if not.

    Ctrl-C leaves an unfinished play resumable (its events are committed) and says how, exit 130."""
    try:
        with play_lock(drive.db, drive.play_id):
            state = run_async(_run_play(drive))
    except KeyboardInterrupt:
        recorded = _recorded(drive.db, drive.play_id)
        if recorded is not None and not recorded.finished:
            play_id = drive.play_id
            err.print(
                plain(f"interrupted: play {play_id} is still running; resume it with: flow8 plays resume {play_id}"),
                soft_wrap=True,
            )
        else:
            err.print("interrupted")
        raise typer.Exit(130) from None
    if json_out:
        sys.stdout.write(dumps(state.public()) + "\n")
    else:
        from flow8_streams.live import print_summary

        print_summary(out, state, dumps(state.output))
    raise typer.Exit(0 if state.status is PlayStatus.SUCCEEDED else 1)


def _recorded(db: Path, play_id: str) -> PlayState | None:
    """The play as ``db`` holds it, or None."""

    async def get() -> PlayState | None:
        async with reader(db) as store:
            return await store.plays.get(None, play_id)

    return run_async(get())


async def _run_play(drive: _Drive) -> PlayState:
    async with LocalRuntime.open(
        drive.db, registry=drive.registry, modules=drive.module_sources, channels=drive.channels
    ) as runtime:
        recorded = await runtime.store.plays.get(None, drive.play_id)
        if recorded is not None and recorded.company_id != drive.company:
            raise CompanyMismatch.of("flow8 run", drive.play_id, drive.company)
        if recorded is not None and recorded.finished:
            return recorded  # idempotent: a play the db holds is printed, not run again
        if not drive.live:
            return await runtime.run(drive.flow, drive.input, company_id=drive.company, play_id=drive.play_id)
        from flow8_streams.live import live_view

        await runtime.start(drive.flow, drive.input, company_id=drive.company, play_id=drive.play_id)
        waiter = asyncio.create_task(runtime.wait(drive.play_id))
        try:
            with Live(console=out, refresh_per_second=10, transient=True) as view:
                while not waiter.done():
                    state = runtime.state(drive.play_id)
                    if state is not None:
                        view.update(live_view(state))
                    await asyncio.wait({waiter}, timeout=0.1)
            return waiter.result()
        finally:
            waiter.cancel()  # interrupted: it ends here, not with the runtime's close unheard


@app.command()
def validate(
    flow_file: Annotated[Path, typer.Argument(metavar="FLOW", help="Flow definition (JSON or YAML).")],
    modules: ModulesOpt = None,
) -> None:
    """Check a flow definition: shape, graph, references and modules (exit 0 or 2)."""
    registry = registry_of(modules)
    flow = load_flow(flow_file, limits()).check(registry.names())
    out.print(
        f"[green]✔[/] flow [bold]{escape(flow.name)}[/] v{flow.version} is valid: "
        f"{len(flow.flowlets)} flowlets, roots {escape(', '.join(flow.roots))}, sinks {escape(', '.join(flow.sinks))}"
    )


# ---------------------------------------------------------------- plays, events, kv


@plays_app.command("list")
def plays_list(
    db: ReadDbOpt = None,
    company: CompanyFilterOpt = None,
    status: Annotated[str | None, typer.Option("--status", help="running, succeeded, failed or cancelled.")] = None,
    limit: Annotated[int, typer.Option("--limit", min=1)] = 50,
    json_out: Annotated[bool, typer.Option("--json", help="JSON lines instead of a table.")] = False,
) -> None:
    """List recent plays, newest first."""
    if status is not None and status not in {s.value for s in PlayStatus}:
        raise InvalidInput(f"--status {status!r} is not one of {', '.join(s.value for s in PlayStatus)}")

    async def fetch() -> list[PlayState]:
        async with reader(db) as store:
            return list(await store.plays.list(company, status, limit))

    plays = run_async(fetch())
    if json_out:
        for p in plays:
            sys.stdout.write(dumps(p.public(), indent=False) + "\n")
        return
    # every value whole, never cut to "…": wrapped on a narrow terminal; piped, one line per play
    table = Table(
        Column("play", overflow="fold", ratio=4),
        Column("company", overflow="fold", ratio=2),
        Column("flow", overflow="fold", ratio=2),
        Column("status", no_wrap=True, min_width=9),
        Column("started", overflow="fold", min_width=10),
        Column("took", no_wrap=True, min_width=5),
        box=box.SIMPLE_HEAD,
        pad_edge=False,
    )
    for p in plays:
        took = f"{(p.ended_at - p.started_at).total_seconds():.2f}s" if p.ended_at else ""
        table.add_row(  # stored text: Text, never markup
            plain(p.play_id),
            plain(p.company_id),
            plain(f"{p.flow.name} v{p.flow.version}"),
            p.status.value,
            p.started_at.strftime("%Y-%m-%d %H:%M:%S"),
            took,
        )
    print_table(table)


@plays_app.command("show")
def plays_show(
    play_id: PlayIdArg,
    db: ReadDbOpt = None,
    company: Annotated[
        str | None, typer.Option("--company", help="The play's company.", callback=id_option("--company"))
    ] = None,
) -> None:
    """Print one play as JSON."""

    async def fetch() -> PlayState | None:
        async with reader(db) as store:
            state: PlayState | None = await store.plays.get(company, play_id)
            return state

    state = run_async(fetch())
    if state is None:
        raise NotFound(f"no play {play_id}")
    sys.stdout.write(dumps(state.public()) + "\n")


@plays_app.command("cancel")
def plays_cancel(
    play_id: PlayIdArg,
    company: Annotated[
        str, typer.Option("--company", help="The play's company (required).", callback=id_option("--company"))
    ],
    db: ReadDbOpt = None,
    config: Annotated[Path | None, typer.Option("--config", help="YAML settings file (or $FLOW8_CONFIG).")] = None,
) -> None:
    """Cancel a running play (exit 1 if there is none or it has finished).

    The local db's play is cancelled at once; with $MONGODB_URI and no --db, a CancelPlay goes to the workers."""
    if uses_mongodb(db):
        streams.cancel_on_kafka(play_id, company, config)
        return
    path = db or DEFAULT_DB
    state = run_async(_cancel_local(path, play_id, company))
    out.print(Text.assemble("play ", plain(play_id), " ", (state.status.value, "bold magenta")))


async def _cancel_local(db: Path, play_id: str, company: str) -> PlayState:
    with play_lock(existing_db(db), play_id):
        async with LocalRuntime.open(db) as runtime:
            recorded = await runtime.store.plays.get(None, play_id)
            if recorded is None:
                raise NotFound(f"no play {play_id} in {db}")
            if recorded.company_id != company:
                raise CompanyMismatch.of("cancel", play_id, company)
            if recorded.finished:
                raise NotFound(f"play {play_id} has already finished: {recorded.status.value}")
            await runtime.cancel(play_id, company, reason="cancelled with flow8 plays cancel")
            return await runtime.wait(play_id)


@plays_app.command("resume")
def plays_resume(
    play_id: PlayIdArg,
    db: ReadDbOpt = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print only the final play as JSON.")] = False,
    modules: ModulesOpt = None,
    channels: Annotated[
        bool, typer.Option("--channels", help="Run channel flowlets on channel worker processes, as flow8 run does.")
    ] = False,
) -> None:
    """Resume an unfinished play of the local database to its end; print it as flow8 run does.

    Exit 0 if it succeeded, 1 if it did not or had already finished."""
    if uses_mongodb(db):
        raise InvalidInput(
            "plays resume drives a play of the local database (--db); on Kafka + MongoDB the workers resume "
            "unfinished plays themselves"
        )
    db = existing_db(db or DEFAULT_DB)
    recorded = _recorded(db, play_id)
    if recorded is None:
        raise NotFound(f"no play {play_id} in {db}")
    if recorded.finished:
        raise NotFound(f"play {play_id} has already finished: {recorded.status.value} (flow8 plays show {play_id})")
    registry = registry_of(modules)
    flow = recorded.flow.check(registry.names())  # a module it needs and --modules did not give: exit 2
    live = not json_out and out.is_terminal
    drive = _Drive(
        db, registry, flow, play_id, recorded.company_id, recorded.input, module_sources(modules), channels, live
    )
    _drive_and_print(drive, json_out)


@app.command()
def events(
    play_id: PlayIdArg,
    db: DbOpt = DEFAULT_DB,
    json_out: Annotated[bool, typer.Option("--json", help="JSON lines instead of a table.")] = False,
    verify: Annotated[
        bool, typer.Option("--verify", help="Check the hash chain and the projection (exit 1 if broken).")
    ] = False,
) -> None:
    """Print a play's events in order."""

    async def fetch() -> tuple[list[Event], PlayState | None]:
        async with reader(db) as store:
            return await store.log.read(play_id), await store.plays.get(None, play_id)

    history, projected = run_async(fetch())
    if not history:
        raise NotFound(f"no events for play {play_id} in {db}")
    if json_out:
        for e in history:
            sys.stdout.write(dumps(e.model_dump(mode="json"), indent=False) + "\n")
    else:
        table = Table(  # names whole, never cut to "…"
            Column("seq", no_wrap=True),
            Column("at", no_wrap=True),
            Column("type", no_wrap=True),
            Column("flowlet", overflow="fold", ratio=1),
            Column("attempt", no_wrap=True),
            Column("detail", overflow="fold", ratio=2),
            box=box.SIMPLE_HEAD,
            pad_edge=False,
        )
        for e in history:
            p = e.payload
            detail = getattr(p, "error", None) or getattr(p, "reason", None) or ""
            table.add_row(  # stored text: Text, never markup
                str(e.seq),
                e.at.strftime("%H:%M:%S.%f")[:-3],
                e.type,
                plain(getattr(p, "flowlet", "")),
                str(getattr(p, "attempt", "")),
                plain(str(detail)),
            )
        print_table(table)
    if verify:
        from flow8_streams.audit.verify import PlayHistory
        from flow8_streams.audit.verify import verify as verify_play

        documents = [e.model_dump(mode="json") for e in history]
        verdict = verify_play(
            PlayHistory(play_id, history[0].company_id, documents, projection=projected, has_projection=True)
        )
        if not verdict.ok:
            for f in verdict.findings:
                what = _HISTORY.get(f.kind, f.kind.replace("_", " "))
                err.print(Text.assemble(("✘", "red"), " ", plain(f"{f.detail} ({what})")), soft_wrap=True)
            raise typer.Exit(1)
        err.print(
            f"[green]✔[/] {len(history)} events chain from genesis to {history[-1].hash[:16]}…; projection matches "
            "(a recomputed chain or a cut tail shows only against signed checkpoints: flow8 audit verify)"
        )


_HISTORY = {  # what each finding of flow8_streams.audit.verify means to a reader of one play's events
    "altered": "history altered",
    "missing": "history cut",
    "cut_tail": "history cut",
    "reordered": "history reordered",
    "duplicated": "history duplicated",
    "after_terminal": "history extended",
}


@kv_app.command("get")
def kv_get(
    key: Annotated[str, typer.Argument(metavar="KEY")],
    company: CompanyOpt = "default",
    db: ReadDbOpt = None,
) -> None:
    """Print the value stored under KEY (exit 1 if absent)."""

    async def fetch() -> Any:
        async with reader(db) as store:
            return await store.kv.get(company, key)

    entry = run_async(fetch())
    if entry is None:
        raise NotFound(f"no key {key!r} for company {company!r}")
    sys.stdout.write(dumps(entry.value, indent=False) + "\n")
