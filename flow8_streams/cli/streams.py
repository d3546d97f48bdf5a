"""``flow8`` commands of the streams runtime: worker, flows, produce, results.

Settings come from flags, then the environment (KAFKA_BOOTSTRAP_SERVERS,
MONGODB_URI, SERVER_PORT, ...), then ``--config FILE`` (YAML).
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import uuid
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape

from flow8_streams.cli.common import CompanyOpt, err, out, run_async
from flow8_streams.cli.options import check_id, id_option, name_option, servers_option
from flow8_streams.domain.messages import StartPlay
from flow8_streams.errors import InvalidInput, NotFound
from flow8_streams.extras import require_streams
from flow8_streams.flowfile import load_flow, parse_json_arg
from flow8_streams.settings import Settings, load_settings

ConfigOpt = Annotated[Path | None, typer.Option("--config", help="YAML settings file (or $FLOW8_CONFIG).")]
KafkaOpt = Annotated[
    str | None,
    typer.Option(
        "--kafka",
        help="Kafka bootstrap servers, host:port[,host:port] (or $KAFKA_BOOTSTRAP_SERVERS).",
        callback=servers_option("--kafka"),
    ),
]
PrefixOpt = Annotated[str | None, typer.Option("--topic-prefix", help="Topic name prefix (default flow8).")]

flows_app = typer.Typer(help="The flow catalog in MongoDB (what workers run).", no_args_is_help=True)
results_app = typer.Typer(help="Play results on Kafka (what downstream systems consume).", no_args_is_help=True)


def _settings(config: Path | None, kafka: str | None, prefix: str | None = None, **more: Any) -> Settings:
    """Settings from the flags given, the environment and the file; the MongoDB URI (it may hold a
    password) never comes from a flag, where the process list would show it."""
    flags: dict[str, Any] = {"kafka_bootstrap_servers": kafka, **more}
    if prefix is not None:
        flags["topics"] = {"prefix": prefix}
    return load_settings(config, **flags)


def worker(
    config: ConfigOpt = None,
    kafka: KafkaOpt = None,
    topic_prefix: PrefixOpt = None,
    server_port: Annotated[
        int | None,
        typer.Option("--server-port", help="HTTP port of /metrics and /healthz (or $SERVER_PORT, default 4454)."),
    ] = None,
    worker_id: Annotated[str | None, typer.Option("--worker-id", help="Name of this instance (or $WORKER_ID).")] = None,
    group_id: Annotated[
        str | None, typer.Option("--group", help="Consumer group / faust app id (default flow8).")
    ] = None,
    modules: Annotated[
        list[str] | None,
        typer.Option(
            "--modules", "-m", envvar="FLOW8_MODULES", help="Extra modules: a Python file or package with MODULES."
        ),
    ] = None,
    channels: Annotated[
        bool,
        typer.Option(
            "--channels/--no-channels",
            envvar="FLOW8_CHANNELS",
            help="Run flowlets with defer_after_ms (and channel modules) on channel worker processes, one per "
            "port of CHANNEL_PORT_RANGE (at most CHANNEL_POOL_SIZE, CHANNEL_POOL_WARM started at once, the "
            "others when tasks wait); --no-channels runs them in the executor. "
            "Workers sharing a machine need ranges of their own.",
        ),
    ] = True,
) -> None:
    """Run a streams worker: orchestrator, executor and projector agents (faust, uvloop), and its channels."""
    from flow8_streams.modules.registry import ModuleRegistry

    require_streams("flow8 worker")
    from flow8_streams.runtimes.streams.worker import run_worker

    settings = _settings(config, kafka, topic_prefix, server_port=server_port, worker_id=worker_id, group_id=group_id)
    sources = [s for item in modules or [] for s in item.split(",") if s]
    registry = ModuleRegistry.default(sources)
    run_worker(settings, registry, sources if channels else None)


@flows_app.command("put")
def flows_put(
    flow_file: Annotated[Path, typer.Argument(metavar="FLOW", help="Flow definition (JSON or YAML).")],
    company: CompanyOpt = "default",
    config: ConfigOpt = None,
    modules: Annotated[
        list[str] | None,
        typer.Option(
            "--modules", "-m", envvar="FLOW8_MODULES", help="Modules the workers have beyond the built-in ones."
        ),
    ] = None,
) -> None:
    """Store a flow version in the catalog (validated first)."""
    from flow8_streams.modules.registry import ModuleRegistry

    require_streams("flow8 flows put")
    from flow8_streams.stores.mongo import MongoStore

    sources = [s for item in modules or [] for s in item.split(",") if s]
    settings = _settings(config, None)
    flow = load_flow(flow_file, settings.limits).check(ModuleRegistry.default(sources).names())

    async def put() -> None:
        store = MongoStore(settings.mongodb_uri, settings.mongodb_database)
        try:
            await store.open()
            await store.flows.put(company, flow)
        finally:
            await store.close()

    run_async(put())
    out.print(f"[green]✔[/] stored flow [bold]{escape(flow.name)}[/] v{flow.version} for company {escape(company)}")


@flows_app.command("get")
def flows_get(
    name: Annotated[str, typer.Argument(metavar="NAME", callback=name_option("NAME"))],
    company: CompanyOpt = "default",
    version: Annotated[int | None, typer.Option("--version", min=1, help="Default: the latest.")] = None,
    config: ConfigOpt = None,
) -> None:
    """Print a flow definition from the catalog as JSON."""
    require_streams("flow8 flows get")
    from flow8_streams.stores.mongo import MongoStore

    settings = _settings(config, None)

    async def get() -> Any:
        store = MongoStore(settings.mongodb_uri, settings.mongodb_database)
        try:
            return await store.flows.get(company, name, version)
        finally:
            await store.close()

    flow = run_async(get())
    if flow is None:
        raise NotFound(f"company {company!r} has no flow {name!r}" + (f" v{version}" if version else ""))
    sys.stdout.write(flow.model_dump_json(indent=2, exclude_none=True) + "\n")


def produce(
    file: Annotated[Path | None, typer.Option("--file", "-f", help="JSONL of StartPlay/CancelPlay commands.")] = None,
    flow: Annotated[
        str | None,
        typer.Option("--flow", help="Generate StartPlay commands for this flow.", callback=name_option("--flow")),
    ] = None,
    count: Annotated[int, typer.Option("--count", "-n", min=1, help="How many to generate.")] = 1,
    company: CompanyOpt = "default",
    companies: Annotated[
        int, typer.Option("--companies", min=1, help="Spread generated plays over N companies: COMPANY-0..N-1.")
    ] = 1,
    input: Annotated[str, typer.Option("--input", "-i", help="Play input: JSON, or @file.json.")] = "{}",
    config: ConfigOpt = None,
    kafka: KafkaOpt = None,
    topic_prefix: PrefixOpt = None,
) -> None:
    """Send play commands to Kafka, as an upstream system does; prints each play id."""
    from flow8_streams.runtimes.streams.client import CommandProducer, commands_from_jsonl

    if (file is None) == (flow is None):
        raise InvalidInput("give either --file COMMANDS.jsonl or --flow NAME [--count N]")
    settings = _settings(config, kafka, topic_prefix)
    if file is not None:
        lines = _read_lines(file, settings.limits.max_message_bytes)
        commands = list(commands_from_jsonl(lines, str(file)))
    else:
        assert flow is not None
        play_input = parse_json_arg(input, "--input", settings.limits)
        names = [company] if companies == 1 else [check_id(f"{company}-{i}", "--company") for i in range(companies)]
        commands = [
            StartPlay(company_id=names[i % len(names)], flow=flow, input=play_input, play_id=str(uuid.uuid4()))
            for i in range(count)
        ]

    async def send() -> None:
        async with CommandProducer(settings) as producer:
            for command in commands:
                await producer.send(command)
            await producer.flush()

    run_async(send())
    for command in commands:
        sys.stdout.write(f"{getattr(command, 'play_id', None) or '(generated by the worker)'}\n")
    err.print(f"sent {len(commands)} command(s) to {settings.topics.commands}")


def cancel_on_kafka(play_id: str, company: str, config: Path | None) -> None:
    """``flow8 plays cancel`` on the streams runtime: a CancelPlay to the commands topic for a play
    the MongoDB projection holds as running for ``company`` (NotFound, exit 1, otherwise)."""
    from flow8_streams.domain.messages import CancelPlay
    from flow8_streams.runtimes.streams.client import CommandProducer

    require_streams("flow8 plays cancel with $MONGODB_URI")
    from flow8_streams.stores.mongo import MongoStore

    settings = _settings(config, None)

    async def cancel() -> None:
        store = MongoStore(settings.mongodb_uri, settings.mongodb_database)
        try:
            state = await store.plays.get(company, play_id)
        finally:
            await store.close()
        if state is None:
            raise NotFound(f"company {company!r} has no play {play_id} in MongoDB")
        if state.finished:
            raise NotFound(f"play {play_id} has already finished: {state.status.value}")
        async with CommandProducer(settings) as producer:
            await producer.send(
                CancelPlay(company_id=company, play_id=play_id, reason="cancelled with flow8 plays cancel")
            )
            await producer.flush()

    run_async(cancel())
    out.print(f"sent CancelPlay for play {escape(play_id)} to {escape(settings.topics.commands)}")


def _read_lines(file: Path, max_line_bytes: int) -> list[str]:
    """The lines of a JSONL file, each at most ``max_line_bytes`` (one Kafka message) and valid UTF-8."""
    lines: list[str] = []
    try:
        with open(file, "rb") as f:
            while line := f.readline(max_line_bytes + 2):  # a line and its CR LF
                number = len(lines) + 1
                text = line.rstrip(b"\r\n")
                if len(text) > max_line_bytes:
                    raise InvalidInput(
                        f"--file {file} line {number} is larger than the limit of {max_line_bytes} bytes "
                        "(limits.max_message_bytes)"
                    )
                try:
                    lines.append(text.decode("utf-8"))
                except UnicodeDecodeError as exc:
                    where = f"--file {file} line {number}"
                    raise InvalidInput(f"{where} is not valid UTF-8 (at byte {exc.start})") from None
    except FileNotFoundError:
        raise InvalidInput(f"--file {file}: no such file") from None
    except OSError as exc:
        raise InvalidInput(f"--file {file}: cannot be read: {exc.strerror or exc}") from None
    return lines


@results_app.command("tail")
def results_tail(
    from_beginning: Annotated[bool, typer.Option("--from-beginning", help="Start at the oldest result.")] = False,
    count: Annotated[int | None, typer.Option("--count", "-n", min=1, help="Stop after N results.")] = None,
    timeout: Annotated[float | None, typer.Option("--timeout", help="Stop after this many idle seconds.")] = None,
    company: Annotated[
        str | None, typer.Option("--company", help="Only this company's results.", callback=id_option("--company"))
    ] = None,
    play_id: Annotated[
        str | None,
        typer.Option(
            "--play-id",
            help="Only this play's result, looked for from the oldest, then stop (exit 1 if --timeout passes first).",
            callback=id_option("--play-id"),
        ),
    ] = None,
    group: Annotated[
        str | None, typer.Option("--group", help="Consume as this consumer group (commits offsets).")
    ] = None,
    config: ConfigOpt = None,
    kafka: KafkaOpt = None,
    topic_prefix: PrefixOpt = None,
) -> None:
    """Print play results as JSON lines as they arrive (flow8.play-results)."""
    from flow8_streams.runtimes.streams.client import tail_results

    settings = _settings(config, kafka, topic_prefix)

    async def tail() -> int:
        seen = 0
        async for result, _ in tail_results(
            settings, from_beginning=from_beginning or play_id is not None, group_id=group, idle_timeout=timeout
        ):
            if company is not None and result.company_id != company:
                continue
            if play_id is not None and result.play_id != play_id:
                continue
            sys.stdout.write(result.model_dump_json() + "\n")
            sys.stdout.flush()
            seen += 1
            if play_id is not None or (count is not None and seen >= count):
                break
        return seen

    seen = 0
    with contextlib.suppress(KeyboardInterrupt, asyncio.CancelledError):
        seen = run_async(tail())
    if play_id is not None and seen == 0:
        raise NotFound(f"no result for play {play_id}" + (f" within {timeout:g}s" if timeout is not None else ""))
