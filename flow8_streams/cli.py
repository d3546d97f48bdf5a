"""The ``flow8`` command.

Every error a user can cause ends as one paragraph on stderr and exit code 2;
a play that did not succeed exits 1. No traceback reaches a user.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import uuid
from collections.abc import AsyncIterator, Coroutine, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import orjson
import typer
from rich import box
from rich.console import Console
from rich.live import Live
from rich.markup import escape
from rich.table import Column, Table
from rich.text import Text

from flow8_streams import __version__, cli_streams
from flow8_streams.cli_options import id_option, limits
from flow8_streams.domain.events import verify_chain
from flow8_streams.domain.state import PlayState, PlayStatus
from flow8_streams.engine import EngineError, fold
from flow8_streams.errors import CompanyMismatch, Flow8Error, InvalidInput, NotFound
from flow8_streams.flowfile import load_flow, parse_json_arg
from flow8_streams.live import plain
from flow8_streams.modules.registry import ModuleRegistry
from flow8_streams.redact import scrub
from flow8_streams.stores.sqlite import SqliteStore

if TYPE_CHECKING:
    from flow8_streams.channels import ChannelPool

T = TypeVar("T")

app = typer.Typer(
    name="flow8",
    help="flow8-streams: event-sourced workflows. Runs embedded on SQLite, or on Kafka + MongoDB.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
plays_app = typer.Typer(
    help="Plays of the local database, or of MongoDB (and Kafka) when $MONGODB_URI is set and --db is not.",
    no_args_is_help=True,
)
kv_app = typer.Typer(help="The per-company KV store of the local database.", no_args_is_help=True)
schemas_app = typer.Typer(help="JSON Schemas of commands, events and flows.", no_args_is_help=True)
channels_app = typer.Typer(help="Channels: the worker processes behind CHANNEL_PORT_RANGE.", no_args_is_help=True)
app.add_typer(plays_app, name="plays")
app.add_typer(kv_app, name="kv")
app.add_typer(schemas_app, name="schemas")
app.add_typer(channels_app, name="channels")

# emoji codes off: ":name:" in a value would print as a picture
out = Console(highlight=False, emoji=False)
err = Console(stderr=True, highlight=False, emoji=False)

DbOpt = Annotated[Path, typer.Option("--db", envvar="FLOW8_DB", help="SQLite database file.")]
ModulesOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--modules",
        "-m",
        envvar="FLOW8_MODULES",
        help="A Python file or package whose MODULES mapping adds modules (repeatable).",
    ),
]
CompanyOpt = Annotated[str, typer.Option("--company", help="Company (tenant) id.", callback=id_option("--company"))]
CompanyFilterOpt = Annotated[
    str | None, typer.Option("--company", help="Only this company.", callback=id_option("--company"))
]
PlayIdArg = Annotated[str, typer.Argument(metavar="PLAY_ID", callback=id_option("PLAY_ID"))]
DEFAULT_DB = Path("flow8.db")


def dumps(value: Any, *, indent: bool = True) -> str:
    option = orjson.OPT_UTC_Z | orjson.OPT_NON_STR_KEYS
    if indent:
        option |= orjson.OPT_INDENT_2
    return orjson.dumps(value, option=option).decode()


def _run_async(coro: Coroutine[Any, Any, T]) -> T:
    try:
        import uvloop

        return uvloop.run(coro)
    except ImportError:  # pragma: no cover - uvloop is a dependency; keep working without it
        return asyncio.run(coro)


def _sources(modules: list[str] | None) -> list[str]:
    sources: list[str] = []
    for item in modules or []:
        sources.extend(s for s in item.split(",") if s)
    return sources


def _registry(modules: list[str] | None) -> ModuleRegistry:
    return ModuleRegistry.default(_sources(modules))


def _store(db: Path) -> SqliteStore:
    from flow8_streams.settings import load_settings

    return SqliteStore(db, kv_incr_dedup_seconds=load_settings().kv_incr_dedup_seconds)


ReadDbOpt = Annotated[
    Path | None,
    typer.Option(
        "--db",
        envvar="FLOW8_DB",
        help="SQLite database file (default ./flow8.db); without --db, $MONGODB_URI reads the streams runtime's "
        "MongoDB instead.",
    ),
]


@contextlib.asynccontextmanager
async def _reader(db: Path | None) -> AsyncIterator[Any]:
    """The store to read plays and KV from: MongoDB when $MONGODB_URI is set and --db is not, else SQLite.

    A MongoDB URI (it may hold a password) comes from the environment or the settings file only,
    never from the command line, where the process list shows it.
    """
    if db is None and os.environ.get("MONGODB_URI"):
        from flow8_streams.settings import load_settings
        from flow8_streams.stores.mongo import MongoStore

        settings = load_settings()
        mongo = MongoStore(settings.mongodb_uri, settings.mongodb_database)
        try:
            yield mongo
        finally:
            await mongo.close()
        return
    store = _existing_store(db or DEFAULT_DB)
    try:
        yield store
    finally:
        store.close()


@contextlib.contextmanager
def _driving(db: Path, play_id: str) -> Iterator[None]:
    """Held while this process drives ``play_id`` of ``db``: one process at a time writes a play's events.

    A byte-range lock (``lockf``) of ``DB.lock`` at an offset of the play id's hash: the kernel
    drops it when the process ends, however it ends. Another holder: ``Flow8Error`` (exit 1)."""
    import fcntl
    import hashlib

    offset = int.from_bytes(hashlib.sha256(play_id.encode()).digest()[:7])
    lock_path = db.with_name(db.name + ".lock")
    db.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, offset)
        except OSError:
            raise Flow8Error(
                f"play {play_id} is being run by another flow8 process on {db}; stop that one first (Ctrl-C)"
            ) from None
        yield
    finally:
        os.close(fd)  # releases the lock


def _existing_store(db: Path) -> SqliteStore:
    if not db.exists():
        raise NotFound(f"no database at {db}; run a play first (flow8 run FLOW) or pass --db")
    return _store(db)


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
    registry = _registry(modules)
    bounds = limits()
    flow = load_flow(flow_file, bounds).check(registry.names())
    play_input = parse_json_arg(input, "--input", bounds)
    from flow8_streams.domain.messages import StartPlay

    command = StartPlay(company_id=company, flow=flow.name, play_id=play_id or str(uuid.uuid4()), input=play_input)
    assert command.play_id is not None
    live = not json_out and out.is_terminal
    pool_sources = _sources(modules) if channels else None
    _drive_and_print(db, registry, flow, command.play_id, company, play_input, live, pool_sources, json_out)


def _drive_and_print(
    db: Path,
    registry: ModuleRegistry,
    flow: Any,
    play_id: str,
    company: str,
    play_input: Any,
    live: bool,
    pool_sources: list[str] | None,
    json_out: bool,
) -> None:
    """Run (or resume) a play to its end and print it; exit 0 if it succeeded, 1 if not.

    Ctrl-C leaves an unfinished play resumable (its events are committed) and says how, exit 130."""
    try:
        with _driving(db, play_id):
            state = _run_async(_run_play(db, registry, flow, play_id, company, play_input, live, pool_sources))
    except KeyboardInterrupt:
        store = _store(db)
        try:
            recorded = store.plays.get_sync(play_id)
        finally:
            store.close()
        if recorded is not None and not recorded.finished:
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


async def _run_play(
    db: Path,
    registry: ModuleRegistry,
    flow: Any,
    play_id: str,
    company: str,
    play_input: Any,
    live: bool,
    channel_sources: list[str] | None = None,
) -> PlayState:
    """``channel_sources`` (the --modules list) given: run with a channel pool, closed at the end."""
    store = _store(db)
    try:
        recorded = store.plays.get_sync(play_id)
        if recorded is not None and recorded.company_id != company:
            raise CompanyMismatch.of("flow8 run", play_id, company)
        if recorded is not None and recorded.finished:
            return recorded  # idempotent: a play the db holds is printed, not run again
        if channel_sources is None:
            return await _drive_play(store, registry, flow, play_id, company, play_input, live, None)
        from flow8_streams.channels import ChannelPool
        from flow8_streams.channels.tokens import TOKEN_KEY_NAME, new_key, settings_key
        from flow8_streams.settings import load_settings

        settings = load_settings()
        token_key = settings_key(settings) or store.secret(TOKEN_KEY_NAME, new_key)  # a resumed play keeps its tokens
        pool = ChannelPool.from_settings(settings, module_sources=channel_sources, kv_db=db, token_key=token_key)
        try:
            await pool.start()  # a port in use: InvalidInput naming it (exit 2)
            return await _drive_play(store, registry, flow, play_id, company, play_input, live, pool)
        finally:
            await pool.close()
    finally:
        store.close()


async def _drive_play(
    store: SqliteStore,
    registry: ModuleRegistry,
    flow: Any,
    play_id: str,
    company: str,
    play_input: Any,
    live: bool,
    pool: ChannelPool | None,
) -> PlayState:
    from flow8_streams.runtimes.local import LocalRuntime
    from flow8_streams.settings import load_settings

    settings = load_settings()  # the limits run read its input with, and the module threads
    async with LocalRuntime(
        store, registry, channels=pool, limits=settings.limits, module_threads=settings.module_threads
    ) as runtime:
        if not live:
            return await runtime.run(flow, play_input, company_id=company, play_id=play_id)
        from flow8_streams.live import live_view

        await runtime.start(flow, play_input, company_id=company, play_id=play_id)
        waiter = asyncio.create_task(runtime.wait(play_id))
        try:
            with Live(console=out, refresh_per_second=10, transient=True) as view:
                while not waiter.done():
                    state = runtime.state(play_id)
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
    registry = _registry(modules)
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
        async with _reader(db) as store:
            return list(await store.plays.list(company, status, limit))

    plays = _run_async(fetch())
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
    _print_table(table)


def _print_table(table: Table) -> None:
    """On a terminal, wrapped to its width; piped, each row on one line (what a script reads)."""
    if out.is_terminal:
        out.print(table)
    else:
        natural = table.__rich_measure__(out, out.options.update(max_width=100_000)).maximum
        Console(highlight=False, emoji=False, width=max(out.width, natural)).print(table)


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
        async with _reader(db) as store:
            state: PlayState | None = await store.plays.get(company, play_id)
            return state

    state = _run_async(fetch())
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
    if db is None and os.environ.get("MONGODB_URI"):
        cli_streams.cancel_on_kafka(play_id, company, config)
        return
    path = db or DEFAULT_DB
    state = _run_async(_cancel_local(path, play_id, company))
    out.print(Text.assemble("play ", plain(play_id), " ", (state.status.value, "bold magenta")))


async def _cancel_local(db: Path, play_id: str, company: str) -> PlayState:
    from flow8_streams.errors import CompanyMismatch
    from flow8_streams.runtimes.local import LocalRuntime
    from flow8_streams.settings import load_settings

    store = _existing_store(db)
    try:
        with _driving(db, play_id):
            recorded = store.plays.get_sync(play_id)
            if recorded is None:
                raise NotFound(f"no play {play_id} in {db}")
            if recorded.company_id != company:
                raise CompanyMismatch.of("cancel", play_id, company)
            if recorded.finished:
                raise NotFound(f"play {play_id} has already finished: {recorded.status.value}")
            settings = load_settings()
            registry = ModuleRegistry.default([])
            async with LocalRuntime(store, registry, limits=settings.limits, module_threads=1) as runtime:
                await runtime.cancel(play_id, company, reason="cancelled with flow8 plays cancel")
                return await runtime.wait(play_id)
    finally:
        store.close()


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
    if db is None and os.environ.get("MONGODB_URI"):
        raise InvalidInput(
            "plays resume drives a play of the local database (--db); on Kafka + MongoDB the workers resume "
            "unfinished plays themselves"
        )
    db = db or DEFAULT_DB
    store = _existing_store(db)
    try:
        recorded = store.plays.get_sync(play_id)
    finally:
        store.close()
    if recorded is None:
        raise NotFound(f"no play {play_id} in {db}")
    if recorded.finished:
        raise NotFound(f"play {play_id} has already finished: {recorded.status.value} (flow8 plays show {play_id})")
    registry = _registry(modules)
    flow = recorded.flow.check(registry.names())  # a module it needs and --modules did not give: exit 2
    live = not json_out and out.is_terminal
    pool_sources = _sources(modules) if channels else None
    _drive_and_print(db, registry, flow, play_id, recorded.company_id, recorded.input, live, pool_sources, json_out)


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
    store = _existing_store(db)
    try:
        history = store.log.read_sync(play_id)
        projected = store.plays.get_sync(play_id)
    finally:
        store.close()
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
        _print_table(table)
    if verify:
        problems = verify_chain(history)
        try:
            folded = fold(history)
        except EngineError as exc:  # a cut or reordered history does not fold; verify_chain names it
            problems.append(f"the events do not fold into a play: {exc}")
        else:
            if projected is not None and folded != projected:
                problems.append("the projection differs from the fold of the events")
        if projected is not None and projected.seq != len(history):
            problems.append(f"the projection is at seq {projected.seq} but the log has {len(history)} events")
        if problems:
            for problem in problems:
                err.print(Text.assemble(("✘", "red"), " ", plain(problem)), soft_wrap=True)
            raise typer.Exit(1)
        err.print(
            f"[green]✔[/] {len(history)} events chain from genesis to {history[-1].hash[:16]}…; projection matches"
        )


@kv_app.command("get")
def kv_get(
    key: Annotated[str, typer.Argument(metavar="KEY")],
    company: CompanyOpt = "default",
    db: ReadDbOpt = None,
) -> None:
    """Print the value stored under KEY (exit 1 if absent)."""

    async def fetch() -> Any:
        async with _reader(db) as store:
            return await store.kv.get(company, key)

    entry = _run_async(fetch())
    if entry is None:
        raise NotFound(f"no key {key!r} for company {company!r}")
    sys.stdout.write(dumps(entry.value, indent=False) + "\n")


# ---------------------------------------------------------------- schemas, bench


@schemas_app.command("export")
def schemas_export(
    directory: Annotated[Path, typer.Option("--dir", help="Where the schemas live.")] = Path("schemas"),
    check: Annotated[bool, typer.Option("--check", help="Write nothing; exit 1 if the files drifted.")] = False,
) -> None:
    """Write schemas/*.json from the models (or check them)."""
    from flow8_streams import schemas

    if check:
        problems = schemas.drift(directory)
        if problems:
            for p in problems:
                err.print(f"[red]✘[/] {escape(str(directory / p))}", soft_wrap=True)
            err.print("Run `flow8 schemas export` and commit the result.")
            raise typer.Exit(1)
        out.print(f"[green]✔[/] {escape(str(directory))} matches the models")
        return
    written = schemas.export(directory)
    out.print(f"wrote {len(written)} schemas to {directory}")


@app.command()
def bench(
    runtime: Annotated[str, typer.Option("--runtime", help="local (embedded) or streams.")] = "local",
    plays: Annotated[int, typer.Option("--plays", min=1)] = 2000,
    concurrency: Annotated[int, typer.Option("--concurrency", min=1)] = 50,
    db: Annotated[Path | None, typer.Option("--db", help="SQLite file (local; default: a temporary one).")] = None,
    workers: Annotated[int, typer.Option("--workers", min=1, max=8, help="streams: flow8 worker processes.")] = 1,
    json_out: Annotated[bool, typer.Option("--json", help="One JSON line of results.")] = False,
) -> None:
    """Run N plays of a 4-flowlet diamond of no-op modules; print plays/s and latency percentiles.

    streams: starts WORKERS `flow8 worker` processes on Kafka ($KAFKA_BOOTSTRAP_SERVERS) and
    MongoDB ($MONGODB_URI) with topics of their own, and times each play from the produce of
    its StartPlay to the consumption of its result on flow8.play-results.
    """
    import tempfile

    from flow8_streams.bench import bench_local, bench_streams

    if runtime not in ("local", "streams"):
        raise InvalidInput(f"--runtime {runtime!r}: choose local or streams")

    def measure(progress: Any = None) -> Any:
        if runtime == "local":
            return _run_async(bench_local(plays, concurrency, db, progress))
        from flow8_streams.settings import load_settings

        settings = load_settings()
        with tempfile.TemporaryDirectory(prefix="flow8-bench-") as tmp:
            return _run_async(bench_streams(settings, plays, concurrency, workers, Path(tmp), progress))

    if json_out or not err.is_terminal:
        result = measure()
    else:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

        with Progress(
            "[progress.description]{task.description}",
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=err,
            transient=True,
        ) as bar:
            task = bar.add_task("plays", total=plays)
            result = measure(lambda n: bar.advance(task, n))
    figures = result.as_dict()
    if json_out:
        sys.stdout.write(dumps(figures, indent=False) + "\n")
        return
    out.print(
        f"{runtime}{f' ({workers} workers)' if runtime == 'streams' else ''}: {figures['plays']} plays, "
        f"concurrency {concurrency}: "
        f"[bold]{figures['plays_per_s']} plays/s[/], p50 {figures['p50_ms']} ms, "
        f"p95 {figures['p95_ms']} ms, p99 {figures['p99_ms']} ms ({figures['failed']} failed)"
    )


# ---------------------------------------------------------------- channels

STATE_STYLE = {"idle": "green", "busy": "yellow", "pending": "cyan", "cold": "blue", "down": "red"}


@channels_app.command("status")
def channels_status(
    port_range: Annotated[
        str | None,
        typer.Option("--range", help="Ports to ask, like 7701-7799 (default: CHANNEL_PORT_RANGE from the settings)."),
    ] = None,
    host: Annotated[str, typer.Option("--host", help="Where the channels listen.")] = "127.0.0.1",
    timeout: Annotated[float, typer.Option("--timeout", min=0.01, help="Seconds each port has to answer.")] = 0.5,
    json_out: Annotated[bool, typer.Option("--json", help="JSON lines instead of a table.")] = False,
) -> None:
    """Each channel port's state: idle, busy (with which play and flowlet, since when), pending,
    cold (held by a pool that starts its worker when a task needs it), or down."""
    from datetime import UTC, datetime

    from flow8_streams.channels.ports import format_port_range, parse_port_range
    from flow8_streams.channels.status import age, probe_range, row, silent_state

    if port_range is not None:
        ports = parse_port_range(port_range, name="--range")
    else:
        from flow8_streams.settings import load_settings

        ports = load_settings().channel_ports
    found = _run_async(probe_range(ports, host=host, timeout=timeout))
    rows = [row(port, status) if status else row(port, None, silent=silent_state(port, host)) for port, status in found]
    if json_out:
        for r in rows:
            sys.stdout.write(dumps(r, indent=False) + "\n")
        return
    now = datetime.now(UTC)
    widest = max((len(r.get("play_id") or "") for r in rows), default=4)
    table = Table(
        Column("port", no_wrap=True),
        Column("state", no_wrap=True),
        "company",
        Column("play", no_wrap=True, min_width=max(4, widest)),  # whole, to be copied
        "flowlet",
        Column("since", no_wrap=True),
    )
    for r in rows:
        state = r["state"]
        since = r.get("since")
        flowlet = f"{r['flowlet']} #{r['attempt']}" if r.get("flowlet") else ""
        table.add_row(
            str(r["port"]),
            Text(state, style=STATE_STYLE.get(state, "white")),  # what a port answered: Text, never markup
            plain(r.get("company_id") or ""),
            plain(r.get("play_id") or ""),
            plain(flowlet),
            f"{since:%H:%M:%S} ({age(since, now)})" if since is not None else "",
        )
    piped = Console(highlight=False, emoji=False, width=max(out.width, 132))  # piped: whole rows
    console = out if out.is_terminal else piped
    console.print(table)
    counts = {s: sum(1 for r in rows if r["state"] == s) for s in ("busy", "pending", "idle", "cold", "down")}
    up = len(rows) - counts["down"] - counts["cold"]
    console.print(
        f"{up} of {len(rows)} ports on {escape(host)} {format_port_range(list(ports))} answer: "
        f"{counts['busy']} busy, {counts['pending']} pending, {counts['idle']} idle; "
        f"{counts['cold']} cold (not started yet), {counts['down']} down"
    )


# the streams runtime's commands, listed after the embedded ones
app.command()(cli_streams.worker)
app.command()(cli_streams.produce)
app.add_typer(cli_streams.flows_app, name="flows")
app.add_typer(cli_streams.results_app, name="results")


def _version(value: bool) -> None:
    if value:
        out.print(f"flow8 {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version.")
    ] = False,
    log_format: Annotated[
        str | None,
        typer.Option("--log-format", metavar="text|json", help="Log lines on stderr (or $FLOW8_LOG_FORMAT; text)."),
    ] = None,
) -> None:
    from flow8_streams.logs import configure_cli

    configure_cli(log_format)  # a bad value: InvalidInput naming it (exit 2)


def _env_uris() -> list[str]:
    return [uri for name in ("MONGODB_URI", "KAFKA_BOOTSTRAP_SERVERS") if (uri := os.environ.get(name))]


def _shown(message: object) -> str:
    """An error's message as it may be printed: no secret of a connection string the settings may hold."""
    return scrub(str(message), *_env_uris())


def main(argv: list[str] | None = None) -> None:
    """Console entry point: maps every error to a clear message and an exit code."""
    import logging

    from flow8_streams.redact import ScrubFilter

    if logging.lastResort is not None:  # what prints a library's warnings when nothing configured logging
        logging.lastResort.addFilter(ScrubFilter(*_env_uris()))
    try:
        code = app(args=argv, standalone_mode=False)
    except typer.Exit as exc:
        raise SystemExit(exc.exit_code) from None
    except Flow8Error as exc:  # the message may quote user or stored text: Text, never markup
        err.print(Text.assemble(("error:", "bold red"), " ", plain(_shown(exc))), soft_wrap=True)
        raise SystemExit(exc.exit_code) from None
    except KeyboardInterrupt:
        err.print("interrupted")
        raise SystemExit(130) from None
    except Exception as exc:  # click usage errors and the unexpected
        import click

        if isinstance(exc, click.exceptions.Abort | typer.Abort):
            raise SystemExit(1) from None
        # typer carries its own copy of click (typer._click): its usage errors are no click.ClickException
        format_message = getattr(exc, "format_message", None)
        exit_code = getattr(exc, "exit_code", None)
        from_click = type(exc).__module__.split(".")[0] in {"click", "typer"}
        if from_click and callable(format_message) and isinstance(exit_code, int):
            ctx = getattr(exc, "ctx", None)
            hint = f" (see {ctx.command_path} -h)" if ctx is not None else ""
            message = _shown(format_message()).strip()
            if not message and ctx is not None:  # no command given: what there is, then why it stopped
                err.print(plain(ctx.get_help()), soft_wrap=True)
                message, hint = "give a command", ""
            err.print(Text.assemble(("error:", "bold red"), " ", plain(f"{message}{hint}")), soft_wrap=True)
            raise SystemExit(exit_code) from None
        err.print(
            Text.assemble(
                ("internal error:", "bold red"), " ", plain(f"{type(exc).__name__}: {_shown(exc)} (please report this)")
            ),
            soft_wrap=True,
        )
        raise SystemExit(70) from None
    raise SystemExit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
