"""The built wheel installed in a fresh virtualenv, as a user installs it: the tests of the typed
public API and of the extras share it. The versions come from requirements/lock.txt (what CI tested);
pip's cache keeps the downloads to the first run."""

from __future__ import annotations

import subprocess
import sys
import venv
from pathlib import Path

from tests.test_install import FULL_LOCK, read_lock

REPO = Path(__file__).resolve().parent.parent


def build_wheel(dist: Path) -> Path:
    """The project's wheel, built into ``dist``."""
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check"]
    subprocess.run([*pip, "wheel", "-q", "--no-deps", "-w", dist, REPO], check=True, capture_output=True)
    (wheel,) = dist.glob("flow8_streams-*.whl")
    return wheel


def fresh_venv(env_dir: Path, *requirements: str | Path) -> Path:
    """A new virtualenv at ``env_dir`` with ``requirements`` (and what they need) installed at the locked
    versions; returns its python."""
    venv.create(env_dir, with_pip=True)
    constraints = env_dir / "constraints.txt"
    constraints.write_text("".join(f"{name}=={pin.version}\n" for name, pin in read_lock(FULL_LOCK).items()))
    python = env_dir / "bin" / "python"
    if requirements:
        pip_install(python, "-c", constraints, *requirements)
    return python


def pip_install(python: Path, *args: str | Path) -> None:
    done = subprocess.run(
        [python, "-m", "pip", "install", "-q", "--disable-pip-version-check", *args], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout + done.stderr
