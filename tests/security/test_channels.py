"""The channel port against a hostile client: only the pool runs tasks, only flow8's token
completes a pending flowlet, no token is shown, and every outside line and connection is
bounded. Real worker processes on real ports; the hostile client is another process."""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import orjson
import pytest

from flow8_streams.channels import ChannelPool, client
from flow8_streams.channels.dispatcher import signed_run
from flow8_streams.channels.protocol import Ack, ErrorReply
from flow8_streams.channels.tokens import (
    TOKEN_KEY_NAME,
    completion_token,
    fingerprint,
    new_key,
    run_mac,
)
from flow8_streams.domain.state import PlayStatus
from flow8_streams.metrics import Metrics
from flow8_streams.modules.registry import ModuleRegistry
from flow8_streams.runtimes.local import LocalRuntime
from flow8_streams.stores.sqlite import SqliteStore
from tests.channels.conftest import (
    GUARD_S,
    TEST_MODULES,
    Dispatches,
    PoolFactory,
    flow,
    is_,
    make_pool,  # noqa: F401  (the fixture)
    make_task,
    new_play,
    port_of,
    token_for,
)

COMPANY = "acme"

# The hostile client: a process of its own that writes each argv line to the port and
# prints each reply line (b"" once the port closed the connection).
OUTSIDE = """
import socket, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=30)
f = s.makefile("rb")
for line in sys.argv[2:]:
    s.sendall(line.encode() + b"\\n")
    sys.stdout.write(f.readline().decode() or "<closed>\\n")
    sys.stdout.flush()
"""


def outside(port: int, *lines: str) -> list[dict[str, Any]]:
    done = subprocess.run(
        [sys.executable, "-c", OUTSIDE, str(port), *lines], capture_output=True, text=True, timeout=GUARD_S, check=True
    )
    return [orjson.loads(line) for line in done.stdout.splitlines()]


def refusals(metrics: Metrics, reason: str) -> float:
    return metrics.registry.get_sample_value("flow8_channel_refusals_total", {"reason": reason}) or 0.0


EVIL = """
from pathlib import Path
Path({marker!r}).write_text("imported")

def evil(ctx):
    Path({marker!r} + ".ran").write_text("ran")

MODULES = {{"evil": evil}}
"""


async def test_a_run_from_an_outside_process_is_refused_and_runs_nothing(
    make_pool: PoolFactory,  # noqa: F811
    tmp_path: Path,
) -> None:
    marker = tmp_path / "imported"
    evil = tmp_path / "evil.py"
    evil.write_text(EVIL.format(marker=str(marker)))
    db = tmp_path / "kv.db"
    metrics = Metrics()
    pool = await make_pool(1, kv_db=db, metrics=metrics)
    port = pool.slots[0].port
    victim = make_task("kv.set", {"key": "balance", "value": 1_000_000}, company="victim")
    body = orjson.dumps({"task": victim.model_dump(mode="json"), "sent_at": "2026-01-01T00:00:00Z", "nonce": "0" * 32})

    replies = outside(
        port,
        # what any client could do before: a task, and a module file to import for it
        orjson.dumps(
            {"type": "run", "task": make_task("evil").model_dump(mode="json"), "modules": [str(evil)]}
        ).decode(),
        # the new shape: unsigned, signed with a made-up secret, and even signed by the pool itself
        orjson.dumps({"type": "run", "body": body.decode(), "mac": "0" * 64}).decode(),
        orjson.dumps({"type": "run", "body": body.decode(), "mac": run_mac(new_key(), body)}).decode(),
        orjson.dumps(signed_run(victim, pool.command.pool_secret).model_dump()).decode(),
    )
    assert [r["type"] for r in replies] == ["error"] * 4, replies
    assert "run body: Field required" in replies[0]["error"]
    for reply in replies[1:]:
        assert "from its pool's control socket only" in reply["error"] and "nothing was run" in reply["error"]

    assert not marker.exists() and not Path(str(marker) + ".ran").exists()  # never imported, never run
    store = SqliteStore(db)
    try:
        assert await store.kv.get("victim", "balance") is None  # no KV touched
    finally:
        store.close()
    async with asyncio.timeout(GUARD_S):
        assert await pool.refused("unauthenticated", 3) == 3
        await pool.refused("bad_message", 1)
    assert refusals(metrics, "unauthenticated") == 3
    assert (await client.status(port)).state == "idle"
    result = await pool.submit(make_task("echo", {"still": "serving"}))  # the pool's own run is taken
    assert result.ok and result.output == {"still": "serving"}


