"""``flow8 serve`` (the HTTP API) and ``flow8 keys`` (its API keys: create, list, revoke)."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich import box
from rich.table import Column, Table

from flow8_streams.cli.common import (
    DEFAULT_DB,
    CompanyFilterOpt,
    CompanyOpt,
    ModulesOpt,
    dumps,
    existing_db,
    module_sources,
    out,
    print_table,
    run_async,
)
from flow8_streams.cli.streams import ConfigOpt
from flow8_streams.errors import InvalidInput, NotFound
from flow8_streams.live import plain

if TYPE_CHECKING:
    from flow8_streams.stores.ports import Stores

keys_app = typer.Typer(
    help="API keys of flow8 serve: one company each, shown once, stored as a hash.", no_args_is_help=True
)
KeyDbOpt = Annotated[
    Path | None, typer.Option("--db", envvar="FLOW8_DB", help="SQLite database file (default ./flow8.db).")
]
MongoOpt = Annotated[bool, typer.Option("--mongodb", help="The streams runtime's MongoDB ($MONGODB_URI) instead.")]


def serve(
    db: KeyDbOpt = None,
    streams: Annotated[
        bool, typer.Option("--streams", help="Serve the streams runtime: commands to Kafka, reads from MongoDB.")
    ] = False,
    host: Annotated[str | None, typer.Option("--host", help="Address to listen on (or $SERVER_HOST).")] = None,
    port: Annotated[
        int | None, typer.Option("--port", min=0, max=65535, help="Port (or $SERVER_PORT, default 4454).")
    ] = None,
    modules: ModulesOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Serve the HTTP API (/v1, /docs, /metrics): the embedded runtime of --db, or with --streams Kafka + MongoDB.

    Every request needs an API key of its company: flow8 keys create --company C."""
    from flow8_streams.http.serve import serve as run_server
    from flow8_streams.settings import load_settings

    if streams and db is not None:
        raise InvalidInput("give --db FILE (the embedded runtime) or --streams (Kafka + MongoDB), not both")
    settings = load_settings(config, server_host=host, server_port=port)
    from flow8_streams import logs

    # the settings' level (info by default): the server says where it listens, and logs each request
    logs.configure(logs.format_from_env(), logs.level_from_env(settings.log_level), uris=[settings.mongodb_uri])
    run_async(run_server(settings, None if streams else (db or DEFAULT_DB), module_sources(modules)))


@contextlib.asynccontextmanager
async def _key_store(db: Path | None, mongodb: bool, *, create: bool) -> AsyncIterator[Stores]:
    from flow8_streams.settings import load_settings

    if db is not None and mongodb:
        raise InvalidInput("give --db FILE or --mongodb, not both")
    settings = load_settings()
    if mongodb:
        from flow8_streams.extras import require_streams

        require_streams("flow8 keys --mongodb")
        from flow8_streams.stores.mongo import MongoStore

        async with MongoStore(settings.mongodb_uri, settings.mongodb_database) as mongo:
            yield mongo
        return
    from flow8_streams.stores.sqlite import SqliteStore

    path = db or DEFAULT_DB
    store = SqliteStore(path if create else existing_db(path))
    try:
        yield store
    finally:
        store.close()


@keys_app.command("create")
def keys_create(
    company: CompanyOpt,
    role: Annotated[str, typer.Option("--role", metavar="member|admin", help="admin also lists and revokes keys.")] = (
        "member"
    ),
    db: KeyDbOpt = None,
    mongodb: MongoOpt = False,
) -> None:
    """Make an API key for COMPANY; the key is printed once, alone on the last line."""
    from flow8_streams.http.keys import ROLES, new_key

    if role not in ROLES:
        raise InvalidInput(f"--role {role!r} is not one of {', '.join(ROLES)}")
    token, record = new_key(company, role)

    async def add() -> None:
        async with _key_store(db, mongodb, create=True) as store:
            await store.keys.add(record)

    run_async(add())
    sys.stdout.write(f"API key {record.key_id} for company {company} ({role}); shown this once, keep it secret:\n")
    sys.stdout.write(token + "\n")


@keys_app.command("list")
def keys_list(
    company: CompanyFilterOpt = None,
    db: KeyDbOpt = None,
    mongodb: MongoOpt = False,
    json_out: Annotated[bool, typer.Option("--json", help="JSON lines instead of a table.")] = False,
) -> None:
    """List API keys (ids, companies, roles, dates; never the keys)."""
    from flow8_streams.http.routes_keys import public

    async def fetch() -> list[dict[str, object]]:
        async with _key_store(db, mongodb, create=False) as store:
            return [public(k) for k in await store.keys.list(company)]

    keys = run_async(fetch())
    if json_out:
        for k in keys:
            sys.stdout.write(dumps(k, indent=False) + "\n")
        return
    table = Table(
        Column("key id", no_wrap=True),
        Column("company", overflow="fold"),
        Column("role", no_wrap=True),
        Column("created", no_wrap=True),
        Column("revoked", no_wrap=True),
        box=box.SIMPLE_HEAD,
        pad_edge=False,
    )
    for k in keys:
        created, revoked = k["created_at"], k["revoked_at"]
        table.add_row(
            str(k["key_id"]),
            plain(str(k["company_id"])),
            str(k["role"]),
            created.strftime("%Y-%m-%d %H:%M:%S") if isinstance(created, datetime) else "",
            revoked.strftime("%Y-%m-%d %H:%M:%S") if isinstance(revoked, datetime) else "",
        )
    print_table(table)


@keys_app.command("revoke")
def keys_revoke(
    key_id: Annotated[str, typer.Argument(metavar="KEY_ID", help="The id keys list shows (f8k_<id>_...).")],
    db: KeyDbOpt = None,
    mongodb: MongoOpt = False,
) -> None:
    """Revoke an API key: requests with it get 401 from then on."""
    if len(key_id) != 16 or not all(c in "0123456789abcdef" for c in key_id):
        raise InvalidInput(f"KEY_ID {key_id[:40]!r} is not a key id: 16 hex digits, as flow8 keys list shows")

    async def revoke() -> object:
        async with _key_store(db, mongodb, create=False) as store:
            return await store.keys.revoke(key_id, datetime.now(UTC))

    if run_async(revoke()) is None:
        raise NotFound(f"no API key {key_id}")
    out.print(f"revoked API key {key_id}")
