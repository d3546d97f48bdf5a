"""The channel port as a door: status, bad lines, and outside completion of pending flowlets."""

from __future__ import annotations

import asyncio
from pathlib import Path

import orjson
import pytest

from flow8_streams.channels import ProtocolError, client
from flow8_streams.channels.protocol import FROM_WORKER, TO_WORKER, Ack, ErrorReply, Status, decode
from flow8_streams.channels.tokens import fingerprint

from .conftest import GUARD_S, Dispatches, PoolFactory, make_task, port_of, token_for


@pytest.mark.parametrize(
    ("line", "fragment"),
    [
        (b"not json", "not JSON"),
        (b"[1, 2]", 'string "type"'),
        (b'{"type": "nope"}', "unknown message type 'nope'"),
        (b'{"type": "complete"}', "complete token: Field required"),
        (b'{"type": "complete", "token": ""}', "complete token"),
        (b'{"type": "run", "task": {}}', "run body: Field required"),
        (b'{"type": "run", "body": "{}", "mac": "00"}', "run mac: String should match pattern"),
        (b'{"type": "status", "extra": 1}', "status extra: Extra inputs are not permitted"),
    ],
)
def test_decode_names_what_is_wrong(line: bytes, fragment: str) -> None:
    with pytest.raises(ProtocolError) as caught:
        decode(line, TO_WORKER)
    assert fragment in str(caught.value)


def test_progress_keeps_any_extra_fields() -> None:
    msg = decode(b'{"type": "progress", "token": "t", "pct": 40, "note": "half"}', TO_WORKER)
    assert msg.type == "progress" and msg.details() == {"pct": 40, "note": "half"}
    assert decode(b'{"type": "heartbeat", "state": "busy"}', FROM_WORKER).type == "heartbeat"


async def _exchange(writer: asyncio.StreamWriter, reader: asyncio.StreamReader, line: bytes) -> dict[str, object]:
    writer.write(line + b"\n")
    await writer.drain()
    async with asyncio.timeout(GUARD_S):
        reply = orjson.loads(await reader.readline())
    assert isinstance(reply, dict)
    return reply


async def test_bad_lines_get_an_error_reply_and_the_worker_keeps_serving(make_pool: PoolFactory) -> None:
    pool = await make_pool(1)
    port = pool.slots[0].port
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        for bad in (b"not json", b'{"type": "nope"}', b'{"type": "complete"}', b"\xff\xfe", b'{"type": 3}'):
            reply = await _exchange(writer, reader, bad)
            assert reply["type"] == "error" and reply["error"], (bad, reply)
        status = await _exchange(writer, reader, b'{"type": "status"}')  # same connection, still open
        assert status["type"] == "status" and status["state"] == "idle" and status["port"] == port
    finally:
        writer.close()
        await writer.wait_closed()
    result = await pool.submit(make_task("echo", {"after": "bad lines"}))
    assert result.ok and result.output == {"after": "bad lines"}


async def test_a_pending_flowlet_is_completed_from_outside_through_its_port(
    make_pool: PoolFactory, tmp_path: Path
) -> None:
    dispatches = Dispatches()
    pending: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    def on_pending(play_id: str, flowlet: str, attempt: int, channel: str) -> None:
        pending.set_result(channel)

    pool = await make_pool(1, on_dispatch=dispatches.hook, on_pending=on_pending, heartbeat_timeout_s=1.0)
    outbox = tmp_path / "handed-to-the-service"
    task = make_task("handoff", {"outbox": str(outbox)}, company="acme", play_id="p-outside")
    running = pool.submit_nowait(task)
    async with asyncio.timeout(GUARD_S):
        channel = await pending
    port = port_of(channel)
    token = outbox.read_text()  # what the module handed the outside service: flow8's token
    assert token == token_for(task)

    status = await client.status(port)
    assert isinstance(status, Status)
    assert (status.state, status.play_id, status.company_id) == ("pending", "p-outside", "acme")
    assert status.token_fingerprint == fingerprint(token) and token not in status.model_dump_json()
    assert isinstance(await client.progress(port, token, pct=50), Ack)
    assert (await client.status(port)).progress == {"pct": 50}
    wrong = await client.complete(port, "not-the-token", output=1)
    assert isinstance(wrong, ErrorReply) and "no flowlet waiting for that token" in wrong.error
    assert not running.done()

    done = await client.complete(port, token, ok=True, output={"pages": 12})
    assert isinstance(done, Ack)
    result = await running
    assert result.ok and result.output == {"pages": 12}
    assert result.started_at <= result.ended_at
    assert (await client.status(port)).state == "idle"
    again = await client.complete(port, token, output=2)  # once only
    assert isinstance(again, ErrorReply)


async def test_an_outside_failure_fails_the_flowlet_as_reported(make_pool: PoolFactory) -> None:
    dispatches = Dispatches()
    pool = await make_pool(1, on_dispatch=dispatches.hook)
    task = make_task("handoff", {"delay": 1.0})
    running = pool.submit_nowait(task)
    port = port_of(await dispatches.for_play(task.play_id))
    # Sent while the module is still working (before it returns Pending): kept for it.
    early = await client.complete(
        port, token_for(task), ok=False, error="OCR service rejected the file", retryable=False
    )
    assert isinstance(early, Ack)
    result = await running
    assert not result.ok and result.error == "OCR service rejected the file" and not result.retryable


async def test_a_module_chosen_token_fails_the_flowlet_not_retryable(make_pool: PoolFactory) -> None:
    pool = await make_pool(1)
    result = await pool.submit(make_task("choose_token"))
    assert not result.ok and not result.retryable
    assert "Pending(token=...) is refused" in (result.error or "")
