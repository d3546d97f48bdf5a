"""The shared cache port without a Redis server: keys, the in-process implementation, the settings'
choice, and a Redis that refuses connections (nothing listens): answered as "not cached", counted."""

from __future__ import annotations

import logging
import socket

import pytest

from flow8_streams.cache import MAX_VALUE_BYTES, MemoryCache, key, shared_flow_cache
from flow8_streams.metrics import Metrics
from flow8_streams.settings import RedisCache, Settings


def test_keys_are_per_tenant_and_a_part_cannot_forge_another() -> None:
    assert key("flows", "acme", "billing", "v3") == "flow8:flows:acme:billing:v3"
    assert key("flows", "a:b", "c") != key("flows", "a", "b:c")
    assert key("flows", "a:b", "c") == "flow8:flows:a%3Ab:c"


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


async def test_the_memory_cache_keeps_a_value_for_its_ttl() -> None:
    clock = Clock()
    cache = MemoryCache(clock=clock)
    await cache.set("flows", "k", b"v", ttl=10)
    await cache.set("flows", "big", b"x" * (MAX_VALUE_BYTES + 1), ttl=10)
    assert (await cache.get("flows", "k"), await cache.get("flows", "big")) == (b"v", None)
    clock.now = 11
    assert await cache.get("flows", "k") is None
    await cache.set("flows", "k", b"w", ttl=10)
    await cache.delete("flows", "k")
    assert await cache.get("flows", "k") is None


def test_memory_is_the_default_and_keeps_the_five_minute_flow_cache() -> None:
    options = shared_flow_cache(Settings())
    assert options["shared_cache"] is None and options["flow_cache_ttl"] == 300


async def test_redis_shortens_each_instances_own_cache_and_hides_the_password() -> None:
    pytest.importorskip("redis", reason="the redis package (the `redis` extra) is not installed")
    settings = Settings.model_validate({"cache": {"backend": "redis", "redis": {"password": "pw-not-shown-1"}}})
    options = shared_flow_cache(settings)
    try:
        assert options["flow_cache_ttl"] == 5 and options["shared_latest_ttl"] == 30
        assert "pw-not-shown-1" not in repr(options["shared_cache"])
    finally:
        await options["shared_cache"].close()


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])  # nothing listens once the socket is closed


async def test_a_redis_nobody_answers_is_a_miss_counted_as_an_error(caplog: pytest.LogCaptureFixture) -> None:
    pytest.importorskip("redis", reason="the redis package (the `redis` extra) is not installed")
    from flow8_streams.cache.redis import RedisSharedCache

    metrics = Metrics()
    cache = RedisSharedCache(RedisCache(port=_closed_port(), password="pw-not-shown-2"), metrics)
    try:
        with caplog.at_level(logging.WARNING, logger="flow8.cache"):
            assert await cache.get("flows", "k") is None
            await cache.set("flows", "k", b"v", ttl=1)
            await cache.delete("flows", "k")
    finally:
        await cache.close()
    labels = {"cache": "flows", "backend": "redis", "reason": "unavailable"}
    assert metrics.registry.get_sample_value("flow8_cache_errors_total", labels) == 3
    assert len(caplog.records) == 1 and "unavailable" in caplog.records[0].getMessage()
    assert "pw-not-shown-2" not in caplog.text and caplog.records[0].exc_info is None
