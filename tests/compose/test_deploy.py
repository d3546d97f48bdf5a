"""The image and compose's workers as a user meets them: the image's HTTP port answers beyond the
container's loopback (``docker run -p 4454:4454`` reaches it), and compose's workers load
``examples/modules.py``, so the README's example flows run there.

No docker engine here: the Dockerfile's ENV, WORKDIR and COPY and compose's worker command are
read from the files, and a real ``flow8 worker`` is started with them (the repository root stands
for the image's WORKDIR, which the Dockerfile fills from it).
"""

from __future__ import annotations

import asyncio
import contextlib
import shlex
import shutil
import socket
import subprocess
import sys
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

import orjson
import pytest

from flow8_streams.domain.state import PlayStatus
from flow8_streams.flowfile import load_flow
from flow8_streams.modules.registry import ModuleRegistry
from flow8_streams.settings import load_settings
from tests.compose.test_compose import ROOT, _argv, _dockerfile_instructions, _isolate_env, _services, _workers
from tests.conformance.streams_harness import StreamsHarness, WorkerGroup
from tests.services import require_service

EXAMPLE_FLOWS = sorted([*ROOT.glob("examples/*.json"), *ROOT.glob("examples/*.yaml")])


def _image_env() -> dict[str, str]:
    """What the Dockerfile's ENV instructions set (``KEY=VALUE`` pairs, in order)."""
    env: dict[str, str] = {}
    for keyword, rest in _dockerfile_instructions():
        if keyword == "ENV":
            for pair in shlex.split(rest):
                key, sep, value = pair.partition("=")
                assert sep, f"ENV {rest!r}: write KEY=VALUE"
                env[key] = value
    return env


def _image_workdir() -> PurePosixPath:
    workdirs = [rest for keyword, rest in _dockerfile_instructions() if keyword == "WORKDIR"]
    assert workdirs, "the Dockerfile sets no WORKDIR"
    return PurePosixPath(workdirs[-1])


def _repo_path_of(image_path: str) -> Path:
    """The file of the repository that the Dockerfile's COPY puts at ``image_path`` in the image."""
    workdir = _image_workdir()
    target = workdir / image_path
    for keyword, rest in _dockerfile_instructions():
        if keyword != "COPY" or rest.startswith("--"):
            continue
        *sources, dest = shlex.split(rest)
        dest_path = workdir / dest
        for source in sources:
            if source.endswith("/"):  # a folder: its content lands in dest
                with contextlib.suppress(ValueError):
                    return ROOT / source / target.relative_to(dest_path)
            elif target in (dest_path, dest_path / PurePosixPath(source).name):
                return ROOT / source
    raise AssertionError(f"no COPY of the Dockerfile puts anything at {target}")


def _worker_modules() -> dict[str, list[str]]:
    """Each compose worker's ``--modules`` values (``--modules X``, ``-m X`` or ``--modules=X``)."""
    out: dict[str, list[str]] = {}
    for name, worker in _workers().items():
        argv = _argv(worker.get("entrypoint")) + _argv(worker.get("command"))
        found: list[str] = []
        for i, arg in enumerate(argv):
            if arg in ("--modules", "-m") and i + 1 < len(argv):
                found.append(argv[i + 1])
            elif arg.startswith("--modules="):
                found.append(arg.partition("=")[2])
        out[name] = [s for item in found for s in item.split(",") if s]
    return out


# ---------------------------------------------------------------- static: the files


def test_the_image_listens_on_every_interface(monkeypatch: pytest.MonkeyPatch) -> None:
    env = _image_env()
    _isolate_env(monkeypatch, env)
    assert load_settings().server_host == "0.0.0.0", "`docker run -p 4454:4454` must reach the HTTP port"


def test_compose_workers_load_the_example_modules_every_example_flow_needs() -> None:
    for name, sources in _worker_modules().items():
        assert sources, f"{name} starts without --modules: the README's example flows cannot run there"
        files = [_repo_path_of(source) for source in sources]
        assert all(f.is_file() for f in files), files
        assert ROOT / "examples" / "modules.py" in files, f"{name} does not load examples/modules.py"
        known = ModuleRegistry.default([str(f) for f in files]).names()
        assert EXAMPLE_FLOWS
        for flow in EXAMPLE_FLOWS:
            load_flow(flow).check(known)  # raises naming the module a worker would not have


