"""``flow8 worker``: the composition root of the streams runtime."""

from __future__ import annotations

import asyncio
import os

from flow8_streams import logs
from flow8_streams.cache import shared_flow_cache
from flow8_streams.metrics import Metrics
from flow8_streams.modules.registry import ModuleRegistry
from flow8_streams.runtimes.streams.admin import ensure_topics
from flow8_streams.settings import Settings


def build(
    settings: Settings,
    registry: ModuleRegistry,
    channel_sources: list[str] | None = None,
    token_key: bytes | None = None,
) -> object:
    """The worker's app; with ``channel_sources`` (the --modules list) it runs a channel pool,
    whose completion tokens ``token_key`` mints (see ``prepare``)."""
    from flow8_streams.runtimes.streams.app import Flow8App
    from flow8_streams.runtimes.streams.retrying import SERVER_SELECTION_S
    from flow8_streams.stores.mongo import MongoStore

    metrics = Metrics()
    store = MongoStore(
        settings.mongodb_uri,
        settings.mongodb_database,
        metrics=metrics,
        flow_cache_max=settings.cache.flows.max_entries,
        **shared_flow_cache(settings, metrics),
        kv_incr_dedup_seconds=settings.kv_incr_dedup_seconds,
        timeout_ms=settings.store_timeout_ms,
        # a call finds MongoDB down within 2 s, and its agent says so and tries again
        server_selection_timeout_ms=min(int(SERVER_SELECTION_S * 1000), settings.store_timeout_ms),
    )
    pool = None
    if channel_sources is not None:
        from flow8_streams.channels.pool import ChannelPool
        from flow8_streams.channels.slot import MongoKV

        kv = MongoKV(
            settings.mongodb_uri,
            settings.mongodb_database,
            timeout_ms=settings.store_timeout_ms,
            kv_incr_dedup_seconds=settings.kv_incr_dedup_seconds,
        )
        # channels listen where the HTTP server does; outside systems are told ADVERTISED_HOST
        pool = ChannelPool.from_settings(
            settings,
            module_sources=channel_sources,
            kv_mongodb=kv,
            metrics=metrics,
            host=settings.server_host,
            token_key=token_key,
        )
    return Flow8App(settings, registry, store, metrics, channels=pool)


def check_channel_ports(settings: Settings) -> None:
    """Fail the start, naming the ports, when the channel range is (partly) taken."""
    from flow8_streams.channels.ports import check_ports_free

    size = settings.channel_pool_size or len(settings.channel_ports)
    check_ports_free(settings.channel_ports[:size], settings.server_host)


async def prepare(settings: Settings) -> bytes:
    """Before the worker joins: topics exist, MongoDB indexes exist. Returns the key of
    completion tokens: the configured one, else the one MongoDB keeps for every worker."""
    from flow8_streams.channels.tokens import TOKEN_KEY_NAME, new_key, settings_key
    from flow8_streams.stores.mongo import MongoStore

    await ensure_topics(settings)
    store = MongoStore(settings.mongodb_uri, settings.mongodb_database)
    try:
        await store.open()
        return settings_key(settings) or await store.secret(TOKEN_KEY_NAME, new_key)
    finally:
        await store.close()


def run_worker(settings: Settings, registry: ModuleRegistry, channel_sources: list[str] | None = None) -> None:
    """Run until stopped; with ``channel_sources`` (the --modules list) a channel pool runs long flowlets."""
    import faust
    import uvloop

    from flow8_streams.runtimes.streams.kafka.metadata import pause_failed_metadata_updates

    if channel_sources is not None:
        check_channel_ports(settings)
    os.environ[logs.ENV] = settings.log_format  # the channel workers it starts log the same way
    level = settings.log_level.upper()
    uris = [settings.mongodb_uri, settings.kafka_bootstrap_servers]
    logs.configure(settings.log_format, level, uris=uris)  # from the first line on, faust's setup aside
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    pause_failed_metadata_updates()  # while the broker is down, its clients ask once a second, not thousands of times
    token_key = asyncio.run(prepare(settings))
    flow8 = build(settings, registry, channel_sources, token_key)
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)

    class Worker(faust.Worker):
        def _setup_logging(self) -> None:
            super()._setup_logging()
            # flow8's handler in place of mode's, and the root logger at the level: mode leaves
            # it at DEBUG and filters in the handler, so every debug call of aiokafka and faust
            # would still build a record (7% of CPU).
            logs.configure(settings.log_format, level, uris=uris, replace=True)
            self.spinner = None  # its handler is gone, and its cursor codes are no log line

    worker = Worker(
        flow8.app,  # type: ignore[attr-defined]
        loop=loop,
        loglevel=level,
        quiet=True,
        redirect_stdouts=False,
    )
    worker.execute_from_commandline()
