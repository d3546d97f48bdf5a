"""Prometheus metrics of one flow8 process, on a registry of its own (built by the
composition root, never at import), served at ``/metrics``."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800, 3600)


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.plays_started = Counter("flow8_plays_started_total", "Plays started.", registry=r)
        self.plays_finished = Counter(
            "flow8_plays_finished_total", "Plays finished, by status.", ["status"], registry=r
        )
        self.play_duration = Histogram(
            "flow8_play_duration_seconds",
            "From PlayStarted to the play's end.",
            ["status"],
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.flowlet_duration = Histogram(
            "flow8_flowlet_duration_seconds",
            "One flowlet attempt, by module and outcome.",
            ["module", "outcome"],
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.events = Counter("flow8_events_total", "Events emitted, by type.", ["type"], registry=r)
        self.checkpoints = Counter(
            "flow8_audit_checkpoints_total", "Signed checkpoints of chain heads written (audits).", registry=r
        )
        self.stale_decisions = Counter(
            "flow8_stale_decisions_total",
            "Decisions not published: a rebalance came while they were made, and their input is read again.",
            registry=r,
        )
        self.cache_hits = Counter("flow8_cache_hits_total", "Per-instance cache hits.", ["cache"], registry=r)
        self.cache_misses = Counter("flow8_cache_misses_total", "Per-instance cache misses.", ["cache"], registry=r)
        self.shared_cache = Counter(
            "flow8_shared_cache_requests_total",
            "Reads of the shared cache (cache.backend: redis), by cache and outcome: hit or miss.",
            ["cache", "backend", "outcome"],
            registry=r,
        )
        self.cache_errors = Counter(
            "flow8_cache_errors_total",
            "Shared cache failures, by reason: unavailable (down, timeout, password refused; the database "
            "answered instead) or invalid (a stored value that did not validate, ignored).",
            ["cache", "backend", "reason"],
            registry=r,
        )
        self.dlq = Counter(
            "flow8_dlq_messages_total",
            "Messages sent to the dead-letter topic, by source topic and reason.",
            ["topic", "reason"],
            registry=r,
        )
        self.consumer_lag = Gauge(
            "flow8_consumer_lag_messages",
            "Messages not yet consumed, by topic and partition.",
            ["topic", "partition"],
            registry=r,
        )
        self.projection_batch = Histogram(
            "flow8_projection_batch_size",
            "Events per projector batch.",
            buckets=(1, 5, 10, 50, 100, 500, 1000, 5000),
            registry=r,
        )
        self.projection_lag = Histogram(
            "flow8_projection_lag_seconds",
            "From an event's append (its `at`) to its projection into the store, per event.",
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800),
            registry=r,
        )
        self.store_retries = Counter(
            "flow8_store_retries_total",
            "Calls to a store (mongodb) tried again after it failed them (down, or refusing), by operation: "
            "project, repair, claim_play_id, read_flow, read_owner, kv_get, kv_set, kv_cas, kv_incr, kv_keys.",
            ["store", "operation"],
            registry=r,
        )
        self.store_waiting = Gauge(
            "flow8_store_waiting",
            "Calls waiting for a store to answer again after it failed them (0 while it answers).",
            ["store"],
            registry=r,
        )
        self.http_refused = Counter(
            "flow8_http_refused_total",
            "Requests an HTTP port refused, by status: a worker's (404: a path it does not serve, 405: a method) "
            "or flow8 serve's (every 4xx: 401 a key, 413 a body, 422 a field, 429 a rate...).",
            ["status"],
            registry=r,
        )
        self.http_history_reads = Counter(
            "flow8_http_history_reads_total",
            "Reads of a play's history off the events topic by flow8 serve --streams, by where the play was found: "
            "on its company's partition, or (its events written by another partitioner's rule) on any.",
            ["partitions"],
            registry=r,
        )
        self.http_waits = Gauge(
            "flow8_http_waits", "Waits (GET /v1/plays/{id}/wait) flow8 serve holds now.", registry=r
        )
        self.inflight_plays = Gauge("flow8_inflight_plays", "Plays in this instance's table.", registry=r)
        # channels: the pool of background worker processes, one per port
        self.channels_busy = Gauge(
            "flow8_channels_busy", "Channels running a task (or awaiting its outside end).", registry=r
        )
        self.channels_started = Gauge(
            "flow8_channels_started",
            "Channel worker processes running or starting (at most CHANNEL_POOL_SIZE; the pool grows on demand).",
            registry=r,
        )
        self.channel_tasks_waiting = Gauge(
            "flow8_channel_tasks_waiting", "Channel tasks queued for a free channel.", registry=r
        )
        self.channel_task_duration = Histogram(
            "flow8_channel_task_duration_seconds",
            "From a channel accepting a task to its end, by outcome (succeeded, failed, timed_out, lost, cancelled).",
            ["outcome"],
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.channel_refusals = Counter(
            "flow8_channel_refusals_total",
            "What channel ports refused, by reason (unauthenticated, replayed, bad_token, bad_message, "
            "line_too_long, too_many_connections, idle_timeout).",
            ["reason"],
            registry=r,
        )
        self.channel_timeouts = Counter(
            "flow8_channel_timeouts_total", "Channel tasks killed at their deadline.", registry=r
        )
        self.channels_lost = Counter(
            "flow8_channels_lost_total",
            "Channels lost mid-task: no heartbeat, the worker died, or its connection dropped.",
            registry=r,
        )
        self.channel_restarts = Counter(
            "flow8_channel_restarts_total", "Channel worker processes restarted on their port.", registry=r
        )
        self.producers_renewed = Counter(
            "flow8_producers_renewed_total",
            "Transactional producers replaced after the broker fenced them for a transaction open past its "
            "timeout (the worker was frozen); the worker rejoins the group.",
            registry=r,
        )
        self.module_threads_stuck = Gauge(
            "flow8_module_threads_stuck",
            "Plain modules still running on their thread after their attempt ended (timed out or cancelled).",
            registry=r,
        )
        # retention: flow8 serve's scheduled archive and prune
        self.archive_plays = Counter(
            "flow8_archive_plays_total", "Finished plays written to an archive by the retention job.", registry=r
        )
        self.archive_files = Counter(
            "flow8_archive_files_total", "Archives (each with its manifest) written.", registry=r
        )
        self.pruned_plays = Counter(
            "flow8_pruned_plays_total", "Plays deleted from the live store after they were archived.", registry=r
        )
        self.pruned_events = Counter("flow8_pruned_events_total", "Events deleted with those plays.", registry=r)
        self.retention_runs = Counter(
            "flow8_retention_runs_total", "Runs of the retention job, by outcome (ok, failed).", ["outcome"], registry=r
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)


def replace_samples(
    gauge: Gauge, samples: Mapping[tuple[str, ...], float], previous: Iterable[tuple[str, ...]] = ()
) -> set[tuple[str, ...]]:
    """Set each labelled sample of ``gauge`` and remove those of ``previous`` that are not among them
    (a partition revoked since: its last value would stay on the page, stale, forever). Returns the
    labels set, to pass as ``previous`` next time."""
    for labels, value in samples.items():
        gauge.labels(*labels).set(value)
    for gone in set(previous) - samples.keys():
        gauge.remove(*gone)
    return set(samples)
