"""A server of the outage tests' own: Kafka or FerretDB started by ``scripts/services`` in a
folder under the test's tmp dir, on free ports, so a test can stop and start it while the
shared servers (which other tests and engineers use) are never touched.

``scripts/services`` is run with ``FLOW8_SERVICES_DIR`` set to that folder and without
``KAFKA_BOOTSTRAP_SERVERS``/``MONGODB_URI`` (which would make it reuse the shared ones). The
Kafka jars and the FerretDB binary are linked from a services folder that has them for the
pinned versions (the checkout's own, or the main worktree's), so nothing is fetched or built;
without one, the script resolves them itself (Maven's and Go's caches). A stop is a signal to
the pid the script wrote in our folder: nothing else can be stopped by this module.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

from flow8_streams.runtimes.streams.launcher import free_port

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "services"
STOP_TIMEOUT_S = 60.0
Kind = Literal["kafka", "ferretdb"]


def _shared_services_dirs() -> list[Path]:
    """Services folders whose builds may be reused: this checkout's, then the main worktree's."""
    dirs = [REPO / ".services"]
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        common = subprocess.run(
            ["git", "rev-parse", "--path-format=absolute", "--git-common-dir"],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        dirs.append(Path(common).parent / ".services")
    return [d for d in dirs if d.is_dir()]


def _link_builds(folder: Path) -> None:
    """Link the Kafka jars and the FerretDB binary (with their stamps) from a services folder
    that has them: the script checks the stamps against the pinned versions, and builds or
    fetches them itself when they do not match."""
    for shared in _shared_services_dirs():
        libs = shared / "kafka" / "libs"
        if (libs / ".stamp").exists() and not (folder / "kafka" / "libs").exists():
            (folder / "kafka").mkdir(parents=True, exist_ok=True)
            (folder / "kafka" / "libs").symlink_to(libs)
        binary = shared / "bin" / "ferretdb"
        if binary.exists() and (shared / "bin" / "ferretdb.stamp").exists() and not (folder / "bin").exists():
            (folder / "bin").mkdir(parents=True)
            (folder / "bin" / "ferretdb").symlink_to(binary)
            (folder / "bin" / "ferretdb.stamp").write_bytes((shared / "bin" / "ferretdb.stamp").read_bytes())


class PrivateServer:
    """One server of a test's own: ``start()`` (again after a stop: same data), ``stop()``
    (SIGTERM: a clean stop), ``kill()`` (SIGKILL), ``close()`` (stopped, whatever happened)."""

    def __init__(self, kind: Kind, folder: Path) -> None:
        self.kind = kind
        self.folder = folder
        self.port = free_port()
        env = {k: v for k, v in os.environ.items() if k not in ("KAFKA_BOOTSTRAP_SERVERS", "MONGODB_URI", "REDIS_URL")}
        env.pop("FLOW8_SERVICES_REDIS", None)
        env["FLOW8_SERVICES_DIR"] = str(folder)
        if kind == "kafka":
            env.update(
                FLOW8_KAFKA_PORT=str(self.port),
                FLOW8_KAFKA_CONTROLLER_PORT=str(free_port()),
                FLOW8_KAFKA_SASL_PORT="0",
            )
            self.address = f"127.0.0.1:{self.port}"
        else:
            env["FLOW8_MONGO_PORT"] = str(self.port)
            self.address = f"mongodb://127.0.0.1:{self.port}"
        self.env = env
        self.pid: int | None = None
        _link_builds(folder)

    @property
    def log(self) -> Path:
        """What the script tells and the server's own output: where a failure is explained."""
        return self.folder / f"{self.kind}-services.log"

    def start(self) -> float:
        """Start it (on its data, if it ran before) and wait until it answers; returns the seconds taken."""
        t0 = time.monotonic()
        only = "--kafka-only" if self.kind == "kafka" else "--mongo-only"
        with open(self.log, "ab") as log:
            done = subprocess.run(
                [sys.executable, str(SCRIPT), "up", only],
                env=self.env,
                stdout=subprocess.PIPE,
                stderr=log,
                timeout=180,
                check=False,
            )
        if done.returncode != 0:
            raise AssertionError(f"private {self.kind} did not start (exit {done.returncode}); see {self.log}")
        pid_file = self.folder / self.kind / f"{self.kind}.pid"
        self.pid = int(pid_file.read_text().strip())
        return time.monotonic() - t0

    def _signal(self, sig: signal.Signals) -> float:
        """Send ``sig`` to our server and wait until it is gone; returns the seconds taken."""
        pid = self.pid
        if pid is None:
            return 0.0
        t0 = time.monotonic()
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
        deadline = t0 + STOP_TIMEOUT_S
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)  # another process's exit: there is no event to await
        if _alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            while _alive(pid):
                time.sleep(0.1)
        self.pid = None
        return time.monotonic() - t0

    def stop(self) -> float:
        """A clean stop (SIGTERM; SIGKILL after a minute); returns the seconds it took."""
        return self._signal(signal.SIGTERM)

    def kill(self) -> float:
        return self._signal(signal.SIGKILL)

    def close(self) -> None:
        self.stop()


def _alive(pid: int) -> bool:
    """True while ``pid`` runs (not a zombie: the script detached it, init reaps it)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


@contextlib.contextmanager
def private_server(kind: Kind, folder: Path) -> Iterator[PrivateServer]:
    """A started private server, stopped at the end whatever happens."""
    server = PrivateServer(kind, folder)
    try:
        server.start()
        yield server
    finally:
        server.close()
