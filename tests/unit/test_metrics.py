"""Metrics helpers against the real prometheus-client (no server needed)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Gauge

from flow8_streams.metrics import Metrics, replace_samples

LAG = "flow8_consumer_lag_messages"


def test_a_revoked_partitions_lag_leaves_the_page() -> None:
    metrics = Metrics()
    r = metrics.registry
    shown = replace_samples(metrics.consumer_lag, {("flow8.commands", "0"): 5, ("flow8.commands", "1"): 7})
    assert r.get_sample_value(LAG, {"topic": "flow8.commands", "partition": "1"}) == 7

    shown = replace_samples(metrics.consumer_lag, {("flow8.commands", "0"): 2}, shown)  # 1 went to another worker

    assert r.get_sample_value(LAG, {"topic": "flow8.commands", "partition": "0"}) == 2
    assert r.get_sample_value(LAG, {"topic": "flow8.commands", "partition": "1"}) is None
    assert shown == {("flow8.commands", "0")}


def test_a_partition_assigned_again_comes_back() -> None:
    registry = CollectorRegistry()
    gauge = Gauge("lag", "lag", ["topic", "partition"], registry=registry)
    shown = replace_samples(gauge, {("t", "0"): 1})
    shown = replace_samples(gauge, {}, shown)
    assert registry.get_sample_value("lag", {"topic": "t", "partition": "0"}) is None
    replace_samples(gauge, {("t", "0"): 3}, shown)
    assert registry.get_sample_value("lag", {"topic": "t", "partition": "0"}) == 3
