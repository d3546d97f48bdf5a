"""The load driver of ``scripts/bench_restate``: N plays of ``Diamond/run`` at concurrency C.

Measured as ``flow8 bench`` measures flow8 (flow8_streams/bench.py): C callers each start one
play and wait for its result before the next; latency is from request to result; a warm-up
of ``--warmup`` plays at min(C, warm-up) runs first and is not counted. Prints one JSON line
with the keys of ``flow8 bench --json``. Every play carries its own idempotency key.
The client is aiohttp: the CPU a driver spends is taken from the server it measures on a small
machine, and httpx spent about 12 times aiohttp's per play (6.5 ms against 0.5 ms at
concurrency 50).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
import uuid

import aiohttp

RESULT_TIMEOUT_S = 120


def percentile(latencies_ms: list[float], p: int) -> float:
    if not latencies_ms:
        return 0.0
    if len(latencies_ms) == 1:
        return latencies_ms[0]
    return statistics.quantiles(latencies_ms, n=100, method="inclusive")[p - 1]


async def drive(client: aiohttp.ClientSession, url: str, plays: int, concurrency: int) -> dict[str, float | int]:
    run_id = uuid.uuid4().hex[:8]
    latencies: list[float] = []
    failed = 0
    next_index = 0

    async def one_at_a_time() -> None:
        nonlocal next_index, failed
        while next_index < plays:
            index = next_index
            next_index += 1
            t0 = time.perf_counter()
            try:
                async with client.post(
                    url, json={"i": index}, headers={"idempotency-key": f"b-{run_id}-{index}"}
                ) as response:
                    await response.read()
                    ok = response.status == 200
            except (aiohttp.ClientError, TimeoutError):
                ok = False
            latencies.append((time.perf_counter() - t0) * 1000)
            if not ok:
                failed += 1

    t0 = time.perf_counter()
    await asyncio.gather(*(one_at_a_time() for _ in range(max(1, min(concurrency, plays)))))
    seconds = time.perf_counter() - t0
    return {
        "plays_per_s": round(plays / seconds if seconds else 0.0, 1),
        "p50_ms": round(percentile(latencies, 50), 2),
        "p95_ms": round(percentile(latencies, 95), 2),
        "p99_ms": round(percentile(latencies, 99), 2),
        "plays": plays,
        "concurrency": concurrency,
        "seconds": round(seconds, 3),
        "failed": failed,
    }


async def main_async(args: argparse.Namespace) -> int:
    url = f"{args.ingress.rstrip('/')}/Diamond/run"
    connector = aiohttp.TCPConnector(limit=args.concurrency)
    timeout = aiohttp.ClientTimeout(total=RESULT_TIMEOUT_S)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as client:
        warm = await drive(client, url, args.warmup, min(args.concurrency, args.warmup))
        if warm["failed"]:
            print(f"drive: {warm['failed']} of {args.warmup} warm-up plays failed at {url}", file=sys.stderr)
            return 1
        figures = await drive(client, url, args.plays, args.concurrency)
    print(json.dumps(figures), flush=True)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--ingress", required=True, help="Restate ingress, e.g. http://127.0.0.1:8080")
    parser.add_argument("--plays", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=50)
    args = parser.parse_args()
    if args.plays < 1 or args.concurrency < 1 or args.warmup < 1:
        parser.error("--plays, --concurrency and --warmup must be at least 1")
    return asyncio.run(main_async(args))


if __name__ == "__main__":
    sys.exit(main())