async def _on_control_socket(path: str, line: bytes) -> dict[str, Any]:
    reader, writer = await asyncio.open_unix_connection(path)
    try:
        writer.write(line + b"\n")
        async with asyncio.timeout(GUARD_S):
            return dict(orjson.loads(await reader.readline()))
    finally:
        writer.close()


async def test_on_the_control_socket_only_a_run_signed_by_the_pool_is_taken_and_only_once(
    make_pool: PoolFactory,  # noqa: F811
) -> None:
    pool = await make_pool(1)
    control = pool.command.control(pool.slots[0].port)
    assert os.stat(Path(control).parent).st_mode & 0o077 == 0  # the pool's directory: its user's only
    task = make_task("echo", {"n": 1})
    forged = orjson.dumps(signed_run(task, new_key()).model_dump())
    line = orjson.dumps(signed_run(task, pool.command.pool_secret).model_dump())
    refused = await _on_control_socket(control, forged)
    assert refused["type"] == "error" and "not signed by the pool" in refused["error"]
    assert (await _on_control_socket(control, line))["type"] == "accepted"  # the pool's: taken
    again = await _on_control_socket(control, line)  # the same bytes again, as someone who saw them would
    assert again["type"] == "error" and "sent before" in again["error"]
    async with asyncio.timeout(GUARD_S):
        await pool.refused("replayed")
        await pool.refused("unauthenticated")


def _forms(secret: bytes) -> list[bytes]:
    return [secret, secret.hex().encode(), base64.b64encode(secret), base64.urlsafe_b64encode(secret).rstrip(b"=")]


async def test_the_pool_secret_and_token_key_are_in_no_process_list_or_environment(
    make_pool: PoolFactory,  # noqa: F811
) -> None:
    key = new_key()
    pool = await make_pool(2, warm=2, token_key=key)
    pids = [slot.pid for slot in pool.slots]
    assert all(pids) and len(set(pids)) == 2
    for pid in pids:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        environ = Path(f"/proc/{pid}/environ").read_bytes()
        assert b"flow8_streams.channels.worker" in cmdline  # the right process
        for secret in (pool.command.pool_secret, key):
            for form in _forms(secret):
                assert form not in cmdline and form not in environ, pid


async def test_no_token_in_status_cli_output_or_logs_at_debug(
    make_pool: PoolFactory,  # noqa: F811
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
) -> None:
    caplog.set_level(logging.DEBUG)
    dispatches = Dispatches()
    pending: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    pool = await make_pool(
        1,
        on_dispatch=dispatches.hook,
        on_pending=lambda *args: pending.set_result(args[3]),
        worker_log_level="debug",
    )
    outbox = tmp_path / "outbox"
    task = make_task("handoff", {"outbox": str(outbox)})
    running = pool.submit_nowait(task)
    async with asyncio.timeout(GUARD_S):
        port = port_of(await pending)
    token = outbox.read_text()
    assert token == token_for(task)

    status = await client.status(port)
    assert status.state == "pending" and status.token_fingerprint == fingerprint(token)
    assert token not in status.model_dump_json()
    assert isinstance(await client.progress(port, token, pct=1), Ack)
    assert isinstance(await client.complete(port, token[:-1] + ("A" if token[-1] != "A" else "B")), ErrorReply)
    cli = [str(Path(sys.executable).parent / "flow8"), "channels", "status", "--range", f"{port}-{port}"]
    table = subprocess.run(cli, capture_output=True, text=True, timeout=GUARD_S, check=True)
    as_json = subprocess.run([*cli, "--json"], capture_output=True, text=True, timeout=GUARD_S, check=True)
    assert orjson.loads(as_json.stdout)["state"] == "pending" and "pending" in table.stdout
    assert isinstance(await client.complete(port, token, output={"done": True}), Ack)
    assert (await running).output == {"done": True}

    seen = capfd.readouterr()
    assert "refused (bad_token)" in seen.err  # the worker's own log, at debug, came through
    for text in (table.stdout, table.stderr, as_json.stdout, as_json.stderr, seen.out, seen.err, caplog.text):
        assert token not in text


def _payment_flow() -> Any:
    return flow(
        "payment",
        {"name": "charge", "module_ref": "handoff", "input": {"outbox": "${input.outbox}"}, "defer_after_ms": 0},
        {"name": "receipt", "module_ref": "echo", "depends_on": ["charge"]},
    )