@pytest.mark.parametrize("name", ["prometheus", "grafana"])
def test_monitoring_is_published_on_the_host_loopback_only(name: str) -> None:
    service = _services()[name]
    assert service.get("ports"), f"{name} publishes nothing"
    for entry in service["ports"]:
        parts = str(entry).split(":")
        loopback = len(parts) == 3 and parts[0] in {"127.0.0.1", "localhost", "::1"}
        assert loopback, f"{name} publishes {entry} beyond the host's loopback"


# ---------------------------------------------------------------- a real worker, as the image runs it


def _outside_address() -> str | None:
    """An address of this machine that is not loopback (where a published port's traffic arrives)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))  # a UDP connect sends nothing: it only picks the interface
        except OSError:
            return None
        address = str(probe.getsockname()[0])
    return None if address.startswith("127.") or address == "0.0.0.0" else address


class ImageWorker(WorkerGroup):
    """One ``flow8 worker`` started with the image's ENV and compose's worker command (``--modules``
    mapped from the image's path to the repository's), in the repository root (the image's WORKDIR)."""

    async def start(self, count: int | None = None) -> None:
        from flow8_streams.runtimes.streams.admin import ensure_topics
        from flow8_streams.runtimes.streams.launcher import free_port

        await ensure_topics(self.settings)
        self.workdir.mkdir(parents=True, exist_ok=True)
        flow8 = shutil.which("flow8", path=str(Path(sys.executable).parent)) or "flow8"
        worker = _workers()["flow8-1"]
        argv = _argv(worker.get("entrypoint")) + _argv(worker.get("command"))
        assert argv[:2] == ["flow8", "worker"]
        args = [str(_repo_path_of(a)) if a.startswith(str(_image_workdir())) else a for a in argv[2:]]
        port = free_port()
        env = {**self.env, **_image_env(), "SERVER_PORT": str(port), "WORKER_ID": f"{self.name}-image"}
        with open(self.workdir / "worker-image.log", "wb") as log:
            proc = subprocess.Popen([flow8, "worker", *args], env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        self.processes.append((proc, port))
        await self.wait_ready()


@contextlib.contextmanager
def image_worker(workdir: Path) -> Iterator[ImageWorker]:
    kafka = require_service("KAFKA_BOOTSTRAP_SERVERS")
    mongodb_uri = require_service("MONGODB_URI")
    group = ImageWorker(kafka, mongodb_uri, workdir, log_level="warning")
    try:
        asyncio.run(group.start())
        yield group
    finally:
        group.stop()
        asyncio.run(group.discard())


@pytest.mark.kafka
@pytest.mark.mongo
@pytest.mark.slow
def test_a_worker_as_the_image_runs_it_answers_beyond_loopback_and_runs_the_readme_flow(tmp_path: Path) -> None:
    address = _outside_address()
    if address is None:
        pytest.skip("this machine has no address but loopback")
    with image_worker(tmp_path) as group:
        # what `docker run -p 4454:4454` forwards arrives on the container's outside interface
        with urllib.request.urlopen(f"http://{address}:{group.port()}/healthz", timeout=10) as response:
            assert response.status == 200
            assert orjson.loads(response.read())["assigned"]

        flow = load_flow(ROOT / "examples" / "process-documents.json")

        async def run() -> tuple[PlayStatus, object, str | None]:
            async with StreamsHarness(group) as harness:
                state = await harness.run(
                    flow,
                    {"documents": ["README.md", "examples"]},  # the README's input, relative to the WORKDIR
                    company_id="acme",
                    play_id=f"p-{uuid.uuid4().hex[:12]}",
                )
                return state.status, state.output, state.error

        status, output, error = asyncio.run(run())
        assert status is PlayStatus.SUCCEEDED, error
        assert isinstance(output, dict) and output, output
