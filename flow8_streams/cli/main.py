"""The ``flow8`` console entry point: every command registered, every error mapped to one
paragraph on stderr and an exit code (``flow8_streams.cli.errors``)."""

from __future__ import annotations

from typing import Annotated

import typer

from flow8_streams import __version__
from flow8_streams.cli import archive, audit, audit_asof, audit_ops, local, ops, serve, streams
from flow8_streams.cli.common import app, out
from flow8_streams.cli.errors import env_uris, report

# the streams runtime's commands, listed after the embedded ones
app.command()(streams.worker)
app.command()(streams.produce)
app.add_typer(streams.flows_app, name="flows")
app.add_typer(streams.results_app, name="results")
audit.audit_app.command("as-of")(audit_asof.as_of)
audit.audit_app.command("rebuild")(audit_ops.rebuild)
audit.audit_app.command("replay")(audit_ops.replay_cmd)
app.add_typer(audit.audit_app, name="audit")
app.command()(archive.archive)
app.command()(serve.serve)
app.add_typer(serve.keys_app, name="keys")
__all__ = ["app", "audit", "local", "main", "ops", "serve"]


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


def main(argv: list[str] | None = None) -> None:
    """Console entry point: runs the command; any error ends as a message and an exit code."""
    import logging

    from flow8_streams.redact import ScrubFilter

    if logging.lastResort is not None:  # what prints a library's warnings when nothing configured logging
        logging.lastResort.addFilter(ScrubFilter(*env_uris()))
    try:
        code = app(args=argv, standalone_mode=False)
    except BaseException as exc:
        raise SystemExit(report(exc)) from None
    raise SystemExit(code if isinstance(code, int) else 0)