async def test_a_forged_completion_is_refused_and_counted_while_flow8s_token_completes(
    make_pool: PoolFactory,  # noqa: F811
    tmp_path: Path,
) -> None:
    metrics = Metrics()
    store = SqliteStore(tmp_path / "pay.db")
    key = store.secret(TOKEN_KEY_NAME, new_key)
    pool = await make_pool(1, kv_db=store.path, token_key=key, metrics=metrics)
    play_id = new_play()
    outbox = tmp_path / "outbox"
    registry = ModuleRegistry.default([TEST_MODULES], entry_points=False)
    try:
        async with LocalRuntime(store, registry, channels=pool) as runtime:
            events: asyncio.Queue[Any] = asyncio.Queue()
            runtime.subscribe(lambda batch: [events.put_nowait(e) for e in batch])
            await runtime.start(_payment_flow(), {"outbox": str(outbox)}, company_id=COMPANY, play_id=play_id)
            async with asyncio.timeout(GUARD_S):
                while not is_("FlowletDispatched", "charge")(event := await events.get()):
                    pass
            port = port_of(event.payload.channel)
            forged = [
                f"pay-{uuid.uuid4().hex}",  # a guess
                completion_token(key, "other-company", play_id, "charge", 1),  # another company's
                completion_token(key, COMPANY, play_id, "charge", 2),  # another attempt's
                completion_token(new_key(), COMPANY, play_id, "charge", 1),  # another key's
            ]
            for token in forged:
                reply = await client.complete(port, token, output={"paid": 1_000_000})
                assert isinstance(reply, ErrorReply) and "no flowlet waiting for that token" in reply.error
            async with asyncio.timeout(GUARD_S):
                assert await pool.refused("bad_token", len(forged)) == len(forged)
            assert refusals(metrics, "bad_token") == len(forged)

            real = completion_token(key, COMPANY, play_id, "charge", 1)
            assert isinstance(await client.complete(port, real, output={"paid": 10}), Ack)
            final = await asyncio.wait_for(runtime.wait(play_id), GUARD_S)
        assert final.status is PlayStatus.SUCCEEDED
        assert final.flowlets["charge"].output == {"paid": 10}
        assert outbox.read_text() == real  # the module handed out exactly flow8's token
    finally:
        store.close()


def test_the_token_key_is_kept_in_the_sqlite_file_so_a_resumed_play_keeps_its_token(tmp_path: Path) -> None:
    path = tmp_path / "keys.db"
    first = SqliteStore(path)
    try:
        key = first.secret(TOKEN_KEY_NAME, new_key)
    finally:
        first.close()
    again = SqliteStore(path)
    try:
        assert again.secret(TOKEN_KEY_NAME, new_key) == key and len(key) == 32
    finally:
        again.close()
    assert completion_token(key, "c", "p", "f", 1) == completion_token(key, "c", "p", "f", 1)
    # length-prefixed fields: moving a separator never gives the same token
    assert completion_token(key, "c", "p|f", "x", 1) != completion_token(key, "c|p", "f", "x", 1)


@pytest.mark.mongo
async def test_every_streams_worker_shares_the_token_key_mongodb_keeps() -> None:
    from flow8_streams.stores.mongo import MongoStore

    uri = os.environ.get("MONGODB_URI", "mongodb://127.0.0.1:27017")
    database = f"flow8_sec_{uuid.uuid4().hex[:8]}"
    stores = [MongoStore(uri, database) for _ in range(4)]
    try:
        keys = await asyncio.gather(*(s.secret(TOKEN_KEY_NAME, new_key) for s in stores))  # four workers at once
        assert len(set(keys)) == 1 and len(keys[0]) == 32
    finally:
        await stores[0].client.drop_database(database)
        for s in stores:
            await s.close()


async def test_a_line_over_1_mib_is_refused_and_the_connection_closed(make_pool: PoolFactory) -> None:  # noqa: F811
    metrics = Metrics()
    pool = await make_pool(1, metrics=metrics)
    port = pool.slots[0].port
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    under = b'{"type": "complete", "token": "t", "output": "' + b"x" * (1024 * 1024 - 100) + b'"}\n'
    writer.write(under)
    async with asyncio.timeout(GUARD_S):
        reply = orjson.loads(await reader.readline())
    assert reply["type"] == "error" and "no flowlet waiting" in reply["error"]  # under the cap: read, answered
    writer.write(b"x" * (1024 * 1024 + 1))
    async with asyncio.timeout(GUARD_S):
        reply = orjson.loads(await reader.readline())
        assert await reader.read() == b""  # closed
    assert reply["type"] == "error" and f"at most {1024 * 1024} bytes" in reply["error"]
    writer.close()
    async with asyncio.timeout(GUARD_S):
        await pool.refused("line_too_long")
    assert refusals(metrics, "line_too_long") == 1


