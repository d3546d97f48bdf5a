"""The embedded runtime killed with -9 under load: every play's history still chains, every
play's projection is the fold of its history (a decision's events and its projection are one
transaction), and the plays it left running resume to their end."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

from flow8_streams.domain import events as ev
from flow8_streams.domain.state import PlayStatus
from flow8_streams.engine import fold
from flow8_streams.modules.registry import ModuleRegistry
from flow8_streams.runtimes.local import LocalRuntime
from flow8_streams.stores.sqlite import SqliteStore
from tests.conftest import REPO

LOAD = Path(__file__).with_name("load_until_killed.py")
IN_FLIGHT = 50
READY = 400  # plays finished before the kill: the load is well under way


def assert_every_play_is_its_history(store: SqliteStore) -> list[str]:
    """Checks each play of the db; returns the ids of those still running."""
    play_ids = [row[0] for row in store.db.execute("SELECT DISTINCT play_id FROM events")]
    assert play_ids
    running = []
    for play_id in play_ids:
        events = store.log.read_sync(play_id)
        assert ev.verify_chain(events) == [], play_id
        state = fold(events)
        assert state is not None
        assert store.plays.get_sync(play_id) == state, play_id
        if not state.finished:
            running.append(play_id)
    assert store.db.execute("SELECT count(*) FROM plays").fetchone()[0] == len(play_ids)
    return running


async def test_kill_9_under_load_leaves_every_history_whole_and_the_running_plays_resume(tmp_path: Path) -> None:
    db = tmp_path / "flow8.db"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    load = await asyncio.create_subprocess_exec(
        sys.executable, str(LOAD), str(db), str(IN_FLIGHT), str(READY), stdout=asyncio.subprocess.PIPE, env=env
    )
    try:
        assert load.stdout is not None
        assert await asyncio.wait_for(load.stdout.readline(), timeout=60) == b"ready\n"
    finally:
        load.send_signal(signal.SIGKILL)
        await load.wait()
    assert load.returncode == -signal.SIGKILL

    store = SqliteStore(db)
    try:
        running = assert_every_play_is_its_history(store)
        assert running, "the kill found no play running: it proves less than it should"
        async with LocalRuntime(store, ModuleRegistry.default(entry_points=False)) as runtime:
            assert sorted(await runtime.resume_unfinished()) == sorted(running)
            finals = await asyncio.wait_for(asyncio.gather(*(runtime.wait(p) for p in running)), timeout=60)
        assert {final.status for final in finals} == {PlayStatus.SUCCEEDED}
        assert assert_every_play_is_its_history(store) == []
    finally:
        store.close()
