"""flow8 logs in to Kafka with SASL/SCRAM: a ``flow8 worker`` on the SCRAM listener of the
broker ``scripts/services up`` starts (KAFKA_SASL_BOOTSTRAP_SERVERS, its user in the 0600 file
KAFKA_SASL_ENV_FILE) completes a play sent and read with flow8's own clients; with a wrong
password the worker and ``flow8 produce`` stop with a message that names what to check and
never shows the password."""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import subprocess
import sys
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from flow8_streams.domain.messages import StartPlay
from flow8_streams.runtimes.streams.client import CommandProducer
from flow8_streams.stores.mongo import MongoStore
from tests.conformance.streams_harness import WorkerGroup
from tests.services import require_service
from tests.streams.support import collecting_results, fl, make_flow

pytestmark = [pytest.mark.kafka, pytest.mark.mongo, pytest.mark.slow]

FLOW = make_flow(
    "scram",
    fl("first", "echo", input={"n": "${input.n}"}),
    fl("then", "sleep", "first", input={"seconds": 0.01}),
)
LOGIN = ("KAFKA_SECURITY_PROTOCOL", "KAFKA_SASL_MECHANISM", "KAFKA_SASL_USERNAME", "KAFKA_SASL_PASSWORD")
FLOW8 = shutil.which("flow8", path=str(Path(sys.executable).parent)) or "flow8"


def scram_login() -> dict[str, str]:
    """The SCRAM listener's user as scripts/services wrote it (KAFKA_* lines of a 0600 file)."""
    path = Path(require_service("KAFKA_SASL_ENV_FILE"))
    assert path.stat().st_mode & 0o077 == 0, f"{path} is readable by others"
    pairs = (line.split("=", 1) for line in path.read_text().splitlines() if line and not line.startswith("#"))
    login = {key.strip(): value.strip() for key, value in pairs}
    assert set(LOGIN) <= login.keys(), f"{path} lacks {set(LOGIN) - login.keys()}"
    return {key: login[key] for key in LOGIN}


@dataclass(frozen=True)
class Scram:
    bootstrap: str
    login: dict[str, str] = field(repr=False)  # a failing test's report shows no password

    @property
    def password(self) -> str:
        return self.login["KAFKA_SASL_PASSWORD"]


@pytest.fixture
def scram(monkeypatch: pytest.MonkeyPatch) -> Scram:
    """The SCRAM listener and its login, which is put in this process's environment: the
    settings and the workers' environment are read from there."""
    bootstrap = require_service("KAFKA_SASL_BOOTSTRAP_SERVERS")
    login = scram_login()
    for key, value in login.items():
        monkeypatch.setenv(key, value)
    return Scram(bootstrap, login)


async def run_one_play(group: WorkerGroup) -> str:
    company = f"co-{uuid.uuid4().hex[:8]}"
    store = await MongoStore(group.settings.mongodb_uri, group.settings.mongodb_database).open()
    try:
        await store.flows.put(company, FLOW)
    finally:
        await store.close()
    play_id = str(uuid.uuid4())
    async with collecting_results(group.settings) as results:
        async with CommandProducer(group.settings) as producer:
            await producer.send(StartPlay(company_id=company, flow=FLOW.name, play_id=play_id, input={"n": 1}))
            await producer.flush()
        await results.wait_for({play_id}, timeout=60)
    return results.results[play_id].status


def test_a_worker_logged_in_with_scram_completes_a_play(scram: Scram, tmp_path: Path) -> None:
    password = scram.password
    mongodb_uri = require_service("MONGODB_URI")
    group = WorkerGroup(scram.bootstrap, mongodb_uri, tmp_path, log_level="info")
    assert group.settings.kafka_security_protocol == scram.login["KAFKA_SECURITY_PROTOCOL"] != "PLAINTEXT"
    try:
        asyncio.run(group.start())
        status = asyncio.run(run_one_play(group))
        assert status == "succeeded", status
        health = group.healthz(0)
        assert health["assigned"], health
        cmdline = Path(f"/proc/{group.pid(0)}/cmdline").read_bytes()
        assert password.encode() not in cmdline, "the password is in the worker's command line"
    finally:
        group.stop()
        asyncio.run(group.discard())
    logs = b"".join(p.read_bytes() for p in tmp_path.glob("worker-*.log"))
    assert logs, "the worker wrote no log"
    assert password.encode() not in logs, "the password is in the worker's log"


def run_flow8(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([FLOW8, *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=90, check=False)


@pytest.mark.parametrize("command", [["worker", "--no-channels"], ["produce", "--flow", "scram"]])
def test_a_wrong_password_is_refused_clearly_and_never_shown(scram: Scram, tmp_path: Path, command: list[str]) -> None:
    wrong = f"wrong-{secrets.token_urlsafe(12)}"
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("FLOW8_", "SERVER_", "CHANNEL_", "WORKER_"))},
        "KAFKA_BOOTSTRAP_SERVERS": scram.bootstrap,
        "KAFKA_SASL_PASSWORD": wrong,
        "MONGODB_URI": require_service("MONGODB_URI"),
        "MONGODB_DATABASE": f"t{uuid.uuid4().hex[:10]}",
        "FLOW8_TOPICS__PREFIX": f"t{uuid.uuid4().hex[:10]}",
        "FLOW8_DATA_DIR": str(tmp_path / "data"),
    }
    done = run_flow8(command, env, tmp_path)
    output = done.stdout + done.stderr
    assert done.returncode != 0, output
    assert wrong not in output and scram.password not in output, "a password is in the output"
    assert "Traceback" not in output, output
    assert "KAFKA_SASL_PASSWORD" in output, output
    assert "Authentication failed" in output, output
