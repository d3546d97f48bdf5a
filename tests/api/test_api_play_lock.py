"""``flow8 serve`` and the CLI on one db: a play is driven by one process at a time (``play_lock``),
whichever started it; the other is refused (CLI exit 1, HTTP 409) instead of forking its history."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

from tests.flow8_cli import collect, run, spawn

from .conftest import SLOW
from .server import clean_env, make_key, serving


def test_a_play_the_server_drives_is_not_driven_by_the_cli_and_the_other_way_round(tmp_path: Path) -> None:
    env, db = clean_env(), tmp_path / "flow8.db"
    flow_file = tmp_path / "slow.json"
    flow_file.write_text(json.dumps({"name": "slow", **SLOW}))
    key = make_key("--db", db, company="acme", cwd=tmp_path, env=env)
    with serving("--db", db, cwd=tmp_path, env=env) as server, server.client(key) as api:
        api.put("/v1/flows/slow", json=SLOW)
        assert api.post("/v1/plays", json={"flow": "slow", "play_id": "served"}).status_code == 202
        for args in (["plays", "cancel", "served", "--company", "acme"], ["run", flow_file, "--play-id", "served"]):
            refused = run(*args, "--db", db, cwd=tmp_path, env=env)
            assert refused.code == 1 and "being run by another flow8 process" in refused.err, (args, refused.err)
        assert api.post("/v1/plays/served/cancel").status_code == 202
        assert api.get("/v1/plays/served/wait", params={"timeout": 30}).json()["status"] == "cancelled"
        after = run("plays", "cancel", "served", "--company", "acme", "--db", db, cwd=tmp_path, env=env)
        assert after.code == 1 and "already finished" in after.err  # the server let go of it

        cli = spawn("run", flow_file, "--play-id", "by-cli", "--company", "acme", "--db", db, cwd=tmp_path, env=env)
        try:
            deadline = time.monotonic() + 30
            while api.get("/v1/plays/by-cli").status_code == 404:  # the CLI records it in the shared db
                assert time.monotonic() < deadline and cli.proc.poll() is None, "flow8 run did not start the play"
                time.sleep(0.05)  # a poll period: the other process signals nothing
            busy = api.post("/v1/plays/by-cli/cancel")
            assert busy.status_code == 409 and "another flow8 process" in busy.json()["detail"]
        finally:
            # only the lock is this test's: Ctrl-C's exit 130 is tests/cli/test_newcomer.py's. A Ctrl-C
            # sent the moment the play is recorded was once (CI, 1 run in about 6) heard only when the
            # play ended (exit 0 after its 30 s): an open race, not reproduced by hand yet
            cli.proc.send_signal(signal.SIGINT)
            assert collect(cli).code in (0, 130)
