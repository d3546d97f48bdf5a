"""Start a group of ``flow8 worker`` processes on this machine: for ``flow8 bench
--runtime streams`` and the tests. Each group has topics, a consumer group and a
database of its own, so groups never see each other's data."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path

import orjson

from flow8_streams.errors import StoreUnavailable
from flow8_streams.runtimes.streams.admin import ensure_topics
from flow8_streams.settings import Settings, load_settings

READY_TIMEOUT_S = 120.0
SETTINGS_PREFIXES = ("FLOW8_", "SERVER_", "CHANNEL_", "WORKER_")  # environment variables the settings read


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class WorkerGroup:
    """N ``flow8 worker`` processes in one consumer group."""

    ready_timeout_s = READY_TIMEOUT_S

    def __init__(
        self,
        kafka: str,
        mongodb_uri: str,
        workdir: Path,
        *,
        count: int = 1,
        name: str | None = None,
        log_level: str = "warning",
        extra_env: dict[str, str] | None = None,
        worker_env: Callable[[int], dict[str, str]] | None = None,
        inherit_settings: bool = False,
    ) -> None:
        """``extra_env`` goes to every worker, ``worker_env(i)`` to the i-th. The workers take
        this process's ``FLOW8_*`` settings (commit interval, concurrency, ...) only when
        ``inherit_settings``: tests keep a developer's environment out of them."""
        self.name = name or f"t{uuid.uuid4().hex[:10]}"
        self.workdir = workdir
        self.count = count
        self.worker_env = worker_env
        self.env = {
            **{k: v for k, v in os.environ.items() if inherit_settings or not k.startswith(SETTINGS_PREFIXES)},
            "KAFKA_BOOTSTRAP_SERVERS": kafka,
            "MONGODB_URI": mongodb_uri,
            "MONGODB_DATABASE": self.name,
            "FLOW8_TOPICS__PREFIX": self.name,
            "FLOW8_GROUP_ID": self.name,
            "FLOW8_DATA_DIR": str(workdir / "data"),
            "FLOW8_LOG_LEVEL": log_level,
            "FLOW8_CHANNELS": "0",  # N workers on one machine cannot share one channel port range
            **(extra_env or {}),
        }
        self.settings: Settings = load_settings(
            kafka_bootstrap_servers=kafka,
            mongodb_uri=mongodb_uri,
            mongodb_database=self.name,
            topics={"prefix": self.name},
            group_id=self.name,
        )
        self.processes: list[tuple[subprocess.Popen[bytes], int]] = []
        self.generation = 0

    async def start(self, count: int | None = None) -> None:
        """Start ``count`` (default: the group's size) workers and wait until the
        group owns every partition."""
        await ensure_topics(self.settings)
        self.workdir.mkdir(parents=True, exist_ok=True)
        flow8 = shutil.which("flow8", path=str(Path(sys.executable).parent)) or "flow8"
        self.generation += 1
        for i in range(self.count if count is None else count):
            port = free_port()
            env = {**self.env, "SERVER_PORT": str(port), "WORKER_ID": f"{self.name}-w{i}-g{self.generation}"}
            if self.worker_env is not None:
                env.update(self.worker_env(i))
            with open(self.workdir / f"worker-{i}-g{self.generation}.log", "wb") as log:
                proc = subprocess.Popen([flow8, "worker"], env=env, stdout=log, stderr=subprocess.STDOUT)
            self.processes.append((proc, port))
        await self.wait_ready()

    def assigned_by_worker(self) -> list[set[str]]:
        """The partitions each running worker says it owns (from its /healthz); a worker
        that does not answer yet is left out."""
        shares: list[set[str]] = []
        for proc, port in self.processes:
            if proc.poll() is not None:
                raise StoreUnavailable(f"a worker exited with {proc.returncode}; its log is in {self.workdir}")
            url = f"http://127.0.0.1:{port}/healthz"
            with contextlib.suppress(OSError, ValueError), urllib.request.urlopen(url, timeout=1) as response:
                shares.append(set(orjson.loads(response.read())["assigned"]))
        return shares

    def assigned(self) -> set[str]:
        """Partitions the running workers say they own."""
        return set().union(*self.assigned_by_worker())

    def command_partitions(self) -> set[str]:
        """The group's command partitions, named as /healthz names them."""
        commands = self.settings.topics.commands
        return {f"{commands}[{p}]" for p in range(self.settings.topics.partitions)}

    def ready(self) -> bool:
        """Every worker answers /healthz and the group has assigned all command partitions,
        each to one worker, and (when there are enough) some to every worker: the group
        settled. (Owning them all is not enough: a worker that joins late rebalances the
        group in the middle of what comes next.)"""
        want = self.command_partitions()
        shares = [share & want for share in self.assigned_by_worker()]
        assigned = set().union(*shares)
        settled = len(shares) == len(self.processes) and sum(map(len, shares)) == len(assigned)
        if len(self.processes) <= len(want):
            settled = settled and all(shares)
        return want <= assigned and settled

    async def wait_ready(self) -> None:
        deadline = time.monotonic() + self.ready_timeout_s
        while not self.ready():
            if time.monotonic() > deadline:
                raise StoreUnavailable(f"workers not ready after {self.ready_timeout_s:.0f} s; logs in {self.workdir}")
            await asyncio.sleep(0.2)  # another process's readiness: there is no event to await

    def ports(self) -> list[int]:
        return [port for _, port in self.processes]

    def kill(self, index: int | None = None) -> None:
        """``kill -9`` one worker (or all)."""
        victims = self.processes if index is None else [self.processes[index]]
        for proc, _ in victims:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGKILL)
            proc.wait()
        self.processes = [p for p in self.processes if p not in victims]

    def stop(self, index: int | None = None) -> list[int]:
        """Stop one worker (or all) gracefully: SIGTERM, then ``kill -9`` after 20 s. Returns
        their exit codes (0: a clean stop; -9: killed)."""
        stopping = self.processes if index is None else [self.processes[index]]
        for proc, _ in stopping:
            with contextlib.suppress(ProcessLookupError):
                proc.terminate()
        codes = []
        for proc, _ in stopping:
            try:
                codes.append(proc.wait(timeout=20))
            except subprocess.TimeoutExpired:
                proc.kill()
                codes.append(proc.wait())
        self.processes = [p for p in self.processes if p not in stopping]
        return codes
