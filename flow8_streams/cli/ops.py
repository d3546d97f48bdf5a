"""``flow8`` commands for operators: schemas, bench, channels status."""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Column, Table
from rich.text import Text

from flow8_streams.cli.common import app, channels_app, dumps, err, out, run_async, schemas_app
from flow8_streams.errors import InvalidInput
from flow8_streams.live import plain

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
    """Run N plays of a 4-flowlet diamond of no-op modules; print plays/s and latency percentiles
    (local: and the CPU the process spent per play, which other load on the machine moves less).

    streams: starts WORKERS `flow8 worker` processes on Kafka ($KAFKA_BOOTSTRAP_SERVERS) and
    MongoDB ($MONGODB_URI) with topics of their own, and times each play from the produce of
    its StartPlay to the consumption of its result on flow8.play-results.
    """
    from flow8_streams.bench import bench_local, bench_streams

    if runtime not in ("local", "streams"):
        raise InvalidInput(f"--runtime {runtime!r}: choose local or streams")

    def measure(progress: Any = None) -> Any:
        if runtime == "local":
            return run_async(bench_local(plays, concurrency, db, progress))
        from flow8_streams.settings import load_settings

        settings = load_settings()
        with tempfile.TemporaryDirectory(prefix="flow8-bench-") as tmp:
            return run_async(bench_streams(settings, plays, concurrency, workers, Path(tmp), progress))

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
        + (f", {figures['cpu_ms_per_play']} ms of CPU per play" if "cpu_ms_per_play" in figures else "")
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
    found = run_async(probe_range(ports, host=host, timeout=timeout))
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
