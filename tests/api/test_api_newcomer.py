"""The README's path: ``flow8 run`` a play, then ``flow8 serve`` the same db and read it over HTTP,
exactly as ``flow8 run --json`` printed it."""

from __future__ import annotations

import json
from pathlib import Path

from tests.conftest import REPO
from tests.flow8_cli import run

from .server import clean_env, make_key, serving


def test_a_play_run_from_the_command_line_reads_back_over_http_as_it_printed(tmp_path: Path) -> None:
    env = clean_env()
    played = run(
        "run", REPO / "examples" / "process-documents.json", "--modules", REPO / "examples" / "modules.py",
        "--input", json.dumps({"documents": [str(REPO / "README.md"), str(REPO / "examples")]}), "--json",
        "--company", "acme", cwd=tmp_path, env=env,
    )  # fmt: skip
    assert played.code == 0, played.err
    printed = played.json()
    key = make_key(company="acme", cwd=tmp_path, env=env)  # ./flow8.db, as flow8 run wrote
    modules = REPO / "examples" / "modules.py"
    with serving("--modules", modules, cwd=tmp_path, env=env) as server, server.client(key) as client:
        assert client.get(f"/v1/plays/{printed['play_id']}").json() == printed
        assert [p["play_id"] for p in client.get("/v1/plays").json()["items"]] == [printed["play_id"]]
