"""A worker's HTTP port: ``/healthz`` (JSON) and ``/metrics`` (Prometheus text)."""

from __future__ import annotations

import time
import uuid

import pytest

from flow8_streams.domain.messages import StartPlay
from tests.conformance.streams_harness import Sample, StreamsHarness, WorkerGroup, metric

from .support import fl, make_flow

pytestmark = [pytest.mark.kafka, pytest.mark.mongo, pytest.mark.slow]

PLAYS = 3
FLOW = make_flow(
    "observed",
    fl("first", "echo", input={"n": "${input.n}"}),
    fl("nap", "sleep", "first", input={"seconds": 0.01}),
)


def delta(after: dict[Sample, float], before: dict[Sample, float], name: str, **labels: str) -> float:
    return metric(after, name, **labels) - metric(before, name, **labels)


def test_healthz_says_ok_and_lists_the_assigned_partitions(worker_group: WorkerGroup) -> None:
    content_type, _ = worker_group.get(0, "/healthz")
    assert content_type.startswith("application/json"), content_type
    health = worker_group.healthz(0)
    assert health["status"] == "ok"
    assert health["worker"].startswith(worker_group.name)
    topics = worker_group.settings.topics
    for topic in (topics.commands, topics.completions, topics.tasks, topics.events):
        owned = {tp for tp in health["assigned"] if tp.startswith(f"{topic}[")}
        assert owned == {f"{topic}[{p}]" for p in range(topics.partitions)}, (topic, health["assigned"])


async def test_metrics_count_what_the_worker_did(harness: StreamsHarness, worker_group: WorkerGroup) -> None:
    company = f"co-{uuid.uuid4().hex[:8]}"
    await harness.store.flows.put(company, FLOW)
    before = worker_group.metrics(0)
    play_ids = [str(uuid.uuid4()) for _ in range(PLAYS)]
    for n, play_id in enumerate(play_ids):
        # no flow_version: each StartPlay asks the catalog for the latest version, through the cache
        await harness.producer.send(StartPlay(company_id=company, flow=FLOW.name, play_id=play_id, input={"n": n}))
    await harness.producer.flush()
    for play_id in play_ids:
        state = await harness.wait(play_id)
        assert state.status.value == "succeeded", state.error

    content_type, body = worker_group.get(0, "/metrics")
    assert content_type.startswith("text/plain"), content_type
    text = body.decode()
    for name in (
        "flow8_plays_started_total",
        "flow8_plays_finished_total",
        "flow8_flowlet_duration_seconds",
        "flow8_play_duration_seconds",
        "flow8_cache_hits_total",
        "flow8_cache_misses_total",
        "flow8_consumer_lag_messages",
    ):
        assert f"\n{name}" in text, name
    after = worker_group.metrics(0)

    assert delta(after, before, "flow8_plays_started_total") == PLAYS
    assert delta(after, before, "flow8_plays_finished_total", status="succeeded") == PLAYS
    assert delta(after, before, "flow8_plays_finished_total", status="failed") == 0
    assert delta(after, before, "flow8_play_duration_seconds_count", status="succeeded") == PLAYS
    assert delta(after, before, "flow8_play_duration_seconds_sum", status="succeeded") > 0
    # one attempt of each flowlet per play: the inline module and the one an executor ran
    for module in ("echo", "sleep"):
        assert delta(after, before, "flow8_flowlet_duration_seconds_count", module=module, outcome="ok") == PLAYS
    # sleep(0.01) each (an event loop's timer may fire a little early)
    assert delta(after, before, "flow8_flowlet_duration_seconds_sum", module="sleep", outcome="ok") >= PLAYS * 0.008
    # the flow catalog cache: the company's first StartPlay misses, the later ones hit
    assert delta(after, before, "flow8_cache_misses_total", cache="flows") == 1
    assert delta(after, before, "flow8_cache_hits_total", cache="flows") == PLAYS - 1


def test_consumer_lag_is_reported_per_partition_and_drains(worker_group: WorkerGroup) -> None:
    commands = worker_group.settings.topics.commands
    partitions = {str(p) for p in range(worker_group.settings.topics.partitions)}
    deadline = time.monotonic() + 20
    while True:
        samples = worker_group.metrics(0)
        lag = {
            dict(labels)["partition"]: value
            for (name, labels), value in samples.items()
            if name == "flow8_consumer_lag_messages" and dict(labels)["topic"] == commands
        }
        assert lag.keys() == partitions, lag
        assert all(value >= 0 for value in lag.values()), lag
        if sum(lag.values()) == 0 or time.monotonic() > deadline:
            break
        time.sleep(0.2)  # the gauge is computed when /metrics is read: nothing to await
    assert sum(lag.values()) == 0, f"an idle worker still reports a lag on {commands}: {lag}"
