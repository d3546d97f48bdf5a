"""A signed db of real plays (the embedded runtime with FLOW8_AUDIT_SIGNING_KEY), copied per test
for an attacker to edit with sqlite3 as anyone with write access to the file could, and the
``flow8`` console script to audit it."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from flow8_streams import FlowDefinition, LocalRuntime
from flow8_streams.audit.checkpoints import keygen
from flow8_streams.domain.events import GENESIS_HASH, chain_hash, event_adapter
from flow8_streams.engine import fold
from flow8_streams.settings import Settings
from tests.flow8_cli import Result, run

if TYPE_CHECKING:
    from tests.conformance.streams_harness import WorkerGroup

DIAMOND = FlowDefinition.model_validate(
    {
        "name": "payout",
        "flowlets": [
            {"name": "fetch", "module_ref": "echo", "input": {"amount": "${input.amount}"}},
            {"name": "fee", "module_ref": "echo", "depends_on": ["fetch"], "input": {"fee": 2}},
            {"name": "tax", "module_ref": "echo", "depends_on": ["fetch"], "input": {"tax": 0.2}},
            {"name": "pay", "module_ref": "echo", "depends_on": ["fee", "tax"], "input": {"paid": "${input.amount}"}},
        ],
    }
)
PLAYS = {"p1": "acme", "p2": "acme", "p3": "globex"}
# globex's play carries what RFC 8785 writes unlike a plain sorted dump: floats, and keys whose
# UTF-16 order is not their code-point order
EXOTIC = {"amount": 1e16, "ratio": 1.0, "tiny": 1e-7, "\ue000": "private use", "\U0001f600": [0.1, -0.0, "\u2028"]}


def env() -> dict[str, str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("FLOW8_", "MONGODB_", "KAFKA_"))}
    clean["NO_COLOR"] = "1"
    return clean


def flow8(*args: str | Path, cwd: Path, **extra: str) -> Result:
    return run(*args, cwd=cwd, env={**env(), **extra})


@dataclass
class Signed:
    dir: Path
    db: Path
    public: Path
    private: Path

    @property
    def jsonl(self) -> Path:
        return self.db.with_name(self.db.name + ".checkpoints.jsonl")

    def verify(self, *args: str | Path, key: bool = True) -> Result:
        extra: tuple[str | Path, ...] = ("--public-key", self.public) if key else ()
        return flow8("audit", "verify", "--db", self.db, *extra, *args, cwd=self.dir)

    def verdicts(self, *args: str | Path, key: bool = True) -> tuple[int, dict[str, Any], dict[str, Any]]:
        """Exit code, verdicts by play, summary of ``audit verify --json``."""
        result = self.verify("--json", *args, key=key)
        assert result.code in (0, 1), result
        lines = result.json_lines()
        assert lines[-1]["summary"] is True
        return result.code, {v["play_id"]: v for v in lines[:-1]}, lines[-1]


def findings(verdict: dict[str, Any]) -> list[tuple[str, int | None]]:
    return [(f["kind"], f["seq"]) for f in verdict["findings"]]


async def _record(db: Path, private: Path) -> None:
    settings = Settings(audit_signing_key=private)
    async with LocalRuntime.open(db, settings=settings) as runtime:
        for play_id, company in PLAYS.items():
            play_input = EXOTIC if company == "globex" else {"amount": 100}
            await runtime.run(DIAMOND, play_input, company_id=company, play_id=play_id)


@pytest.fixture(scope="session")
def signed_master(tmp_path_factory: pytest.TempPathFactory) -> Signed:
    root = tmp_path_factory.mktemp("signed")
    private, public, _ = keygen(root / "keys")
    asyncio.run(_record(root / "flow8.db", private))
    return Signed(root, root / "flow8.db", public, private)


@pytest.fixture
def signed(signed_master: Signed, tmp_path: Path) -> Signed:
    """A copy of the signed db (and its checkpoints file) this test may damage."""
    for name in ("flow8.db", "flow8.db.checkpoints.jsonl"):
        shutil.copyfile(signed_master.dir / name, tmp_path / name)
    assert not (signed_master.dir / "flow8.db-wal").exists() or (signed_master.dir / "flow8.db-wal").stat().st_size == 0
    return Signed(tmp_path, tmp_path / "flow8.db", signed_master.public, signed_master.private)


# ---------------------------------------------------------------- what an attacker does with sqlite3


def rows(db: Path, play_id: str) -> list[dict[str, Any]]:
    with sqlite3.connect(db) as conn:
        found = [
            json.loads(b) for (b,) in conn.execute("SELECT body FROM events WHERE play_id = ? ORDER BY seq", (play_id,))
        ]
    conn.close()
    return found


def write_rows(db: Path, play_id: str, docs: list[dict[str, Any]]) -> None:
    """Replace a play's events with ``docs`` (row seq = position)."""
    with sqlite3.connect(db) as conn:
        company = conn.execute("SELECT company_id FROM events WHERE play_id = ? LIMIT 1", (play_id,)).fetchone()[0]
        conn.execute("DELETE FROM events WHERE play_id = ?", (play_id,))
        conn.executemany(
            "INSERT INTO events (play_id, seq, company_id, type, at, body) VALUES (?,?,?,?,?,?)",
            [(play_id, i, company, d["type"], d["at"], json.dumps(d)) for i, d in enumerate(docs, start=1)],
        )
    conn.close()


def rehash(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The chain recomputed from genesis, as anyone can (the hash has no key)."""
    previous = GENESIS_HASH
    for doc in docs:
        body = {k: v for k, v in doc.items() if k != "hash"}
        doc["hash"] = previous = chain_hash(doc.get("hash_version", 1), previous, body)
    return docs


def refold(db: Path, play_id: str) -> None:
    """The play's projection row made to match its (edited) events."""
    state = fold([event_adapter.validate_python(d) for d in rows(db, play_id)])
    assert state is not None
    with sqlite3.connect(db) as conn:
        conn.execute(
            "UPDATE plays SET status = ?, seq = ?, state = ? WHERE play_id = ?",
            (state.status.value, state.seq, state.model_dump_json(), play_id),
        )
    conn.close()


def kafka_env(group: WorkerGroup) -> dict[str, str]:
    """The group's topics, and its MongoDB: the projection each play is compared with."""
    return {
        "KAFKA_BOOTSTRAP_SERVERS": group.settings.kafka_bootstrap_servers,
        "FLOW8_TOPICS__PREFIX": group.name,
        "MONGODB_URI": group.settings.mongodb_uri,
        "MONGODB_DATABASE": group.name,
    }


def audit(group: WorkerGroup, cwd: Path, *args: str) -> tuple[Result, dict[str, Any], dict[str, Any]]:
    """``flow8 audit verify --kafka --json ARGS`` on the group's topics: the result, verdicts by play, summary."""
    result = flow8("audit", "verify", "--kafka", "--json", *args, cwd=cwd, **kafka_env(group))
    assert result.code in (0, 1), result
    lines = result.json_lines()
    assert lines[-1]["summary"] is True, result
    return result, {v["play_id"]: v for v in lines[:-1]}, lines[-1]
