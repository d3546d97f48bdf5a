"""``flow8 serve`` with ``retention.days`` archives and prunes on its own: the plays that ended
longer ago than the retention go to the archive and leave the db, younger and running ones stay,
and ``/metrics`` counts it. Without a destination (and without permission to delete without one)
the server refuses to start."""

from __future__ import annotations

import re
import sqlite3
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx

from flow8_streams.domain.messages import FlowletResult, Start
from flow8_streams.engine import decide, fold
from flow8_streams.stores.sqlite import SqliteStore
from tests.api.server import clean_env, serving
from tests.audit.conftest import DIAMOND
from tests.flow8_cli import run


def _play(store: SqliteStore, play_id: str, start: datetime, *, finish: bool = True) -> None:
    """A play of the diamond decided by the engine at ``start`` (and finished 4 s later)."""
    events = decide(None, Start(play_id=play_id, company_id="acme", flow=DIAMOND, input={"amount": 1}), start)
    state = fold(events)
    for i, name in enumerate(("fetch", "fee", "tax", "pay") if finish else (), start=1):
        assert state is not None
        now = start + timedelta(seconds=i)
        result = FlowletResult(play_id=play_id, company_id="acme", flowlet=name, attempt=1, ok=True, output={},
                               started_at=now, ended_at=now)  # fmt: skip
        more = decide(state, result, now)
        events += more
        state = fold(more, state)
    assert state is not None and state.finished is finish
    store.record(events, [state])


def _db(path: Path) -> Path:
    store = SqliteStore(path)
    try:
        now = datetime.now(UTC)
        _play(store, "old", now - timedelta(days=3))
        _play(store, "young", now - timedelta(hours=2))
        _play(store, "running", now - timedelta(days=30), finish=False)
    finally:
        store.close()
    return path


def _metric(text: str, name: str) -> float:
    match = re.search(rf"^{re.escape(name)} (\S+)$", text, re.M)
    return float(match.group(1)) if match else 0.0


def test_serve_archives_and_prunes_the_expired_plays(tmp_path: Path) -> None:
    db = _db(tmp_path / "flow8.db")
    env = clean_env(FLOW8_RETENTION__DAYS="1", FLOW8_RETENTION__ARCHIVE=str(tmp_path / "arch"))
    with serving("--db", db, cwd=tmp_path, env=env) as server, httpx.Client(base_url=server.url) as client:
        deadline = time.monotonic() + 60
        while True:  # the first run starts with the server; /metrics says when it is done
            metrics = client.get("/metrics").text
            if _metric(metrics, 'flow8_retention_runs_total{outcome="ok"}') >= 1:
                break
            assert _metric(metrics, 'flow8_retention_runs_total{outcome="failed"}') == 0, server.output()
            assert time.monotonic() < deadline, server.output()
            time.sleep(0.1)  # a poll period: the job runs in the server's process, there is no event to await
        assert _metric(metrics, "flow8_pruned_plays_total") == 1
        assert _metric(metrics, "flow8_archive_plays_total") == 1
        assert _metric(metrics, "flow8_archive_files_total") == 1
    with sqlite3.connect(db) as conn:
        left = {p for (p,) in conn.execute("SELECT play_id FROM plays")}
        events = {p for (p,) in conn.execute("SELECT DISTINCT play_id FROM events")}
    conn.close()
    assert left == events == {"young", "running"}
    (archive,) = (tmp_path / "arch" / "acme").glob("*.jsonl.gz")
    verify = run("audit", "verify", "--db", db, "--archive", archive, "--company", "acme", cwd=tmp_path, env=env)
    assert verify.code == 0, verify
    assert "continuous across 1 archive and live data" in verify.err


def test_serve_refuses_retention_without_a_destination(tmp_path: Path) -> None:
    db = _db(tmp_path / "flow8.db")
    result = run("serve", "--db", db, "--port", "0", cwd=tmp_path, env=clean_env(FLOW8_RETENTION__DAYS="1"))
    assert result.code == 2, result
    assert "nothing is deleted before it is archived" in result.err and "Traceback" not in result.err
