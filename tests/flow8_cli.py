"""Running the installed ``flow8`` console script as a user would: a subprocess, its exit
code and its output. Shared by the black-box CLI tests."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any


def _flow8() -> str:
    beside = Path(sys.executable).parent / "flow8"
    found = str(beside) if beside.exists() else shutil.which("flow8")
    assert found, "the flow8 console script is not installed (pip install -e .)"
    return found


FLOW8 = _flow8()


@dataclass
class Result:
    code: int
    out: str
    err: str
    seconds: float = 0.0

    def json(self) -> Any:
        return json.loads(self.out)

    def json_lines(self) -> list[Any]:
        return [json.loads(line) for line in self.out.splitlines() if line.strip()]

    def lines(self) -> list[str]:
        return [line for line in self.out.splitlines() if line.strip()]


@dataclass
class Running:
    proc: subprocess.Popen[bytes]
    started: float


def spawn(
    *args: str | Path,
    cwd: Path,
    env: Mapping[str, str],
    preexec_fn: Callable[[], None] | None = None,
) -> Running:
    started = time.monotonic()
    proc = subprocess.Popen(
        [FLOW8, *map(str, args)],
        cwd=cwd,
        env=dict(env),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        preexec_fn=preexec_fn,
    )
    return Running(proc, started)


def collect(running: Running, timeout: float = 90) -> Result:
    """Its exit code and output, decoded leniently: a crash may print anything, and the test
    must still show it."""
    proc = running.proc
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise
    return Result(
        proc.returncode,
        out.decode("utf-8", "replace"),
        err.decode("utf-8", "replace"),
        time.monotonic() - running.started,
    )


def run(
    *args: str | Path,
    cwd: Path,
    env: Mapping[str, str],
    timeout: float = 90,
    preexec_fn: Callable[[], None] | None = None,
) -> Result:
    return collect(spawn(*args, cwd=cwd, env=env, preexec_fn=preexec_fn), timeout)
