"""Run the API: open the backend, then serve on uvicorn until a signal; close the backend."""

from __future__ import annotations

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


async def serve(settings: Settings, db: Path | None, modules: Sequence[str] = ()) -> None:
    metrics = Metrics()
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
            async with refreshing(app.state.audits):
                await uvicorn.Server(config).serve()
        finally:
            signal.signal(signal.SIGTERM, previous)


def _stopped(signum: int, frame: FrameType | None) -> None:
    log.info("stopped by signal %d", signum)
