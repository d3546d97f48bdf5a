"""Extras: ``pip install flow8-streams`` gives the embedded runtime, the CLI and the Kafka client,
without the streams runtime's worker stack (faust, pymongo, ...); ``[streams]`` adds it. A command
that needs the stack on an install without it exits 2 with the pip command to run.

The slow test installs the built wheel without extras into a fresh venv; the others hide the stack
from a real ``flow8`` process of this venv (``sys.modules[name] = None``: the import machinery's own
way to make a module unimportable)."""

from __future__ import annotations

import asyncio
import json
import os
import pkgutil
import secrets
import subprocess
import sys
import tomllib
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

import flow8_streams
from flow8_streams.client import kafka_settings
from flow8_streams.extras import STREAMS_INSTALL, STREAMS_STACK
from flow8_streams.runtimes.streams.admin import ensure_topics
from flow8_streams.runtimes.streams.codec import decode_command
from tests.services import require_service
from tests.test_install import RUNTIME_LOCK
from tests.wheel import build_wheel, fresh_venv, pip_install

REPO = Path(__file__).resolve().parent.parent
FLOW = REPO / "examples" / "process-documents.json"
MODULES = REPO / "examples" / "modules.py"
# A password the refusal must not print; nothing listens on port 1, and nothing may try to.
MONGODB_URI = "mongodb://flow8:s3cret-pw@127.0.0.1:1/flow8"
# The modules that import the streams stack when imported: only the worker's path reaches them.
STREAMS_ONLY = {
    "flow8_streams.stores.mongo",
    "flow8_streams.runtimes.streams.app",
    "flow8_streams.runtimes.streams.claims",
    "flow8_streams.runtimes.streams.deadletters",
    "flow8_streams.runtimes.streams.executor",
    "flow8_streams.runtimes.streams.kafka",  # faust's subclasses and the transactions they run
    "flow8_streams.runtimes.streams.orchestrator",
    "flow8_streams.runtimes.streams.projector",
    "flow8_streams.runtimes.streams.retrying",
    "flow8_streams.runtimes.streams.table",
    "flow8_streams.runtimes.streams.timers",
    "flow8_streams.runtimes.streams.web",
}
# Each command that needs the stack: its arguments, the environment it needs it in, how the refusal names it.
READING_MONGODB = "reading the streams runtime's MongoDB ($MONGODB_URI is set, --db is not)"
NEEDS_STREAMS = {
    "worker": (["worker"], {}, "flow8 worker"),
    "flows put": (["flows", "put", str(FLOW)], {}, "flow8 flows put"),
    "flows get": (["flows", "get", "process-documents"], {}, "flow8 flows get"),
    "plays list": (["plays", "list"], {"MONGODB_URI": MONGODB_URI}, READING_MONGODB),
    "plays show": (["plays", "show", "p-1"], {"MONGODB_URI": MONGODB_URI}, READING_MONGODB),
    "kv get": (["kv", "get", "k"], {"MONGODB_URI": MONGODB_URI}, READING_MONGODB),
    "plays cancel": (
        ["plays", "cancel", "p-1", "--company", "acme"],
        {"MONGODB_URI": MONGODB_URI},
        "flow8 plays cancel with $MONGODB_URI",
    ),
    "bench streams": (["bench", "--runtime", "streams", "--plays", "1", "--json"], {}, "flow8 bench --runtime streams"),
}


def _project() -> dict[str, list[str]]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    return {"dependencies": project["dependencies"], **project["optional-dependencies"]}


def _names(texts: list[str]) -> set[str]:
    return {canonicalize_name(Requirement(text).name) for text in texts}


def _env(**extra: str) -> dict[str, str]:
    """The test's environment without the settings a developer's shell may carry."""
    drop = ("MONGODB_URI", "KAFKA_BOOTSTRAP_SERVERS", "FLOW8_CONFIG", "FLOW8_DB", "FLOW8_MODULES")
    return {**{k: v for k, v in os.environ.items() if k not in drop}, "NO_COLOR": "1", "COLUMNS": "200", **extra}


def assert_refused(done: subprocess.CompletedProcess[str], what: str) -> None:
    """Exit 2, one paragraph naming what is missing and the pip command; no traceback, no password."""
    shown = done.stdout + done.stderr
    assert done.returncode == 2, shown
    assert done.stdout == "", shown
    message = done.stderr.strip()
    assert message.startswith(f"error: {what} needs the streams runtime's packages"), shown
    assert "faust-streaming" in message and "pymongo" in message, shown
    assert message.endswith(f"install them with: {STREAMS_INSTALL}"), shown
    assert "\n\n" not in message and "Traceback" not in shown, shown
    assert "s3cret-pw" not in shown, shown


