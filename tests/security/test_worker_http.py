"""A worker's HTTP port serves what flow8 means to serve and nothing of faust's: ``/metrics``,
``/healthz`` (live: the worker's loop answers) and ``/readyz`` (Kafka and MongoDB answer a
ping and the worker has partitions; 503 naming the failing check otherwise).

The worker here runs on a FerretDB of its own (the binary scripts/services built, on a free
port, with its own data folder), so the test can stop its MongoDB without touching the shared
one.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import orjson
import pytest
from pymongo import MongoClient
from pymongo.errors import PyMongoError

from flow8_streams.runtimes.streams.launcher import free_port
from tests.conformance.streams_harness import WorkerGroup, metric
from tests.services import require_service

pytestmark = [pytest.mark.kafka, pytest.mark.mongo, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
FAUST_PAGES = (
    "/",
    "/router",
    "/router/",
    "/table",
    "/table/plays",
    "/table/plays/x",
    "/graph",
    "/stats",
    "/performance",
)
STATE_CHANGE_S = 20.0  # a guard: a readiness change not seen in this long fails the test


def ferretdb_binary() -> Path:
    services = Path(os.environ.get("FLOW8_SERVICES_DIR") or REPO / ".services")
    binary = services / "bin" / "ferretdb"
    if not binary.is_file():
        message = f"no FerretDB binary at {binary}: run `scripts/services up` (or set FLOW8_SERVICES_DIR)"
        if os.environ.get("FLOW8_REQUIRE_SERVICES") == "1":
            pytest.fail(message)
        pytest.skip(message)
    return binary


class PrivateFerretDB:
    """One FerretDB process on a port and a data folder of its own; stop and start it at will."""

    def __init__(self, binary: Path, data: Path) -> None:
        self.binary = binary
        self.data = data
        self.port = free_port()
        self.uri = f"mongodb://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.data.mkdir(parents=True, exist_ok=True)
        log = open(self.data.parent / "ferretdb.log", "ab")  # noqa: SIM115  # the child holds it
        with log:
            self.process = subprocess.Popen(
                [
                    str(self.binary),
                    "--handler=sqlite",
                    f"--sqlite-url=file:{self.data}/",
                    f"--listen-addr=127.0.0.1:{self.port}",
                    "--telemetry=disable",
                    "--log-level=error",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        deadline = time.monotonic() + 30
        with MongoClient(self.uri, serverSelectionTimeoutMS=500) as client:
            while True:
                try:
                    client.admin.command("ping")
                    return
                except PyMongoError:
                    if self.process.poll() is not None or time.monotonic() > deadline:
                        raise
                time.sleep(0.1)  # another process's start-up: nothing to await but its port

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
            self.process = None


@pytest.fixture(scope="module")
def ferretdb(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateFerretDB]:
    server = PrivateFerretDB(ferretdb_binary(), tmp_path_factory.mktemp("ferretdb") / "data")
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def worker(ferretdb: PrivateFerretDB, tmp_path_factory: pytest.TempPathFactory) -> Iterator[WorkerGroup]:
    kafka = require_service("KAFKA_BOOTSTRAP_SERVERS")
    group = WorkerGroup(kafka, ferretdb.uri, tmp_path_factory.mktemp("worker"))
    try:
        asyncio.run(group.start())
        yield group
    finally:
        group.stop()
        with contextlib.suppress(Exception):
            asyncio.run(group.discard())


def get(group: WorkerGroup, path: str) -> tuple[int, Any]:
    """(status, body) of GET ``path``, the body parsed when it is JSON."""
    url = f"http://127.0.0.1:{group.port(0)}{path}"
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            status, body, kind = response.status, response.read(), response.headers.get("Content-Type", "")
    except urllib.error.HTTPError as error:
        status, body, kind = error.code, error.read(), error.headers.get("Content-Type", "")
    return status, orjson.loads(body) if kind.startswith("application/json") else body


def await_readyz(group: WorkerGroup, status: int) -> Any:
    """Poll /readyz until it answers ``status`` (bounded); returns that body."""
    deadline = time.monotonic() + STATE_CHANGE_S
    while True:
        got, body = get(group, "/readyz")
        if got == status:
            return body
        assert time.monotonic() < deadline, f"/readyz still {got} after {STATE_CHANGE_S} s: {body}"
        time.sleep(0.2)  # the worker's view of another process: polled, with a deadline


def test_faust_pages_are_not_served_and_each_refusal_is_counted(worker: WorkerGroup) -> None:
    before = metric(worker.metrics(0), "flow8_http_refused_total", status="404")
    for path in FAUST_PAGES:
        status, body = get(worker, path)
        assert status == 404, f"{path} answered {status}: {body!r}"
    assert metric(worker.metrics(0), "flow8_http_refused_total", status="404") - before == len(FAUST_PAGES)
    for path in ("/metrics", "/healthz", "/readyz"):
        assert get(worker, path)[0] == 200, path


def test_readyz_names_each_check_and_caches_them(worker: WorkerGroup) -> None:
    body = await_readyz(worker, 200)
    assert body["status"] == "ready"
    assert body["worker"].startswith(worker.name)
    checks = body["checks"]
    assert set(checks) == {"kafka", "mongodb", "partitions"}
    assert all(check["ok"] for check in checks.values()), checks
    assert checks["partitions"]["assigned"] >= worker.settings.topics.partitions

    # a burst of scrapes shares the checks: at most one new set per cache period (1.5 s)
    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=8) as pool:
        bodies = list(pool.map(lambda _: get(worker, "/readyz")[1], range(40)))
    elapsed = time.monotonic() - started
    distinct = {orjson.dumps(b["checks"], option=orjson.OPT_SORT_KEYS) for b in bodies}
    assert len(distinct) <= 1 + int(elapsed / 1.5) + 1, (len(distinct), elapsed)


def test_readyz_is_503_naming_mongodb_while_it_is_stopped_and_healthz_stays_live(
    worker: WorkerGroup, ferretdb: PrivateFerretDB
) -> None:
    await_readyz(worker, 200)
    ferretdb.stop()
    try:
        body = await_readyz(worker, 503)
        assert body["status"] == "not_ready"
        assert body["failing"] == ["mongodb"], body
        assert body["checks"]["kafka"]["ok"] is True
        assert body["checks"]["mongodb"]["ok"] is False and body["checks"]["mongodb"]["error"]
        assert body["checks"]["partitions"]["ok"] is True
        status, health = get(worker, "/healthz")
        assert (status, health["status"]) == (200, "ok")
    finally:
        ferretdb.start()
    assert await_readyz(worker, 200)["status"] == "ready"
