#!/usr/bin/env python3
"""The shared flow cache (``cache.backend: redis``) across two instances: hit rates, MongoDB reads, latency.

    export $(scripts/services up --redis)    # MONGODB_URI and REDIS_URL
    scripts/bench_cache.py [--flows 100] [--reads 1000] [--seed 8]

Two flow catalogs (two ``MongoStore`` instances, each with its own MongoDB client, Redis client
and metrics) on one fresh database read ``--reads`` flows each, interleaved, picked at random
(80% of the reads go to 20% of the flows) among ``--flows`` stored flows, half by version and
half "latest". It runs twice: with ``memory`` (each instance's own cache only, as before) and
with ``redis`` (the same, then Redis, then MongoDB). It prints the MongoDB reads of each run,
the shared cache's hit rate across the two instances, and the median/p95 of a read by where it
was answered. Numbers, not assertions: compare runs.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import sys
import time
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pymongo import AsyncMongoClient, monitoring

from flow8_streams.cache.redis import RedisSharedCache
from flow8_streams.domain.flow import FlowDefinition
from flow8_streams.metrics import Metrics
from flow8_streams.settings import RedisCache
from flow8_streams.stores.mongo import MongoStore


class Finds(monitoring.CommandListener):
    def __init__(self) -> None:
        self.flows = 0

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        if event.command_name == "find" and event.command.get("find") == "flows":
            self.flows += 1

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None: ...

    def failed(self, event: monitoring.CommandFailedEvent) -> None: ...


def redis_settings(url: str) -> RedisCache:
    parts = urlsplit(url)
    return RedisCache(
        host=parts.hostname or "127.0.0.1",
        port=parts.port or 6379,
        password=unquote(parts.password) if parts.password else None,
        db=int(parts.path.strip("/") or 0),
        timeout_ms=1000,
    )


def flow(i: int, version: int) -> FlowDefinition:
    return FlowDefinition.model_validate(
        {"name": f"f{i:04d}", "version": version, "flowlets": [{"name": "a", "module_ref": "echo"}]}
    )


def value(metrics: Metrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, {"cache": "flows", **labels}) or 0.0


async def run(backend: str, args: argparse.Namespace, mongo: str, redis: RedisCache | None) -> dict[str, Any]:
    database = f"bench{uuid.uuid4().hex[:10]}"
    company = f"co-{uuid.uuid4().hex[:8]}"
    instances = []
    for _ in range(2):
        finds, metrics = Finds(), Metrics()
        client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongo, event_listeners=[finds])
        shared = RedisSharedCache(redis, metrics) if redis is not None else None
        # the settings' defaults: cache.flows.ttl_seconds (300) alone, or cache.redis.local_ttl_seconds (5) with Redis
        local_ttl = 300 if redis is None else 5
        store = MongoStore(client, database, metrics=metrics, shared_cache=shared, flow_cache_ttl=local_ttl)
        instances.append((store, finds, metrics, client))
    first = instances[0][0]
    await first.open()
    try:
        for i in range(args.flows):
            for version in (1, 2):
                await first.flows.put(company, flow(i, version))
        rng = random.Random(args.seed)
        hot = max(1, args.flows // 5)
        latency: dict[str, list[float]] = {"local": [], "redis": [], "mongodb": []}
        for _ in range(args.reads):
            for store, finds, metrics, _client in instances:
                i = rng.randrange(hot) if rng.random() < 0.8 else rng.randrange(args.flows)
                version = rng.choice([None, 1, 2])
                before = (finds.flows, value(metrics, "flow8_cache_hits_total"))
                t0 = time.perf_counter()
                got = await store.flows.get(company, f"f{i:04d}", version)
                took = time.perf_counter() - t0
                assert got is not None
                where = "mongodb" if finds.flows > before[0] else "local"
                if where == "local" and value(metrics, "flow8_cache_hits_total") == before[1]:
                    where = "redis"
                latency[where].append(took)
        out: dict[str, Any] = {"backend": backend, "latency": latency}
        out["mongodb_reads"] = sum(finds.flows for _s, finds, _m, _c in instances)
        out["reads"] = 2 * args.reads
        labels = {"backend": "redis"}
        out["shared_hits"] = sum(
            value(m, "flow8_shared_cache_requests_total", outcome="hit", **labels) for _s, _f, m, _c in instances
        )
        out["shared_misses"] = sum(
            value(m, "flow8_shared_cache_requests_total", outcome="miss", **labels) for _s, _f, m, _c in instances
        )
        return out
    finally:
        await instances[0][3].drop_database(database)
        for store, _finds, _metrics, client in instances:
            await store.close()
            await client.close()


def ms(values: list[float], q: float) -> str:
    if not values:
        return "-"
    values = sorted(values)
    return f"{values[min(len(values) - 1, int(q * len(values)))] * 1000:.2f}ms"


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--flows", type=int, default=100)
    parser.add_argument("--reads", type=int, default=1000, help="reads per instance")
    parser.add_argument("--seed", type=int, default=8)
    args = parser.parse_args()
    mongo, redis_url = os.environ.get("MONGODB_URI"), os.environ.get("REDIS_URL")
    if not mongo or not redis_url:
        print(
            "bench_cache: MONGODB_URI and REDIS_URL must be set; start the servers with "
            "`export $(scripts/services up --redis)` and run it again.",
            file=sys.stderr,
        )
        return 2
    print(f"flows={args.flows} (2 versions each) instances=2 reads/instance={args.reads} seed={args.seed}")
    for backend, redis in (("memory", None), ("redis", redis_settings(redis_url))):
        r = await run(backend, args, mongo, redis)
        line = f"{backend:6s}: MongoDB reads {r['mongodb_reads']} of {r['reads']} reads"
        if backend == "redis":
            asked = r["shared_hits"] + r["shared_misses"]
            rate = r["shared_hits"] / asked if asked else 0.0
            line += f"; Redis hit rate across the 2 instances {rate:.1%} "
            line += f"({r['shared_hits']:.0f} hits of {asked:.0f} asks)"
        print(line)
        for where, took in r["latency"].items():
            if took:
                p50, p95 = ms(took, 0.5), ms(took, 0.95)
                print(f"        answered by {where:7s}: {len(took):5d} reads, p50 {p50}, p95 {p95}")
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
