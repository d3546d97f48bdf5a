"""The streams worker's wiring: the faust app, its topics and table, and the agents.

Topology (every topic has the same partition count and is keyed by company_id):

    flow8.commands ─┐                       ┌─> flow8.events ──> projector ──> MongoDB plays
                    ├─> orchestrator (table) ┼─> flow8.tasks ───> executor ──┐
    flow8.completions┘      ^               └─> flow8.play-results           │
                            └────────────────────────────────────────────────┘

Each agent is a file of its own: ``orchestrator`` (the engine, one transaction per
decision), ``executor`` (modules, at least once, effect exactly once), ``projector``
(events into MongoDB, guarded by seq), ``timers`` (ticks, channel heartbeats, rescans)
and ``web`` (``/metrics``, ``/healthz``, ``/readyz``). What touches faust's or
aiokafka's internals is in ``kafka/``. This file only builds and connects them.

A worker with channels hands long flowlets (``defer_after_ms``, channel modules) to its
``ChannelPool`` instead of running them in the executor, and watches their heartbeats
in the orchestrator: see ``channels``.
"""

from __future__ import annotations

import logging
from functools import partial
from typing import TYPE_CHECKING, Any, cast

from flow8_streams.clock import utcnow
from flow8_streams.metrics import Metrics
from flow8_streams.modules.registry import ModuleRegistry
from flow8_streams.modules.threads import ModuleThreads
from flow8_streams.runtimes.streams.channels import ChannelExecutor, DirectProducer, watch_for
from flow8_streams.runtimes.streams.checkpoints import StreamCheckpoints
from flow8_streams.runtimes.streams.claims import PlayIdClaims
from flow8_streams.runtimes.streams.deadletters import DeadLetters
from flow8_streams.runtimes.streams.executor import Executor, TaskRunner
from flow8_streams.runtimes.streams.kafka.consumer import Flow8Consumer
from flow8_streams.runtimes.streams.kafka.faust_app import FaustApp, Hook, kafka_credentials
from flow8_streams.runtimes.streams.kafka.partition_txn import Flow8Assignor
from flow8_streams.runtimes.streams.kafka.transactions import WorkerTransaction, transaction_timeout_ms
from flow8_streams.runtimes.streams.kafka.wiring import Wiring
from flow8_streams.runtimes.streams.orchestrator import Orchestrator, Outputs
from flow8_streams.runtimes.streams.projector import Projector
from flow8_streams.runtimes.streams.retrying import StoreOutage, WaitingKV
from flow8_streams.runtimes.streams.table import plays_table
from flow8_streams.runtimes.streams.timers import Timers, Wakeups
from flow8_streams.runtimes.streams.web import WebPages
from flow8_streams.settings import Settings

if TYPE_CHECKING:
    from flow8_streams.channels.pool import ChannelPool
    from flow8_streams.stores.mongo import MongoStore


log = logging.getLogger("flow8.worker")

PARTITION_MODE_WARNING = (
    "transactions: partition (FLOW8_TRANSACTIONS=partition) is deprecated and will be removed: with it, a "
    "group that rebalances under load loses plays (StartPlays never run, completions never read: "
    "tests/streams/test_rebalances.py fails in this mode) and can crash a worker on a result for a partition "
    "it just lost. The default, transactions: worker, is tested through rebalances, kill -9 and a frozen worker."
)


def mode_warning(settings: Settings) -> str | None:
    """What a worker says at start about its transaction mode, if anything."""
    return PARTITION_MODE_WARNING if settings.transactions == "partition" else None