# -- what is declared --


def test_the_streams_extra_is_what_the_refusal_checks_and_the_base_lacks_it() -> None:
    declared = _project()
    assert _names(declared["streams"]) == set(STREAMS_STACK)
    assert not _names(declared["dependencies"]) & set(STREAMS_STACK)
    # the client and the embedded runtime stay in the base
    assert {"aiokafka", "pydantic", "typer", "uvloop"} <= _names(declared["dependencies"])
    # the tests need the worker's stack
    assert "flow8-streams[streams]" in declared["test"]


# -- the stack hidden from a process of this venv --


def hidden_stack_run(code: str, *argv: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """``python -c code argv...`` in this venv with the streams stack unimportable."""
    hide = f"import sys\nfor _m in {sorted(STREAMS_STACK.values())!r}: sys.modules[_m] = None\n"
    return subprocess.run(
        [sys.executable, "-c", hide + code, *argv], env=env, cwd=cwd, capture_output=True, text=True, timeout=60
    )


def test_every_module_but_the_workers_imports_without_the_stack(tmp_path: Path) -> None:
    names = [
        info.name
        for info in pkgutil.walk_packages(flow8_streams.__path__, "flow8_streams.")
        if not (info.name in STREAMS_ONLY or info.name.startswith(tuple(f"{m}." for m in STREAMS_ONLY)))
        and not info.name.endswith(".__main__")  # that one runs the command
    ]
    assert "flow8_streams.client" in names and "flow8_streams.runtimes.local" in names
    code = (
        "import importlib, json\n"
        "failed = {}\n"
        f"for name in {names!r}:\n"
        "    try:\n"
        "        importlib.import_module(name)\n"
        "    except ImportError as exc:\n"
        "        failed[name] = str(exc)\n"
        "print(json.dumps(failed))\n"
    )
    done = hidden_stack_run(code, env=_env(PYTHONPATH=str(REPO)), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {}
    # and the worker's modules do need it: the list above is not an over-wide escape hatch
    done = hidden_stack_run("import flow8_streams.stores.mongo", env=_env(), cwd=tmp_path)
    assert done.returncode == 1 and "ModuleNotFoundError" in done.stderr


@pytest.mark.parametrize("command", NEEDS_STREAMS)
def test_a_command_that_needs_the_stack_names_the_extra_to_install(command: str, tmp_path: Path) -> None:
    args, env, what = NEEDS_STREAMS[command]
    code = f"from flow8_streams.cli import main\nmain({args!r})\n"
    done = hidden_stack_run(code, env=_env(**env), cwd=tmp_path)
    assert_refused(done, what)


def test_a_channel_worker_asked_for_a_mongodb_kv_reports_the_missing_extra(tmp_path: Path) -> None:
    secrets_line = json.dumps({"pool_secret": secrets.token_hex(32), "token_key": secrets.token_hex(32)})
    code = (
        "import io\n"
        f"sys.stdin = io.TextIOWrapper(io.BytesIO({(secrets_line + chr(10)).encode()!r}))\n"
        "from flow8_streams.channels.worker import main\n"
        "main(['--port', '1', '--kv-mongodb-database', 'flow8', '--kv-mongodb-uri', sys.argv[1]])\n"
    )
    done = hidden_stack_run(code, MONGODB_URI, env=_env(), cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    (report,) = [json.loads(line) for line in done.stdout.splitlines()]
    assert report["type"] == "error"
    assert report["error"].startswith("--kv-mongodb-database needs the streams runtime's packages")
    assert report["error"].endswith(STREAMS_INSTALL)
    assert "Traceback" not in done.stderr


# -- the wheel, installed without extras --


@dataclass(frozen=True)
class BaseInstall:
    python: Path
    work: Path  # outside the repository: only the installed wheel can be found

    @property
    def flow8(self) -> Path:
        return self.python.parent / "flow8"

    def run(self, *args: str | Path, **env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*map(str, args)], cwd=self.work, env=_env(**env), capture_output=True, text=True, timeout=120
        )


@pytest.fixture(scope="module")
def base_install(tmp_path_factory: pytest.TempPathFactory) -> BaseInstall:
    """``pip install flow8-streams`` of the built wheel, no extra, in a fresh venv."""
    tmp = tmp_path_factory.mktemp("base-install")
    python = fresh_venv(tmp / "venv", build_wheel(tmp / "dist"))
    (tmp / "user").mkdir()
    return BaseInstall(python, tmp / "user")


@pytest.mark.slow
def test_the_wheel_without_extras_runs_the_embedded_default_and_refuses_the_worker(base_install: BaseInstall) -> None:
    python, flow8, run = base_install.python, base_install.flow8, base_install.run
    probe = "import importlib.util, json, flow8_streams.client; print(json.dumps(%r))"
    modules = sorted(STREAMS_STACK.values())
    found = run(python, "-c", probe.replace("%r", f"[m for m in {modules!r} if importlib.util.find_spec(m)]"))
    assert found.returncode == 0, found.stderr
    assert json.loads(found.stdout) == []  # faust, pymongo, ...: none installed

    played = run(
        flow8, "run", FLOW, "--modules", MODULES, "--db", base_install.work / "flow8.db", "--json",
        "--input", json.dumps({"documents": [str(REPO / "README.md"), str(REPO / "examples")]}),
    )  # fmt: skip
    assert played.returncode == 0, played.stdout + played.stderr
    assert json.loads(played.stdout)["status"] == "succeeded"

    assert_refused(run(flow8, "worker"), "flow8 worker")
    assert_refused(run(flow8, "plays", "list", MONGODB_URI=MONGODB_URI), READING_MONGODB)


UPSTREAM = """
import asyncio, sys
from flow8_streams.client import Producer

async def main() -> None:
    async with Producer(sys.argv[1], topic_prefix=sys.argv[2]) as producer:
        print(await producer.start_play("acme", "process-documents", {"documents": ["a", "b"]}))

asyncio.run(main())
"""


@pytest.mark.kafka
@pytest.mark.slow
async def test_the_client_of_an_install_without_extras_sends_a_play_to_kafka(base_install: BaseInstall) -> None:
    servers = require_service("KAFKA_BOOTSTRAP_SERVERS")
    settings = kafka_settings(servers, topic_prefix=f"t{uuid.uuid4().hex[:10]}")
    await ensure_topics(settings)
    consumer = AIOKafkaConsumer(
        settings.topics.commands, **settings.kafka_client_options(), auto_offset_reset="earliest"
    )
    await consumer.start()
    try:
        sent = await asyncio.to_thread(
            base_install.run, base_install.python, "-c", UPSTREAM, servers, settings.topics.prefix
        )
        assert sent.returncode == 0, sent.stdout + sent.stderr
        play_id = sent.stdout.strip()
        async with asyncio.timeout(60):
            record = await consumer.getone()
        command = decode_command(record.value)
        assert (command.play_id, command.company_id, command.flow) == (play_id, "acme", "process-documents")
    finally:
        await consumer.stop()
        admin = AIOKafkaAdminClient(**settings.kafka_client_options())
        await admin.start()
        try:
            await admin.delete_topics(
                [t for t in await admin.list_topics() if t.startswith(f"{settings.topics.prefix}.")]
            )
        finally:
            await admin.close()


@pytest.mark.slow
def test_the_images_install_from_the_runtime_lock_has_the_workers_stack(tmp_path: Path) -> None:
    # compose/Dockerfile's two pip installs, in a fresh venv
    python = fresh_venv(tmp_path / "venv")
    pip_install(python, "--require-hashes", "-r", RUNTIME_LOCK)
    pip_install(python, "--no-deps", build_wheel(tmp_path / "dist"))
    done = subprocess.run(
        [python, "-c", "from flow8_streams.extras import missing_streams; print(missing_streams())"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert (done.returncode, done.stdout.strip()) == (0, "[]"), done.stderr
    shared = subprocess.run([python, "-c", "import redis.asyncio"], cwd=tmp_path, capture_output=True, text=True)
    assert shared.returncode == 0, f"the image cannot run cache.backend: redis: {shared.stderr}"
    worker = subprocess.run([python.parent / "flow8", "worker", "--help"], cwd=tmp_path, capture_output=True, text=True)
    assert worker.returncode == 0, worker.stderr


def test_the_streams_stack_counts_as_installed_once_faust_is_imported() -> None:
    """faust swaps its module for a lazy one with no ``__spec__``; ``find_spec`` raises for it."""
    pytest.importorskip("faust")
    import faust  # noqa: F401

    from flow8_streams.extras import missing_streams, require_streams

    assert missing_streams() == []
    require_streams("flow8 archive --mongodb")
