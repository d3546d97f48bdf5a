"""pyproject.toml and the lock files agree, so what a fresh machine installs is what CI tested.

requirements/lock.txt (runtime + every extra) is what scripts/test installs; requirements/runtime.txt
(runtime + the streams extra: the worker) is what compose/Dockerfile installs; scripts/lock makes both.
No services needed.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import NormalizedName, canonicalize_name
from packaging.version import Version

REPO = Path(__file__).resolve().parent.parent
FULL_LOCK = REPO / "requirements" / "lock.txt"
RUNTIME_LOCK = REPO / "requirements" / "runtime.txt"
# The streams runtime overrides these packages' internals: a new minor may break it.
HELD_TO_THE_TESTED_MINOR = ("faust-streaming", "aiokafka")


@dataclass(frozen=True)
class Pin:
    version: Version
    hashes: tuple[str, ...]


def read_lock(path: Path) -> dict[NormalizedName, Pin]:
    """The `name==version --hash=...` entries of a requirements file, by canonical name."""
    pins: dict[NormalizedName, Pin] = {}
    for line in path.read_text().replace("\\\n", " ").splitlines():
        entry = line.split("#", 1)[0].strip()
        if not entry:
            continue
        assert not entry.startswith("-"), f"{path.name}: an option where only pins belong: {entry!r}"
        requirement_text, *hashes = re.split(r"\s+--hash=", entry)
        requirement = Requirement(requirement_text)
        specifiers = list(requirement.specifier)
        assert len(specifiers) == 1 and specifiers[0].operator == "==", (
            f"{path.name}: {requirement.name} is not pinned to one version: {requirement_text!r}"
        )
        name = canonicalize_name(requirement.name)
        assert name not in pins, f"{path.name}: {requirement.name} is pinned twice"
        pins[name] = Pin(Version(specifiers[0].version), tuple(hashes))
    return pins


def declared() -> dict[str, list[Requirement]]:
    """pyproject's requirements by where they are declared; an extra naming the project itself is left out,
    its own extras being checked where they are declared."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    groups = {"dependencies": [Requirement(text) for text in project["dependencies"]]}
    for extra, texts in project.get("optional-dependencies", {}).items():
        requirements = [Requirement(text) for text in texts]
        groups[f"extra {extra!r}"] = [r for r in requirements if canonicalize_name(r.name) != project["name"]]
    return groups


def runtime() -> list[Requirement]:
    """What the worker image runs: the base dependencies, the streams extra and the redis one (the shared cache)."""
    return declared()["dependencies"] + declared()["extra 'streams'"] + declared()["extra 'redis'"]


def everything() -> list[Requirement]:
    return [requirement for group in declared().values() for requirement in group]


def unsatisfied(requirements: list[Requirement], pins: dict[NormalizedName, Pin]) -> list[str]:
    problems = []
    for requirement in requirements:
        pin = pins.get(canonicalize_name(requirement.name))
        if pin is None:
            problems.append(f"{requirement.name} is not in the lock")
        elif not requirement.specifier.contains(pin.version, prereleases=True):
            problems.append(f"{requirement.name} is locked at {pin.version}, outside {requirement.specifier}")
    return problems


def test_every_dependency_has_an_upper_bound() -> None:
    unbounded = [
        f"{where}: {requirement}"
        for where, requirements in declared().items()
        for requirement in requirements
        if not any(spec.operator in ("<", "<=", "==", "===", "~=") for spec in requirement.specifier)
    ]
    assert not unbounded, f"dependencies with no upper bound in pyproject.toml: {unbounded}"


@pytest.mark.parametrize("name", HELD_TO_THE_TESTED_MINOR)
def test_packages_whose_internals_are_overridden_stay_at_the_locked_minor(name: str) -> None:
    (requirement,) = [r for r in runtime() if canonicalize_name(r.name) == name]
    locked = read_lock(FULL_LOCK)[canonicalize_name(name)].version
    next_minor = Version(f"{locked.major}.{locked.minor + 1}")
    assert not requirement.specifier.contains(next_minor, prereleases=True), (
        f"pyproject.toml lets {requirement} reach {next_minor}: hold it below the tested minor {locked}"
    )


def test_full_lock_satisfies_every_dependency_and_extra() -> None:
    problems = unsatisfied(everything(), read_lock(FULL_LOCK))
    assert not problems, f"requirements/lock.txt has drifted from pyproject.toml (run scripts/lock): {problems}"


def test_runtime_lock_satisfies_the_runtime_dependencies() -> None:
    problems = unsatisfied(runtime(), read_lock(RUNTIME_LOCK))
    assert not problems, f"requirements/runtime.txt has drifted from pyproject.toml (run scripts/lock): {problems}"


def test_runtime_lock_pins_what_the_full_lock_pins() -> None:
    full = read_lock(FULL_LOCK)
    differ = [
        f"{name}: {pin.version} in runtime.txt, {full[name].version if name in full else 'absent'} in lock.txt"
        for name, pin in read_lock(RUNTIME_LOCK).items()
        if name not in full or full[name].version != pin.version
    ]
    assert not differ, f"the image would run versions CI did not test (run scripts/lock): {differ}"


@pytest.mark.parametrize("lock", [FULL_LOCK, RUNTIME_LOCK], ids=lambda path: path.name)
def test_every_pin_carries_a_hash(lock: Path) -> None:
    unhashed = [name for name, pin in read_lock(lock).items() if not pin.hashes]
    assert not unhashed, f"{lock.name}: pip --require-hashes would refuse these, they have no hash: {unhashed}"


@pytest.mark.parametrize(
    ("installer", "line"),
    [
        ("scripts/test", "pip install -q --require-hashes -r requirements/lock.txt"),
        ("scripts/test", "pip install -q --no-deps -e ."),
        ("compose/Dockerfile", "pip install --no-cache-dir --require-hashes -r requirements/runtime.txt"),
        ("compose/Dockerfile", "pip install --no-cache-dir --no-deps ."),
    ],
)
def test_installers_install_from_the_lock(installer: str, line: str) -> None:
    assert line in (REPO / installer).read_text(), f"{installer} does not run `{line}`"