async def test_connections_past_the_cap_are_refused_but_the_pool_still_dispatches(
    make_pool: PoolFactory,  # noqa: F811
) -> None:
    pool = await make_pool(1, max_connections=3)
    port = pool.slots[0].port
    held = []
    for _ in range(3):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b'{"type": "status"}\n')
        async with asyncio.timeout(GUARD_S):
            assert orjson.loads(await reader.readline())["type"] == "status"  # served: it counts
        held.append(writer)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)  # refused before it says anything
        async with asyncio.timeout(GUARD_S):
            reply = orjson.loads(await reader.readline())
            assert await reader.read() == b""
        writer.close()
        assert reply["type"] == "error" and "3 connections open, its cap" in reply["error"]
        async with asyncio.timeout(GUARD_S):
            await pool.refused("too_many_connections")
        # the pool's own signed run is not locked out by them
        result = await pool.submit(make_task("echo", {"past": "the cap"}))
        assert result.ok and result.output == {"past": "the cap"}
    finally:
        for w in held:
            w.close()


async def test_an_idle_outside_connection_is_closed_a_running_task_is_not(make_pool: PoolFactory) -> None:  # noqa: F811
    pool = await make_pool(1, idle_timeout_s=0.3)
    port = pool.slots[0].port
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b'{"type": "sta')  # half a line, then nothing
    async with asyncio.timeout(GUARD_S):
        reply = orjson.loads(await reader.readline())
        assert await reader.read() == b""
    writer.close()
    assert reply["type"] == "error" and "no whole line for 0.3 s" in reply["error"]
    async with asyncio.timeout(GUARD_S):
        await pool.refused("idle_timeout")
    # the dispatcher's connection waits on its task, however long, without a line
    result = await pool.submit(make_task("slow_first", {"first": 1.0}))
    assert result.ok


LOUD = """
import os, sys
print("hello from import")
os.write(1, b"raw bytes on fd 1 at import\\n")

def loud(ctx):
    print("hello from the module")
    return {"said": "hello"}

MODULES = {"loud": loud}
"""


async def test_a_module_that_prints_at_import_still_runs_on_its_channel(
    make_pool: PoolFactory,  # noqa: F811
    tmp_path: Path,
    capfd: pytest.CaptureFixture[str],
) -> None:
    loud = tmp_path / "loud.py"
    loud.write_text(LOUD)
    pool = await make_pool(1, module_sources=[str(loud)])
    result = await pool.submit(make_task("loud"))
    assert result.ok and result.output == {"said": "hello"}
    assert "hello from import" in capfd.readouterr().err  # on stderr, where the worker logs


def test_a_pool_refuses_impossible_bounds() -> None:
    from flow8_streams.channels import ChannelSettingsInvalid

    for bad in ({"max_connections": 0}, {"idle_timeout_s": 0}, {"max_message_bytes": 0}):
        with pytest.raises(ChannelSettingsInvalid):
            ChannelPool(range(20_000, 20_001), **bad)  # type: ignore[arg-type]


async def test_the_example_review_module_hands_out_flow8s_token_privately(
    make_pool: PoolFactory,  # noqa: F811
    tmp_path: Path,
) -> None:
    examples = Path(__file__).resolve().parents[2] / "examples" / "modules.py"
    pending: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    pool = await make_pool(1, module_sources=[str(examples)], on_pending=lambda *args: pending.set_result(args[3]))
    task = make_task("request_review", {"queue": str(tmp_path / "reviews")})
    running = pool.submit_nowait(task)
    async with asyncio.timeout(GUARD_S):
        port = port_of(await pending)
    [request] = (tmp_path / "reviews").iterdir()
    assert request.stat().st_mode & 0o077 == 0  # the owner's only
    token = orjson.loads(request.read_text())["token"]
    assert token == token_for(task)
    assert isinstance(await client.complete(port, token, output={"approved": True}), Ack)
    assert (await running).output == {"approved": True}
