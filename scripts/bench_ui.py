#!/usr/bin/env python3
"""What the web UI costs: its SVG routes under load, and its pages in Chromium.

    scripts/bench_ui.py            # a flow8 serve --db of its own

Phases:
  svg      ``--gets`` GETs, ``--clients`` at once (gzip asked), of a play's timeline and of a flow's DAG,
           for a diamond of 4 flowlets and a flow of ``--wide`` flowlets in layers of 10 that each retry
           once: requests/s, p50/p95/p99 and the bytes of one response;
  browser  ``--loads`` loads in Debian's Chromium (Playwright) of the plays list until its rows show,
           and of the wide play's page until its timeline shows: p50/p95 in ms.
Numbers, not assertions: compare runs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "scripts")]

from bench_api import FLOW as DIAMOND  # noqa: E402
from bench_api import drive, summary  # noqa: E402

from tests.api.server import make_key, serving  # noqa: E402
from tests.audit import chromium  # noqa: E402


def wide(n: int) -> dict[str, Any]:
    """``n`` flowlets in layers of 10, each depending on the whole layer before; each fails once."""
    flowlets = []
    for i in range(n):
        layer = i // 10
        deps = [f"f{j}" for j in range((layer - 1) * 10, layer * 10)] if layer else []
        flowlets.append(
            {
                "name": f"f{i}",
                "module_ref": "fail",
                "input": {"times": 1},
                "depends_on": deps,
                "retry": {"max_attempts": 2, "backoff_ms": 1},
            }
        )
    return {"flowlets": flowlets}


def setup(url: str, key: str, n: int) -> dict[str, str]:
    """The two flows and a finished play of each: their paths."""
    paths = {}
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=120) as client:
        for name, flow in (("diamond", DIAMOND), (f"wide{n}", wide(n))):
            client.put(f"/v1/flows/{name}", json=flow).raise_for_status()
            play = client.post("/v1/plays", json={"flow": name, "input": {}}).json()["play_id"]
            client.get(f"/v1/plays/{play}/wait", params={"timeout": 60}).raise_for_status()
            paths[f"timeline {name}"] = f"/v1/plays/{play}/timeline"
            paths[f"dag {name}"] = f"/v1/flows/{name}/dag"
            paths[f"play {name}"] = play
    return paths


async def svgs(url: str, key: str, paths: dict[str, str], gets: int, concurrency: int) -> list[dict[str, Any]]:
    headers = {"Authorization": f"Bearer {key}", "Accept-Encoding": "gzip"}
    limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
    results = []
    for phase, path in paths.items():
        if phase.startswith("play "):
            continue
        clients = [
            httpx.AsyncClient(base_url=url, headers=headers, limits=limits, timeout=60) for _ in range(concurrency)
        ]
        try:
            size: dict[str, int] = {}

            async def get(client: httpx.AsyncClient, i: int, path: str = path, size: dict[str, int] = size) -> None:
                async with client.stream("GET", path) as response:
                    body = b"".join([chunk async for chunk in response.aiter_raw()])
                    response.raise_for_status()
                    if i == 0:
                        size["bytes"] = len(body)

            latencies, seconds = await drive(clients, gets, get)
            results.append(summary(phase, latencies, seconds, gzipped_bytes=size["bytes"]))
        finally:
            await asyncio.gather(*(c.aclose() for c in clients))
    return results


def browser(url: str, key: str, play: str, loads: int) -> list[dict[str, Any]]:
    from playwright.sync_api import sync_playwright

    binary = chromium.find()
    if binary is None:
        return [{"phase": "browser", "skipped": "no Chromium (apt-get install chromium)"}]
    results = []
    with sync_playwright() as driver:
        launched = driver.chromium.launch(executable_path=binary, args=["--no-sandbox"] if os.geteuid() == 0 else [])
        page = launched.new_page(viewport={"width": 1366, "height": 800})
        page.goto(f"{url}/ui/")
        page.evaluate("key => sessionStorage.setItem('flow8.key', key)", key)
        for phase, hash_, ready in (
            ("page plays list", "#/plays", "#plays tbody tr[data-play]"),
            ("page wide play", f"#/plays/{play}", "#timeline svg.timeline"),
        ):
            took = []
            for _ in range(loads):
                began = time.perf_counter()
                page.goto(f"{url}/ui/{hash_}")
                page.reload()  # a whole load: document, modules, API calls
                page.wait_for_selector(ready)
                took.append(time.perf_counter() - began)
            cuts = statistics.quantiles(took, n=20, method="inclusive")
            results.append(
                {
                    "phase": phase,
                    "loads": loads,
                    "p50_ms": round(cuts[9] * 1000, 1),
                    "p95_ms": round(cuts[18] * 1000, 1),
                }
            )
        launched.close()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gets", type=int, default=1000)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--wide", type=int, default=200)
    parser.add_argument("--loads", type=int, default=20)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FLOW8_", "SERVER_"))}
    env["FLOW8_LOG_LEVEL"] = "warning"  # the access log off: a bench measures serving, not logging
    with tempfile.TemporaryDirectory() as tmp:
        cwd = Path(tmp)
        key = make_key("--db", cwd / "bench.db", company="bench", cwd=cwd, env=env)
        with serving("--db", cwd / "bench.db", cwd=cwd, env=env) as server:
            paths = setup(server.url, key, args.wide)
            results = asyncio.run(svgs(server.url, key, paths, args.gets, args.clients))
            results += browser(server.url, key, paths[f"play wide{args.wide}"], args.loads)
    for r in results:
        print(json.dumps(r) if args.json else "  ".join(f"{k}={v}" for k, v in r.items()))


if __name__ == "__main__":
    main()
