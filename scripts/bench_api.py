#!/usr/bin/env python3
"""What the HTTP API serves: requests/s and latency percentiles of ``flow8 serve``.

    scripts/bench_api.py                                   # a flow8 serve --db of its own (embedded)
    scripts/bench_api.py --streams                         # a worker and a flow8 serve --streams of its own
    scripts/bench_api.py --streams --compare               # and flow8 bench --runtime streams first, and the ratios
    scripts/bench_api.py --url http://H:P --key f8k_...   # a server already running

Phases, over concurrent clients (httpx, one connection each):
  start    ``--plays`` plays of the 4-flowlet diamond of ``flow8 bench``, each started (POST /v1/plays) and awaited
           (GET /v1/plays/{id}/wait), once per ``--in-flight`` level (that many clients, so that many plays in
           flight): starts/s, and the start-to-result latency per play;
  get      ``--gets`` GETs of one finished play by ``--clients`` clients, with ``Accept-Encoding: gzip`` and without:
           requests/s, p50/p95/p99, the bytes of one response and (for a server of its own) the
           server's CPU per request, a figure the machine's other load does not move much.
It prints one line per phase (``--json``: one JSON object). Numbers, not assertions: compare runs.
``--compare`` (with ``--streams``) runs ``flow8 bench --runtime streams`` at each ``--in-flight`` level
first, on the same machine, and prints the API's start-to-result figures as ratios of the Kafka path's
(absolute figures move with the machine's load; ratios of runs made back to back move less).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from flow8_streams.bench import DIAMOND  # noqa: E402
from tests.api.server import Server, make_key, serving  # noqa: E402  (the tests' own server runner)

FLOW = DIAMOND.model_dump(mode="json", exclude={"name", "version"}, exclude_none=True)


def summary(name: str, latencies: list[float], seconds: float, **more: Any) -> dict[str, Any]:
    cuts = statistics.quantiles(latencies, n=100, method="inclusive")
    return {
        "phase": name,
        "requests": len(latencies),
        "per_second": round(len(latencies) / seconds, 1),
        "p50_ms": round(cuts[49] * 1000, 2),
        "p95_ms": round(cuts[94] * 1000, 2),
        "p99_ms": round(cuts[98] * 1000, 2),
        **more,
    }


async def drive(
    clients: list[httpx.AsyncClient], count: int, one: Callable[[httpx.AsyncClient, int], Awaitable[None]]
) -> tuple[list[float], float]:
    """``count`` calls of ``one`` spread over the clients, each client one at a time: (latencies, seconds)."""
    latencies: list[float] = []
    next_index = iter(range(count))

    async def worker(client: httpx.AsyncClient) -> None:
        for i in next_index:
            began = time.perf_counter()
            await one(client, i)
            latencies.append(time.perf_counter() - began)

    began = time.perf_counter()
    await asyncio.gather(*(worker(c) for c in clients))
    return latencies, time.perf_counter() - began


def cpu_seconds(pid: int | None) -> float:
    """User + system CPU time of process ``pid`` (0 when not known or not on Linux)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def bench(
    url: str, key: str, plays: int, gets: int, concurrency: int, in_flight: list[int], server_pid: int | None = None
) -> list[dict[str, Any]]:
    headers = {"Authorization": f"Bearer {key}"}
    limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)

    def make(encoding: str, count: int = concurrency) -> list[httpx.AsyncClient]:
        return [
            httpx.AsyncClient(base_url=url, headers={**headers, "Accept-Encoding": encoding}, limits=limits, timeout=60)
            for _ in range(count)
        ]

    results = []
    flow = f"bench-{uuid.uuid4().hex[:8]}"
    clients = make("identity", max(in_flight))
    try:
        (await clients[0].put(f"/v1/flows/{flow}", json=FLOW)).raise_for_status()
        ids: list[str] = []

        async def start_and_wait(client: httpx.AsyncClient, i: int) -> None:
            started = await client.post("/v1/plays", json={"flow": flow, "input": {"i": i}})
            started.raise_for_status()
            play_id = started.json()["play_id"]
            done = await client.get(f"/v1/plays/{play_id}/wait", params={"timeout": 60})
            done.raise_for_status()
            ids.append(play_id)

        for level in in_flight:
            latencies, seconds = await drive(clients[:level], plays, start_and_wait)
            results.append(summary(f"start+result x{level}", latencies, seconds, in_flight=level))
        path = f"/v1/plays/{ids[0]}"
        for encoding in ("identity", "gzip", "identity", "gzip"):  # alternated: a machine's load drifts
            readers = make(encoding)
            try:
                first: dict[str, int] = {}

                async def get(client: httpx.AsyncClient, i: int, first: dict[str, int] = first) -> None:
                    async with client.stream("GET", path) as response:
                        body = b"".join([chunk async for chunk in response.aiter_raw()])
                        response.raise_for_status()
                        if i == 0:
                            first["bytes"] = len(body)
                            first["gzipped"] = int(response.headers.get("content-encoding") == "gzip")

                cpu = cpu_seconds(server_pid)
                latencies, seconds = await drive(readers, gets, get)
                cpu_ms = round((cpu_seconds(server_pid) - cpu) * 1000 / gets, 3) if server_pid else None
                results.append(
                    summary(
                        f"get play ({encoding})",
                        latencies,
                        seconds,
                        bytes=first["bytes"],
                        gzipped=bool(first["gzipped"]),
                        server_cpu_ms=cpu_ms,
                    )
                )
            finally:
                await asyncio.gather(*(c.aclose() for c in readers))
    finally:
        await asyncio.gather(*(c.aclose() for c in clients))
    return results


