"""``flow8 worker``: the composition root of the streams runtime."""

from __future__ import annotations

import asyncio
import logging

from flow8_streams.metrics import Metrics
from flow8_streams.modules.registry import ModuleRegistry
from flow8_streams.runtimes.streams.admin import ensure_topics
from flow8_streams.settings import Settings


def build(settings: Settings, registry: ModuleRegistry) -> object:
    from flow8_streams.runtimes.streams.app import Flow8App
    from flow8_streams.stores.mongo import MongoStore

    metrics = Metrics()
    store = MongoStore(
        settings.mongodb_uri,
        settings.mongodb_database,
        metrics=metrics,
        flow_cache_ttl=settings.cache.flows.ttl_seconds,
        flow_cache_max=settings.cache.flows.max_entries,
        incr_window=settings.kv_incr_dedup_window,
        timeout_ms=settings.store_timeout_ms,
    )
    return Flow8App(settings, registry, store, metrics)


async def prepare(settings: Settings) -> None:
    """Before the worker joins: topics exist, MongoDB indexes exist."""
    from flow8_streams.stores.mongo import MongoStore

    await ensure_topics(settings)
    store = MongoStore(settings.mongodb_uri, settings.mongodb_database)
    try:
        await store.open()
    finally:
        await store.close()


def run_worker(settings: Settings, registry: ModuleRegistry) -> None:
    import faust
    import uvloop

    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    asyncio.run(prepare(settings))
    flow8 = build(settings, registry)
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    level = settings.log_level.upper()

    class Worker(faust.Worker):
        def _setup_logging(self) -> None:
            super()._setup_logging()
            # mode leaves the root logger at DEBUG and filters in the handler: every
            # debug call of aiokafka and faust would still build a record (7% of CPU).
            logging.getLogger().setLevel(level)

    worker = Worker(
        flow8.app,  # type: ignore[attr-defined]
        loop=loop,
        loglevel=level,
        quiet=True,
        redirect_stdouts=False,
    )
    worker.execute_from_commandline()
