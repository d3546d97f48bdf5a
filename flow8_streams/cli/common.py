"""What every ``flow8`` command shares: the typer apps, the consoles, the options and the stores.

Commands live in ``local`` (the embedded runtime), ``streams`` (Kafka + MongoDB) and ``ops``
(schemas, bench, channels); ``main`` maps every error to its exit code (``errors``).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import orjson
import typer
from rich.console import Console
from rich.table import Table

from flow8_streams.cli.options import id_option
from flow8_streams.errors import NotFound

if TYPE_CHECKING:
    from flow8_streams.modules.registry import ModuleRegistry
    from flow8_streams.stores.ports import Stores

T = TypeVar("T")

app = typer.Typer(
    name="flow8",
    help="flow8-streams: event-sourced workflows. Runs embedded on SQLite, or on Kafka + MongoDB.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
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


def run_async(coro: Coroutine[Any, Any, T]) -> T:
    """``coro`` to its end on uvloop (asyncio's own loop where uvloop does not install: Windows)."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - a dependency wherever it installs
        return asyncio.run(coro)
    return uvloop.run(coro)


def module_sources(modules: list[str] | None) -> list[str]:
    sources: list[str] = []
    for item in modules or []:
        sources.extend(s for s in item.split(",") if s)
    return sources


def registry_of(modules: list[str] | None) -> ModuleRegistry:
    """The built-in modules and those of the --modules files."""
    from flow8_streams.modules.registry import ModuleRegistry

    return ModuleRegistry.default(module_sources(modules))


ReadDbOpt = Annotated[
    Path | None,
    typer.Option(
        "--db",
        envvar="FLOW8_DB",
        help="SQLite database file (default ./flow8.db); without --db, $MONGODB_URI reads the streams runtime's "
        "MongoDB instead.",
    ),
]


def uses_mongodb(db: Path | None) -> bool:
    """A command reads (or acts on) the streams runtime's MongoDB: $MONGODB_URI set and no --db."""
    return db is None and bool(os.environ.get("MONGODB_URI"))


@contextlib.asynccontextmanager
async def reader(db: Path | None) -> AsyncIterator[Stores]:
    """The store to read plays and KV from: MongoDB when $MONGODB_URI is set and --db is not, else SQLite.

    A MongoDB URI (it may hold a password) comes from the environment or the settings file only,
    never from the command line, where the process list shows it.
    """
    from flow8_streams.settings import load_settings

    settings = load_settings()
    if uses_mongodb(db):
        from flow8_streams.extras import require_streams

        require_streams("reading the streams runtime's MongoDB ($MONGODB_URI is set, --db is not)")
        from flow8_streams.stores.mongo import MongoStore

        mongo = MongoStore(settings.mongodb_uri, settings.mongodb_database)
        try:
            yield mongo
        finally:
            await mongo.close()
        return
    path = existing_db(db or DEFAULT_DB)
    from flow8_streams.stores.sqlite import SqliteStore

    store = SqliteStore(path, kv_incr_dedup_seconds=settings.kv_incr_dedup_seconds)
    try:
        yield store
    finally:
        store.close()


def existing_db(db: Path) -> Path:
    """``db`` if there is a database there; else ``NotFound`` saying how to make one."""
    if not db.exists():
        raise NotFound(f"no database at {db}; run a play first (flow8 run FLOW) or pass --db")
    return db


def print_table(table: Table) -> None:
    """On a terminal, wrapped to its width; piped, each row on one line (what a script reads)."""
    if out.is_terminal:
        out.print(table)
    else:
        natural = table.__rich_measure__(out, out.options.update(max_width=100_000)).maximum
        Console(highlight=False, emoji=False, width=max(out.width, natural)).print(table)