class Flow8App:
    """Builds and holds the faust app and its agents; the composition root passes everything in."""

    def __init__(
        self,
        settings: Settings,
        registry: ModuleRegistry,
        store: MongoStore,
        metrics: Metrics,
        channels: ChannelPool | None = None,
    ) -> None:
        s, t = settings, settings.topics
        self.settings = settings
        datadir = s.data_dir / s.worker_id
        datadir.mkdir(parents=True, exist_ok=True)

        # one plain producer for what goes out of any transaction: ticks, re-sent tasks, channel messages
        direct = DirectProducer(s)
        # plain modules run on these threads, never on the loop the agents share
        threads = ModuleThreads(s.module_threads, on_stuck=metrics.module_threads_stuck.set)
        # one view of MongoDB's outages for every agent: told once, counted, shown by /readyz
        outage = StoreOutage(store.hosts, metrics)
        runner = TaskRunner(registry, WaitingKV(store.kv, outage, s.store_wait_seconds), threads, metrics, utcnow)
        on_start: tuple[Hook, ...] = (direct.start,)
        on_stop: tuple[Hook, ...] = (self._final_commit, direct.stop, runner.close)
        # channels: the executor runs long flowlets on the pool, the orchestrator watches them
        channel_executor = channel_watch = None
        if channels is not None:
            heartbeat_timeout = s.execution.channel_heartbeat_timeout_seconds
            channel_executor = ChannelExecutor(
                channels, direct, advertised_host=s.advertised_host, heartbeat_every_s=heartbeat_timeout / 3
            )
            channel_watch = watch_for(registry, heartbeat_timeout)
            on_start = (direct.start, channel_executor.start)
            on_stop = (self._final_commit, channel_executor.close, direct.stop, runner.close)

        warning = mode_warning(s)
        if warning is not None:
            log.warning(warning)
        transaction = WorkerTransaction(
            transactional_id=f"{s.group_id}-{s.worker_id}",
            producer_options={**s.kafka_client_options(), "client_id": f"{s.worker_id}-txn", "linger_ms": 1},
            transaction_timeout_ms=transaction_timeout_ms(s.commit_interval_ms),
        )
        wiring = Wiring(
            transaction=transaction,
            metrics=metrics,
            commit_linger_ms=s.commit_linger_ms,
            eager_topics=frozenset({t.commands, t.completions, t.tasks}),
            mode=s.transactions,
        )
        self.app = app = FaustApp(
            s.group_id,
            broker=[f"kafka://{h.strip()}" for h in s.kafka_bootstrap_servers.split(",")],
            broker_credentials=kafka_credentials(s),
            store="memory://",
            processing_guarantee=s.processing_guarantee,
            broker_commit_interval=s.commit_interval_ms / 1000,
            broker_commit_every=10_000,
            broker_session_timeout=s.session_timeout_ms / 1000,
            broker_heartbeat_interval=max(1.0, s.session_timeout_ms / 10_000),
            topic_partitions=t.partitions,
            topic_replication_factor=t.replication_factor,
            table_standby_replicas=0,
            key_serializer="raw",
            value_serializer="raw",
            web_enabled=True,
            web_router_enabled=False,
            web_tables_enabled=False,
            web_graph_enabled=False,
            web_stats_enabled=False,
            web_metrics_enabled=False,
            web_port=s.server_port,
            web_bind=s.server_host,
            web_host=s.advertised_host,
            datadir=str(datadir),
            producer_linger_ms=1,
            stream_wait_empty=False,
            consumer_auto_offset_reset="earliest",
            PartitionAssignor=Flow8Assignor,
            wiring=wiring,
            on_start=on_start,
            on_stop=on_stop,
        )
        cast(Flow8Assignor, app.assignor).anchor = t.commands
        kw: dict[str, Any] = {"partitions": t.partitions, "key_serializer": "raw", "value_serializer": "raw"}
        topic = partial(app.topic, **kw)
        dead_letters = DeadLetters(topic(t.dlq), metrics)
        plays = plays_table(app, "plays", t.partitions)
        wakeups: Wakeups = {}

        self.orchestrator = Orchestrator(
            s,
            registry,
            store.flows,
            store.plays.owner,
            PlayIdClaims(store.plays.claim, s.limits),
            Outputs(
                events=topic(t.events),
                tasks=topic(t.tasks),
                results=topic(t.play_results),
                checkpoints=topic(t.checkpoints),
                plays=plays,
            ),
            wiring,
            metrics,
            dead_letters,
            wakeups,
            runner.run,
            generation=lambda: app.consumer_generation_id,
            channel_executor=channel_executor,
            channel_watch=channel_watch,
            checkpoints=stream_checkpoints(s),
            outage=outage,
        )
        if self.orchestrator.checkpoints is not None:
            app.timer(s.audit_checkpoint_seconds, name="flow8-checkpoints")(self.orchestrator.checkpoint)
        self.executor = Executor(runner, topic(t.completions), dead_letters, s.limits, channel_executor)
        self.projector = Projector(s, store.plays, metrics, dead_letters, outage)
        self.timers = Timers(
            app,
            plays,
            wakeups,
            direct,
            registry,
            metrics,
            completions_topic=t.completions,
            tasks_topic=t.tasks,
            channel_watch=channel_watch,
            channel_held=channel_executor.holds if channel_executor is not None else lambda key: False,
        )
        self.web = WebPages(
            app,
            metrics,
            s.worker_id,
            pings={"kafka": direct.ping, "mongodb": partial(store.client.admin.command, "ping")},
            outages={"mongodb": outage.note},
        )

        app.agent(topic(t.commands, t.completions), name="orchestrator")(self.orchestrator)
        app.agent(topic(t.tasks), name="executor", concurrency=s.executor_concurrency)(self.executor)
        app.agent(topic(t.events), name="projector")(self.projector)
        self.timers.register()
        self.web.register()

    async def _final_commit(self) -> None:
        """At a graceful stop, before the agents are cancelled: the heads noted since the last
        checkpoint are signed, and what was done is committed while the worker still holds its
        partitions (a commit proves the member's generation with their offsets; once the
        consumer stops there are none to send). Nothing is committed after it
        (``Flow8Consumer.close_commits``)."""
        if self.orchestrator.checkpoints is not None:
            await self.orchestrator.checkpoint()
        await cast(Flow8Consumer, self.app.consumer).close_commits()


def stream_checkpoints(settings: Settings) -> StreamCheckpoints | None:
    """The signer of the worker's checkpoints, when the settings name a signing key."""
    if settings.audit_signing_key is None:
        return None
    from flow8_streams.audit.checkpoints import Signer, load_private_key

    return StreamCheckpoints(Signer(load_private_key(settings.audit_signing_key), settings.worker_id))