async def run(server: Server, key: str, args: argparse.Namespace) -> list[dict[str, Any]]:
    return await bench(server.url, key, args.plays, args.gets, args.clients, args.in_flight, server.proc.pid)


def own_server(cwd: Path, args: argparse.Namespace) -> list[dict[str, Any]]:
    """The bench on a ``flow8 serve`` of its own: ``--db`` in ``cwd``, or ``--streams`` with one worker."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FLOW8_", "SERVER_"))}
    env["FLOW8_LOG_LEVEL"] = "warning"  # the access log off: a bench measures serving, not logging
    if not args.streams:
        key = make_key("--db", cwd / "bench.db", company="bench", cwd=cwd, env=env)
        with serving("--db", cwd / "bench.db", cwd=cwd, env=env) as server:
            return asyncio.run(run(server, key, args))
    from tests.conformance.streams_harness import WorkerGroup  # the launcher's, with discard()

    group = WorkerGroup(os.environ["KAFKA_BOOTSTRAP_SERVERS"], os.environ["MONGODB_URI"], cwd / "workers")
    asyncio.run(group.start())
    try:
        env |= {
            "MONGODB_DATABASE": group.name,
            "FLOW8_TOPICS__PREFIX": group.name,
        }
        key = make_key("--mongodb", company="bench", cwd=cwd, env=env)
        with serving("--streams", cwd=cwd, env=env) as server:
            return asyncio.run(run(server, key, args))
    finally:
        group.stop()
        asyncio.run(group.discard())


def kafka_path(plays: int, in_flight: list[int]) -> dict[int, dict[str, Any]]:
    """``flow8 bench --runtime streams --json`` at each level: the Kafka path's own figures."""
    figures = {}
    for level in in_flight:
        done = subprocess.run(
            [str(REPO / ".venv/bin/flow8"), "bench", "--runtime", "streams", "--plays", str(plays),
             "--concurrency", str(level), "--json"],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        figures[level] = json.loads(done.stdout.strip().splitlines()[-1])
    return figures


def ratios(api: list[dict[str, Any]], kafka: dict[int, dict[str, Any]]) -> list[dict[str, Any]]:
    """The API's start-to-result over the Kafka path's, per level (1.0: as fast; plays/s above 1 is faster)."""
    rows = []
    for r in api:
        level = r.get("in_flight")
        if level in kafka:
            k = kafka[level]
            rows.append({
                "phase": f"kafka path x{level}",
                "kafka_plays_per_s": k["plays_per_s"], "kafka_p50_ms": k["p50_ms"], "kafka_p99_ms": k["p99_ms"],
                "api_over_kafka_per_s": round(r["per_second"] / k["plays_per_s"], 2),
                "api_over_kafka_p50": round(r["p50_ms"] / k["p50_ms"], 2),
            })  # fmt: skip
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", help="A running flow8 serve (default: start one on a db of its own).")
    parser.add_argument("--key", default=os.environ.get("FLOW8_API_KEY"), help="Its API key (or $FLOW8_API_KEY).")
    parser.add_argument("--plays", type=int, default=500)
    parser.add_argument("--gets", type=int, default=5000)
    parser.add_argument("--clients", type=int, default=16, help="Concurrent clients of the GET phases.")
    parser.add_argument(
        "--in-flight",
        type=lambda text: [int(n) for n in text.split(",")],
        default=[1, 50],
        help="Plays in flight in the start phases, comma-separated (default 1,50).",
    )
    parser.add_argument(
        "--compare", action="store_true", help="flow8 bench --runtime streams first, at each --in-flight level."
    )
    parser.add_argument(
        "--streams", action="store_true", help="Kafka + MongoDB of $KAFKA_BOOTSTRAP_SERVERS, $MONGODB_URI."
    )
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    kafka = kafka_path(args.plays, args.in_flight) if args.compare else {}
    if args.url:
        if not args.key:
            parser.error("--url needs --key (or $FLOW8_API_KEY)")
        results = asyncio.run(bench(args.url, args.key, args.plays, args.gets, args.clients, args.in_flight))
    else:
        with tempfile.TemporaryDirectory() as tmp:
            results = own_server(Path(tmp), args)
    for r in results + ratios(results, kafka):
        if args.json:
            print(json.dumps(r))
        else:
            extra = {
                k: v for k, v in r.items() if k not in {"phase", "requests", "per_second", "p50_ms", "p95_ms", "p99_ms"}
            }
            if "requests" not in r:
                print(f"{r['phase']:<22} {extra}")
                continue
            print(
                f"{r['phase']:<22} {r['requests']:>6} requests  {r['per_second']:>8.1f}/s  "
                f"p50 {r['p50_ms']:>7.2f} ms  p95 {r['p95_ms']:>7.2f} ms  p99 {r['p99_ms']:>7.2f} ms  {extra}"
            )


if __name__ == "__main__":
    main()
