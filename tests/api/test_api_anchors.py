"""Verdicts checked against signed checkpoints by a ``flow8 serve`` given ``audit_public_key``: a play a
real streams worker signed (``flow8.checkpoints``) and one the embedded server's runtime signed (its
db) are anchored alike, in the same JSON; a server given another key finds them unanchored; a key
that is not one stops the server before it serves (exit 2, naming the setting)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from flow8_streams.audit import checkpoints as cp
from tests.conformance.streams_harness import WorkerGroup
from tests.flow8_cli import run
from tests.streams.support import running_group
from tests.streams.test_streams_checkpoints import read_checkpoints

from .conftest import HELLO
from .server import clean_env, make_key, serving, streams_env

pytestmark = [pytest.mark.kafka, pytest.mark.mongo, pytest.mark.slow]
SIGNED_WITHIN_S = 30.0


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    private, public, _ = cp.keygen(tmp_path_factory.mktemp("keys") / "audit")
    return private, public


@pytest.fixture(scope="module")
def signing(tmp_path_factory: pytest.TempPathFactory, keys: tuple[Path, Path]) -> Iterator[WorkerGroup]:
    env = {"FLOW8_AUDIT_SIGNING_KEY": str(keys[0]), "FLOW8_AUDIT_CHECKPOINT_SECONDS": "0.5"}
    with running_group(tmp_path_factory.mktemp("signing-workers"), extra_env=env) as group:
        yield group


def played(client: httpx.Client) -> tuple[str, list[dict[str, Any]]]:
    """A finished play of HELLO and its events."""
    assert client.put("/v1/flows/hello", json=HELLO).status_code in (200, 201)
    play_id = client.post("/v1/plays", json={"flow": "hello"}).json()["play_id"]
    assert client.get(f"/v1/plays/{play_id}/wait", params={"timeout": 60}).json()["status"] == "succeeded"
    return play_id, client.get(f"/v1/plays/{play_id}/events").json()["items"]


def signed_in_file(db: Path, play_id: str, seq: int) -> None:
    """Until ``DB.checkpoints.jsonl`` names ``play_id`` at ``seq``: the runtime tells no one when it signs."""
    deadline = time.monotonic() + SIGNED_WITHIN_S
    path = cp.jsonl_path(db)
    while time.monotonic() < deadline:
        if path.exists():
            heads = [h for c in cp.read_jsonl(path) if isinstance(c, cp.SignedCheckpoint) for h in c.body["heads"]]
            if any(h["play_id"] == play_id and h["last_seq"] == seq for h in heads):
                return
        time.sleep(0.1)  # a poll period of a file
    raise AssertionError(f"{path} names no head of {play_id} at seq {seq} after {SIGNED_WITHIN_S} s")


def test_verdicts_are_anchored_alike_on_both_backends(
    signing: WorkerGroup, keys: tuple[Path, Path], tmp_path: Path
) -> None:
    private, public = keys
    env = {**streams_env(signing), "FLOW8_AUDIT_PUBLIC_KEY": str(public)}
    key = make_key("--mongodb", company="acme", cwd=tmp_path, env=env)
    with serving("--streams", cwd=tmp_path, env=env) as server, server.client(key) as client:
        play_id, events = played(client)
        asyncio.run(read_checkpoints(signing.settings, {play_id: (events[-1]["seq"], events[-1]["hash"])}))
        streams = client.get(f"/v1/plays/{play_id}/audit").json()

    db = tmp_path / "flow8.db"
    local_env = clean_env(
        FLOW8_AUDIT_SIGNING_KEY=str(private),
        FLOW8_AUDIT_PUBLIC_KEY=str(public),
        FLOW8_AUDIT_CHECKPOINT_SECONDS="0.5",
    )
    local_key = make_key("--db", db, company="acme", cwd=tmp_path, env=local_env)
    with serving("--db", db, cwd=tmp_path, env=local_env) as server, server.client(local_key) as client:
        local_id, local_events = played(client)
        signed_in_file(db, local_id, local_events[-1]["seq"])
        embedded = client.get(f"/v1/plays/{local_id}/audit").json()

    assert streams["anchored"] is True and streams["unanchored"] is False and streams["verdict"] == "ok", streams
    different = {"play_id", "head_hash"}
    assert {k: v for k, v in streams.items() if k not in different} == {
        k: v for k, v in embedded.items() if k not in different
    }


def test_another_key_finds_the_plays_unanchored(signing: WorkerGroup, tmp_path: Path) -> None:
    _, other, _ = cp.keygen(tmp_path / "other")
    env = {**streams_env(signing), "FLOW8_AUDIT_PUBLIC_KEY": str(other)}
    key = make_key("--mongodb", company="acme", cwd=tmp_path, env=env)
    with serving("--streams", cwd=tmp_path, env=env) as server, server.client(key) as client:
        play_id, events = played(client)
        asyncio.run(read_checkpoints(signing.settings, {play_id: (events[-1]["seq"], events[-1]["hash"])}))
        verdict = client.get(f"/v1/plays/{play_id}/audit").json()
    assert (verdict["anchored"], verdict["unanchored"], verdict["findings"]) == (False, True, [])


def test_a_public_key_that_is_not_one_stops_the_server(tmp_path: Path) -> None:
    garbage = tmp_path / "not-a-key.pub"
    garbage.write_text("hello")
    env = clean_env(FLOW8_AUDIT_PUBLIC_KEY=str(garbage))
    done = run("serve", "--db", tmp_path / "flow8.db", "--port", "0", cwd=tmp_path, env=env)
    assert done.code == 2, done
    assert "audit_public_key" in done.err and "Traceback" not in done.err, done.err
