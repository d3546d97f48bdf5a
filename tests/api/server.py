"""A real ``flow8 serve`` subprocess on a free loopback port, and keys made with ``flow8 keys create``."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import httpx

from tests.flow8_cli import FLOW8, run

if TYPE_CHECKING:
    from tests.conformance.streams_harness import WorkerGroup

READY_SECONDS = 60


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def clean_env(**extra: str) -> dict[str, str]:
    """This environment without a developer's settings, plus ``extra``."""
    drop = ("FLOW8_CONFIG", "FLOW8_DB", "FLOW8_MODULES", "SERVER_PORT", "SERVER_HOST")
    return {**{k: v for k, v in os.environ.items() if k not in drop}, "NO_COLOR": "1", **extra}


@dataclass
class Server:
    url: str
    proc: subprocess.Popen[bytes]
    log: Path  # the server's stderr

    def client(self, key: str | None = None, headers: dict[str, str] | None = None) -> httpx.Client:
        auth = {"Authorization": f"Bearer {key}"} if key else {}
        return httpx.Client(base_url=self.url, headers={**auth, **(headers or {})}, timeout=30)

    def output(self) -> str:
        return self.log.read_text(errors="replace")


def wait_ready(url: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    """Poll /readyz until it answers 200 (each poll is a request that waits for its answer)."""
    deadline = time.monotonic() + READY_SECONDS
    with httpx.Client(base_url=url, timeout=5) as client:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise AssertionError(f"flow8 serve exited {proc.returncode}: {log.read_text(errors='replace')}")
            try:
                if client.get("/readyz").status_code == 200:
                    return
            except httpx.TransportError:
                pass  # not listening yet
            time.sleep(0.05)  # a poll period while the port opens: there is no event to await
    raise AssertionError(f"flow8 serve was not ready within {READY_SECONDS}s: {log.read_text(errors='replace')}")


@contextmanager
def serving(*args: str | Path, cwd: Path, env: Mapping[str, str]) -> Iterator[Server]:
    """``flow8 serve ARGS --port P`` running until the block ends (then SIGTERM, and it must exit 0)."""
    port = free_port()
    log = cwd / f"serve-{port}.log"
    with open(log, "wb") as err:
        proc = subprocess.Popen(
            [FLOW8, "serve", *map(str, args), "--host", "127.0.0.1", "--port", str(port)],
            cwd=cwd,
            env=dict(env),
            stdin=subprocess.DEVNULL,
            stdout=err,
            stderr=err,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, proc, log)
        yield Server(url, proc, log)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise
    assert code == 0, log.read_text(errors="replace")


def make_key(*store: str | Path, company: str, role: str = "member", cwd: Path, env: Mapping[str, str]) -> str:
    """A new key of ``company`` from ``flow8 keys create`` (the last line of its output)."""
    made = run("keys", "create", "--company", company, "--role", role, *store, cwd=cwd, env=env)
    assert made.code == 0, made.err
    return made.lines()[-1]


@dataclass
class Two:
    """Two ``flow8 serve --streams`` instances over one Kafka and MongoDB, and a key of each company."""

    a: Server
    b: Server
    acme: str
    globex: str


def streams_env(group: WorkerGroup) -> dict[str, str]:
    """A ``flow8 serve --streams`` over ``group``'s topics and database."""
    return clean_env(
        KAFKA_BOOTSTRAP_SERVERS=group.settings.kafka_bootstrap_servers,
        MONGODB_URI=group.settings.mongodb_uri,
        MONGODB_DATABASE=group.name,
        FLOW8_TOPICS__PREFIX=group.name,
        FLOW8_LOG_LEVEL="info",
    )
