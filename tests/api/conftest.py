"""One ``flow8 serve --db`` per test module, with keys of two companies (and an admin of one); for
the streams backend, a worker and two ``flow8 serve --streams`` instances over it."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from tests.conformance.streams_harness import WorkerGroup

from .server import Server, Two, clean_env, make_key, serving, streams_env

HELLO = {"flowlets": [{"name": "a", "module_ref": "echo"}, {"name": "b", "module_ref": "echo", "depends_on": ["a"]}]}
SLOW = {"flowlets": [{"name": "nap", "module_ref": "sleep", "input": {"seconds": 30}}]}


@dataclass
class Api:
    server: Server
    acme: str  # a member key of company acme
    acme_admin: str
    globex: str  # a member key of company globex
    db: Path
    cwd: Path


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    cwd = tmp_path_factory.mktemp("serve")
    db = cwd / "flow8.db"
    env = clean_env(FLOW8_LOG_LEVEL="info")
    keys = {
        name: make_key("--db", db, company=company, role=role, cwd=cwd, env=env)
        for name, company, role in (
            ("acme", "acme", "member"),
            ("admin", "acme", "admin"),
            ("globex", "globex", "member"),
        )
    }
    with serving("--db", db, cwd=cwd, env=env) as server:
        yield Api(server, keys["acme"], keys["admin"], keys["globex"], db, cwd)


@pytest.fixture(scope="module")
def group(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WorkerGroup]:
    """A streams worker on topics and a database of its own, for the streams backend's tests."""
    from tests.streams.support import running_group

    with running_group(tmp_path_factory.mktemp("workers")) as workers:
        yield workers


@pytest.fixture(scope="module")
def two(group: WorkerGroup, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Two]:
    """Two ``flow8 serve --streams`` instances over ``group``, with a key of acme and one of globex."""
    cwd = tmp_path_factory.mktemp("serve-streams")
    env = streams_env(group)
    acme = make_key("--mongodb", company="acme", cwd=cwd, env=env)
    globex = make_key("--mongodb", company="globex", cwd=cwd, env=env)
    with serving("--streams", cwd=cwd, env=env) as a, serving("--streams", cwd=cwd, env=env) as b:
        yield Two(a, b, acme, globex)


def new_id(prefix: str = "p") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"
