"""Run the API: open the backend, then serve on uvicorn until a signal; close the backend."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from types import FrameType

import uvicorn

from flow8_streams.http.app import create_app
from flow8_streams.http.audits import refreshing
from flow8_streams.http.backends import Backend, EmbeddedBackend, StreamsBackend
from flow8_streams.metrics import Metrics
from flow8_streams.settings import Settings

log = logging.getLogger("flow8.http")


@contextlib.asynccontextmanager
async def open_backend(
    settings: Settings, db: Path | None, modules: Sequence[str], metrics: Metrics
) -> AsyncIterator[Backend]:
    """The embedded backend on ``db``, or the streams one (Kafka + MongoDB) when ``db`` is None."""
    if db is not None:
        async with EmbeddedBackend.open(db, settings, modules) as embedded:
            yield embedded
    else:
        async with StreamsBackend.open(settings, modules, metrics) as streams:
            yield streams


@contextlib.asynccontextmanager
async def retaining(settings: Settings, db: Path | None, metrics: Metrics) -> AsyncIterator[None]:
    """With ``retention.days`` (or ``retention.companies``) set, the retention job (archive, then
    prune) every ``retention.interval_seconds`` until the block ends: on the db of ``--db``, or
    on MongoDB for ``--streams``. Several instances may run it at once: a play archived by two is
    two identical copies that ``flow8 audit verify`` reads as one, and a delete finds nothing the
    second time."""
    if not settings.retention.enabled:  # (its settings were checked before the backend opened)
        yield
        return
    from flow8_streams.retention import job as retention

    def open_store() -> contextlib.AbstractAsyncContextManager[retention.Store]:
        return retention.open_sqlite(db) if db is not None else retention.open_mongodb(settings)

    task = asyncio.create_task(retention.every_interval(open_store, settings, metrics), name="flow8-retention")
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def serve(settings: Settings, db: Path | None, modules: Sequence[str] = ()) -> None:
    metrics = Metrics()
    if settings.retention.enabled:
        from flow8_streams.retention.job import check_settings

        check_settings(settings.retention)
    async with open_backend(settings, db, modules, metrics) as backend:
        app = create_app(settings, metrics, backend)
        config = uvicorn.Config(
            app,
            host=settings.server_host,
            port=settings.server_port,
            http="httptools",
            lifespan="off",  # the backend is opened above, so its errors reach the command's exit code
            log_config=None,  # uvicorn's loggers go to flow8's handlers (--log-format); its access log has no headers
            server_header=False,
        )
        where = f"{db}" if db is not None else "Kafka + MongoDB"
        log.info(
            "serving the API of %s on http://%s:%d (docs at /docs)", where, settings.server_host, settings.server_port
        )
        # uvicorn stops on SIGTERM, then raises the signal again to the handler it found: that
        # one must let this function return, so that the backend closes (the runtime flushes)
        previous = signal.signal(signal.SIGTERM, _stopped)
        try:
            async with refreshing(app.state.audits), retaining(settings, db, metrics):
                await uvicorn.Server(config).serve()
        finally:
            signal.signal(signal.SIGTERM, previous)


def _stopped(signum: int, frame: FrameType | None) -> None:
    log.info("stopped by signal %d", signum)
