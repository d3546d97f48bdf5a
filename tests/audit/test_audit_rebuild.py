"""``flow8 audit rebuild`` folds a log into a fresh projection through ``PlayProjection.apply``,
on a SQLite file and on the real MongoDB wire-protocol server: equal to the live projection,
idempotent (a second run writes nothing and duplicates nothing), each difference of the live
projection named by play and field, and an altered history reported, never folded."""

from __future__ import annotations

import contextlib
import os
import pty
import sqlite3
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from pymongo import MongoClient

from tests.audit.conftest import Signed, env, flow8, rows, write_rows
from tests.audit.test_audit_mongo import _fill, _uri
from tests.flow8_cli import FLOW8, Result


def rebuild(cwd: Path, *args: str | Path, **env: str) -> tuple[Result, dict[str, Any], dict[str, Any]]:
    result = flow8("audit", "rebuild", "--json", *args, cwd=cwd, **env)
    assert result.code in (0, 1), result
    lines = result.json_lines()
    assert lines[-1]["summary"] is True, result
    return result, {p["play_id"]: p for p in lines[:-1]}, lines[-1]


def projection_rows(db: Path) -> list[tuple[Any, ...]]:
    with sqlite3.connect(db) as conn:
        found = conn.execute("SELECT play_id, company_id, status, seq, state FROM plays ORDER BY play_id").fetchall()
    conn.close()
    return found


def test_rebuild_into_a_sqlite_file_equals_the_live_projection_and_is_idempotent(signed: Signed) -> None:
    target = signed.dir / "rebuilt.db"
    result, plays, summary = rebuild(signed.dir, "--db", signed.db, "--company", "acme", "--into-db", target)
    assert result.code == 0, result
    assert sorted(plays) == ["p1", "p2"] and all(p["verdict"] == "ok" for p in plays.values())
    assert (summary["events"], summary["applied"], summary["compared"]) == (20, 20, True)
    first = projection_rows(target)
    assert [r[0] for r in first] == ["p1", "p2"]
    live = {r[0]: r for r in projection_rows(signed.db)}
    assert all(orjson.loads(r[4]) == orjson.loads(live[r[0]][4]) for r in first)

    result, _, summary = rebuild(
        signed.dir, "--db", signed.db, "--company", "acme", "--into-db", target, "--batch", "3"
    )
    assert result.code == 0, result
    assert (summary["applied"], summary["skipped_as_folded"]) == (0, 20)
    assert projection_rows(target) == first  # nothing rewritten, nothing duplicated


def test_a_live_projection_that_differs_is_named_by_play_and_field(signed: Signed) -> None:
    with sqlite3.connect(signed.db) as conn:
        (state,) = conn.execute("SELECT state FROM plays WHERE play_id = 'p1'").fetchone()
        doc = orjson.loads(state)
        doc["output"] = {"pay": {"paid": 1_000_000}}
        doc["flowlets"]["fee"]["attempts"] = 7
        conn.execute("UPDATE plays SET state = ? WHERE play_id = 'p1'", (orjson.dumps(doc),))
    conn.close()
    result, plays, summary = rebuild(
        signed.dir, "--db", signed.db, "--company", "acme", "--into-db", signed.dir / "r.db"
    )
    assert result.code == 1, result
    assert sorted(f["field"] for f in plays["p1"]["findings"]) == ["flowlets.fee.attempts", "output"]
    assert plays["p2"]["verdict"] == "ok" and summary["with_differences"] == 1

    human = flow8("audit", "rebuild", "--db", signed.db, "--company", "acme", "--into-db", signed.dir / "r.db",
                  cwd=signed.dir)  # fmt: skip
    assert human.code == 1
    assert "p1 projection output:" in human.out and "1 with differences" in human.err


def test_an_altered_history_is_reported_and_not_folded(signed: Signed) -> None:
    docs = rows(signed.db, "p2")
    docs[3]["payload"]["output"] = {"amount": 1}
    write_rows(signed.db, "p2", docs)
    target = signed.dir / "r.db"
    result, plays, summary = rebuild(signed.dir, "--db", signed.db, "--company", "acme", "--into-db", target)
    assert result.code == 1, result
    assert sorted(plays) == ["p1"]
    assert [(f["kind"], f["seq"]) for f in summary["findings"]] == [("not_folded", 4)]
    assert "p2: altered" in summary["findings"][0]["detail"]
    assert [r[0] for r in projection_rows(target)] == ["p1"]


def test_rebuild_needs_one_target_and_one_source(tmp_path: Path, signed: Signed) -> None:
    for args, says in (
        (["--db", signed.db, "--company", "acme"], "give one target"),
        (["--db", signed.db, "--company", "acme", "--into-db", "a.db", "--into-mongodb", "x"], "give one target"),
        (["--company", "acme", "--into-db", "a.db"], "give one source"),
        (["--db", signed.db, "--into-db", "a.db"], "--company C"),
        (["--db", signed.db, "--company", "acme", "--into-mongodb", "a/b.c"], "is not a database name"),
    ):
        result = flow8("audit", "rebuild", *args, cwd=tmp_path)
        assert result.code == 2, result
        assert says in result.err and "Traceback" not in result.err


@pytest.fixture
def mongo_dbs() -> Iterator[tuple[str, str, str]]:
    import asyncio

    uri, live, fresh = _uri(), f"audit{uuid.uuid4().hex[:10]}", f"rebuilt{uuid.uuid4().hex[:10]}"
    asyncio.run(_fill(uri, live))
    try:
        yield uri, live, fresh
    finally:
        client: MongoClient = MongoClient(uri)
        client.drop_database(live)
        client.drop_database(fresh)
        client.close()


@pytest.mark.mongo
def test_rebuild_into_mongodb_twice_then_verify_the_rebuilt_database(
    mongo_dbs: tuple[str, str, str], tmp_path: Path
) -> None:
    uri, live, fresh = mongo_dbs
    env = {"MONGODB_URI": uri, "MONGODB_DATABASE": live}
    for run in (1, 2):
        result, plays, summary = rebuild(tmp_path, "--mongodb", "--company", "acme", "--into-mongodb", fresh, **env)
        assert result.code == 0, result
        assert sorted(plays) == ["m1", "m2"] and summary["compared"] is True
        assert summary["applied"] == (20 if run == 1 else 0)
    client: MongoClient = MongoClient(uri)
    try:
        assert client[fresh]["plays"].count_documents({}) == 2  # no duplicate from the second run
        assert client[fresh]["events"].count_documents({}) == 0  # a projection only: the log stays where it is
    finally:
        client.close()


def test_a_terminal_sees_the_progress_and_a_pipe_does_not(signed: Signed) -> None:
    primary, secondary = pty.openpty()
    args = [FLOW8, "audit", "rebuild", "--db", str(signed.db), "--company", "acme", "--into-db", "tty.db"]
    proc = subprocess.Popen(
        args, cwd=signed.dir, env=env(), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=secondary
    )
    os.close(secondary)
    shown = b""
    with contextlib.suppress(OSError):  # EIO once the process closed the terminal
        while chunk := os.read(primary, 4096):
            shown += chunk
    os.close(primary)
    assert proc.wait(timeout=60) == 0
    assert proc.stdout is not None
    proc.stdout.close()
    assert b"rebuilding" in shown and b"rebuilt 2 plays from 20 events" in shown

    piped = flow8("audit", "rebuild", "--db", signed.db, "--company", "acme", "--into-db", "pipe.db", cwd=signed.dir)
    assert piped.code == 0 and "rebuilding" not in piped.err and "rebuilt 2 plays" in piped.err
