"""``flow8 channels status``, ``flow8 run --channels`` and the validation of channel
settings, black box where it is the command (subprocesses of the console script)."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from flow8_streams.channels import ChannelPool, ChannelSettingsInvalid, PortInUse
from flow8_streams.channels.ports import parse_port_range, port_is_free
from flow8_streams.cli.errors import exit_code
from flow8_streams.errors import InvalidInput
from flow8_streams.settings import load_settings

from .conftest import GUARD_S, Dispatches, PoolFactory, free_port_block, make_task

SCRUBBED_PREFIXES = ("FLOW8_", "MONGODB_", "KAFKA_", "CHANNEL_", "SERVER_")


def _flow8() -> str:
    beside = Path(sys.executable).parent / "flow8"
    found = str(beside) if beside.exists() else shutil.which("flow8")
    assert found, "the flow8 console script is not installed (pip install -e .)"
    return found


async def flow8(*args: str | Path, cwd: Path, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    """Run the command without blocking the loop (a pool in this test keeps running)."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(SCRUBBED_PREFIXES)}
    proc = await asyncio.create_subprocess_exec(
        _flow8(),
        *map(str, args),
        cwd=cwd,
        env={**clean, "NO_COLOR": "1", **(env or {})},
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with asyncio.timeout(60):
            out, err = await proc.communicate()
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


@pytest.fixture
def listening() -> Iterator[socket.socket]:
    """A socket listening on a free port: what another instance's channel looks like."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    yield sock
    sock.close()


async def test_channels_status_shows_busy_idle_and_down_ports(make_pool: PoolFactory, tmp_path: Path) -> None:
    dispatches = Dispatches()
    pool = await make_pool(2, spare=1, on_dispatch=dispatches.hook)
    block = f"{pool.ports[0]}-{pool.ports[-1]}"
    task = make_task("hang", company="acme", play_id="play-status", flowlet="scan")
    running = pool.submit_nowait(task)
    busy_port = int((await dispatches.for_play("play-status")).rsplit(":", 1)[1])

    code, out, err = await flow8("channels", "status", "--range", block, "--json", cwd=tmp_path)
    assert code == 0, err
    rows = {r["port"]: r for r in map(json.loads, out.splitlines())}
    assert list(rows) == list(pool.ports)
    busy = rows[busy_port]
    assert (busy["state"], busy["play_id"], busy["flowlet"], busy["company_id"]) == (
        "busy", "play-status", "scan", "acme"
    )  # fmt: skip
    assert busy["since"].endswith("Z") and busy["attempt"] == 1
    idle_port = next(p for p in pool.ports[:2] if p != busy_port)
    assert rows[idle_port]["state"] == "idle" and rows[idle_port]["play_id"] is None
    assert rows[pool.ports[2]] == {"port": pool.ports[2], "state": "down"}

    # the table, with the range from CHANNEL_PORT_RANGE
    code, out, err = await flow8("channels", "status", cwd=tmp_path, env={"CHANNEL_PORT_RANGE": block})
    assert code == 0, err
    lines = {line.split("│")[1].strip(): line for line in out.splitlines() if line.startswith("│")}
    assert "busy" in lines[str(busy_port)] and "play-status" in lines[str(busy_port)]
    assert "idle" in lines[str(idle_port)] and "down" in lines[str(pool.ports[2])]
    assert "2 of 3 ports" in out and "1 busy" in out and "1 idle" in out and "1 down" in out

    pool.cancel("play-status", "scan")
    assert not (await running).ok


async def test_channels_status_shows_the_channels_not_started_yet_as_cold(
    make_pool: PoolFactory, tmp_path: Path
) -> None:
    pool = await make_pool(3, spare=1, warm=1)
    block = f"{pool.ports[0]}-{pool.ports[-1]}"
    code, out, err = await flow8("channels", "status", "--range", block, "--json", cwd=tmp_path)
    assert code == 0, err
    assert [r["state"] for r in map(json.loads, out.splitlines())] == ["idle", "cold", "cold", "down"]
    code, out, err = await flow8("channels", "status", "--range", block, cwd=tmp_path)
    assert code == 0, err
    assert "1 of 4 ports" in out and "1 idle; 2 cold (not started yet), 1 down" in out


async def test_channels_status_rejects_a_bad_range(tmp_path: Path) -> None:
    code, _, err = await flow8("channels", "status", "--range", "7799-7701", cwd=tmp_path)
    assert code == 2 and "--range '7799-7701'" in err and "Traceback" not in err


def _write_flow(path: Path) -> Path:
    path.write_text(
        json.dumps(
            {
                "name": "on-channels",
                "flowlets": [
                    {"name": "a", "module_ref": "sleep", "input": {"seconds": 0.2}, "defer_after_ms": 0},
                    {"name": "b", "module_ref": "kv.incr", "input": {"key": "runs"}, "defer_after_ms": 100},
                    {"name": "c", "module_ref": "echo", "depends_on": ["a", "b"]},
                ],
            }
        )
    )
    return path


async def test_run_with_channels_dispatches_to_the_pool_and_leaves_nothing_running(tmp_path: Path) -> None:
    ports = free_port_block(3)
    env = {"CHANNEL_PORT_RANGE": f"{ports[0]}-{ports[-1]}", "CHANNEL_POOL_SIZE": "2"}
    flow_file = _write_flow(tmp_path / "flow.json")
    code, out, err = await flow8(
        "run", flow_file, "--channels", "--db", "t.db", "--json", "--play-id", "p1", cwd=tmp_path, env=env
    )
    assert code == 0, err
    play = json.loads(out)
    assert play["status"] == "succeeded" and play["flowlets"]["b"]["output"] == 1

    code, out, err = await flow8("events", "p1", "--db", "t.db", "--json", cwd=tmp_path)
    assert code == 0, err
    dispatched = {
        e["payload"]["flowlet"]: e["payload"]["channel"] for e in map(json.loads, out.splitlines())
        if e["type"] == "FlowletDispatched"
    }  # fmt: skip
    assert set(dispatched) == {"a", "b"}
    assert all(ch in {f"127.0.0.1:{p}" for p in ports[:2]} for ch in dispatched.values())
    code, out, _ = await flow8("kv", "get", "runs", "--db", "t.db", cwd=tmp_path)
    assert code == 0 and out.strip() == "1"  # the channel worker wrote the run's KV
    assert all(port_is_free(p) for p in ports)  # the pool closed with the run


async def test_run_with_channels_on_a_port_in_use_exits_2_naming_the_port(
    tmp_path: Path, listening: socket.socket
) -> None:
    ports = free_port_block(3)
    listening.bind(("127.0.0.1", ports[1]))
    listening.listen()
    env = {"CHANNEL_PORT_RANGE": f"{ports[0]}-{ports[-1]}", "CHANNEL_POOL_SIZE": "3"}
    code, out, err = await flow8(
        "run", _write_flow(tmp_path / "f.json"), "--channels", "--db", "t.db", cwd=tmp_path, env=env
    )
    assert code == 2, (out, err)
    assert err.startswith("error:") and f"port {ports[1]} " in err and "overlaps" in err and "Traceback" not in err
    assert port_is_free(ports[0]) and port_is_free(ports[2])  # no worker left behind


async def test_pool_start_fails_on_a_port_in_use_naming_it(listening: socket.socket) -> None:
    ports = free_port_block(4)
    listening.bind(("127.0.0.1", ports[2]))
    listening.listen()
    pool = ChannelPool(ports, 4)
    try:
        with pytest.raises(PortInUse) as caught:
            await pool.start()
    finally:
        await pool.close()
    assert isinstance(caught.value, InvalidInput) and exit_code(caught.value) == 2
    assert f"channel port {ports[2]} on 127.0.0.1 already in use" in str(caught.value)
    assert "CHANNEL_PORT_RANGE probably overlaps" in str(caught.value)
    assert all(port_is_free(p) for p in ports if p != ports[2])


async def test_a_second_pool_on_an_overlapping_range_fails_and_the_first_keeps_serving(
    make_pool: PoolFactory,
) -> None:
    """Two instances with overlapping ranges: the second one's start names the first one's port."""
    first = await make_pool(2)
    second = ChannelPool(first.ports, 2)
    try:
        with pytest.raises(PortInUse) as caught:
            await second.start()
    finally:
        await second.close()
    assert caught.value.ports == first.ports[:2]
    result = await asyncio.wait_for(first.submit(make_task("echo", {"still": 1})), GUARD_S)
    assert result.ok


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ("7701", "CHANNEL_PORT_RANGE '7701' is not a range like 7701-7799"),
        ("a-b", "CHANNEL_PORT_RANGE 'a-b' is not a range"),
        ("7799-7701", "ports must satisfy 1 <= low <= high <= 65535"),
        ("0-10", "ports must satisfy"),
        ("7701-70000", "ports must satisfy"),
    ],
)
def test_bad_port_ranges_are_named(value: str, fragment: str) -> None:
    with pytest.raises(ChannelSettingsInvalid) as caught:
        parse_port_range(value)
    assert fragment in str(caught.value)
    with pytest.raises(InvalidInput) as from_settings:
        load_settings(channel_port_range=value)
    assert value in str(from_settings.value)


def test_a_pool_larger_than_its_range_is_named() -> None:
    with pytest.raises(ChannelSettingsInvalid) as caught:
        ChannelPool("7701-7703", 5)
    assert "CHANNEL_POOL_SIZE 5 is larger than CHANNEL_PORT_RANGE 7701-7703 (3 ports)" in str(caught.value)
    with pytest.raises(InvalidInput) as from_settings:
        load_settings(channel_port_range="7701-7703", channel_pool_size=5)
    assert "CHANNEL_POOL_SIZE 5" in str(from_settings.value)
    with pytest.raises(ChannelSettingsInvalid, match="channel_heartbeat_timeout_seconds 0"):
        ChannelPool("7701-7703", 1, heartbeat_timeout_s=0)


def test_a_pool_from_settings_takes_the_seed_names(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith(("FLOW8_", "CHANNEL_", "SERVER_")):
            monkeypatch.delenv(name)
    monkeypatch.setenv("CHANNEL_PORT_RANGE", "7701-7720")
    monkeypatch.setenv("CHANNEL_POOL_SIZE", "4")
    monkeypatch.setenv("FLOW8_EXECUTION__CHANNEL_HEARTBEAT_TIMEOUT_SECONDS", "12")
    pool = ChannelPool.from_settings(load_settings())
    assert [s.port for s in pool.slots] == [7701, 7702, 7703, 7704]
    assert pool.heartbeat_timeout_s == 12 and pool.execution_timeout_s == 1800
    settings: Any = load_settings()
    assert settings.execution.channel_execution_timeout_seconds == 1800
