"""What a newcomer types first, black box: the installed ``flow8`` in a subprocess.

No arguments, ``--help`` of every command, an unknown command or option, a bad value, a typo in
the settings file, Ctrl-C during ``flow8 run`` and the commands that follow it (``plays resume``,
``plays cancel``), ``results tail --play-id``, and output at 80 columns when piped.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import pty
import re
import signal
import sqlite3
import subprocess
import threading
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest

from tests.flow8_cli import FLOW8, Result, Running, collect, run, spawn

SCRUBBED_PREFIXES = ("FLOW8_", "MONGODB_", "KAFKA_")
COMMANDS = [
    [], ["run"], ["validate"], ["plays"], ["plays", "list"], ["plays", "show"], ["plays", "cancel"],
    ["plays", "resume"], ["events"], ["kv"], ["kv", "get"], ["schemas"], ["schemas", "export"], ["bench"],
    ["worker"], ["produce"], ["channels"], ["channels", "status"], ["flows"], ["flows", "put"],
    ["flows", "get"], ["results"], ["results", "tail"],
]  # fmt: skip


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(SCRUBBED_PREFIXES)}
    env.pop("FORCE_COLOR", None)
    env.update(NO_COLOR="1", COLUMNS="80", **extra)
    return env


def flow8(*args: str | Path, cwd: Path, **env: str) -> Result:
    return run(*args, cwd=cwd, env=_env(**env))


def assert_usage_error(result: Result, *fragments: str) -> None:
    """Exit 2, a one-line reason with a hint to the usage, no traceback."""
    assert result.code == 2, result
    assert "Traceback" not in result.err + result.out, result
    lines = result.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), result.err
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


# ---------------------------------------------------------------- usage


def test_help_of_every_command_prints_its_usage(tmp_path: Path) -> None:
    procs = [(args, spawn(*args, "--help", cwd=tmp_path, env=_env())) for args in COMMANDS]
    for args, running in procs:
        result = collect(running)
        assert result.code == 0, (args, result)
        assert f"Usage: flow8 {' '.join(args)}".rstrip() in " ".join(result.out.split()), (args, result.out)
        assert result.err == "", (args, result.err)


def test_no_arguments_prints_the_usage_and_asks_for_a_command(tmp_path: Path) -> None:
    result = flow8(cwd=tmp_path)
    assert result.code == 2 and "Usage: flow8" in result.out and "Traceback" not in result.err, result
    assert result.err.strip() == "error: give a command", result.err


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["nosuch"], ["No such command 'nosuch'", "flow8 -h"]),
        (["run", "--bogus"], ["No such option: --bogus", "flow8 run -h"]),
        (["plays", "list", "--limit", "many"], ["'--limit'", "flow8 plays list -h"]),
        (["plays", "cancel", "p1"], ["--company", "flow8 plays cancel -h"]),
        (["results", "tail", "--play-id", "no way"], ["--play-id 'no way'"]),
    ],
)
def test_a_usage_error_is_one_line_and_exit_2(tmp_path: Path, args: list[str], fragments: list[str]) -> None:
    assert_usage_error(flow8(*args, cwd=tmp_path), *fragments)


def test_a_typo_in_a_nested_settings_block_is_an_error_naming_it(tmp_path: Path) -> None:
    settings = tmp_path / "flow8.yaml"
    settings.write_text("topics:\n  prefx: mine\ncache:\n  flows:\n    ttl_secs: 5\nexecution:\n  timeout: 3\n")
    flow = tmp_path / "flow.json"
    flow.write_text('{"name": "f", "flowlets": [{"name": "a", "module_ref": "echo"}]}')
    result = flow8("validate", flow, cwd=tmp_path, FLOW8_CONFIG=str(settings))
    assert_usage_error(result, "topics.prefx: unknown setting", "cache.flows.ttl_secs", "execution.timeout")


# ---------------------------------------------------------------- Ctrl-C, resume, cancel


def _foreground() -> None:
    """SIGINT as a user's terminal delivers it to a foreground process: default, not blocked.
    A test run may pass it on ignored (started in the background of a shell) or blocked, and a
    Python started so never raises KeyboardInterrupt."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


def _slow_flow(path: Path, seconds: float) -> Path:
    path.write_text(
        json.dumps(
            {
                "name": "slow",
                "flowlets": [
                    {"name": "wait", "module_ref": "sleep", "input": {"seconds": seconds}},
                    {"name": "after", "module_ref": "echo", "depends_on": ["wait"]},
                ],
            }
        )
    )
    return path


def _wait_until_running(db: Path, play_id: str, running: Running, deadline: float = 30) -> None:
    """Until the db holds the play as running with its slow flowlet started (bounded)."""
    until = time.monotonic() + deadline
    while time.monotonic() < until:
        assert running.proc.poll() is None, collect(running)
        if db.exists():
            with sqlite3.connect(db) as conn:
                try:
                    row = conn.execute("SELECT status, state FROM plays WHERE play_id = ?", (play_id,)).fetchone()
                except sqlite3.OperationalError:  # the schema is being created
                    row = None
            if row is not None and row[0] == "running" and json.loads(row[1])["flowlets"]["wait"]["attempts"]:
                return
        time.sleep(0.05)
    raise AssertionError(f"play {play_id} was not running within {deadline}s")


def _interrupted_run(
    tmp_path: Path, play_id: str, seconds: float, while_running: Callable[[Path], None] | None = None
) -> Path:
    """A ``flow8 run`` of a slow flow, stopped with SIGINT while its slow flowlet runs."""
    db = tmp_path / "flow8.db"
    flow = _slow_flow(tmp_path / "slow.json", seconds)
    running = spawn(
        "run", flow, "--db", db, "--play-id", play_id, "--company", "acme", cwd=tmp_path, env=_env(),
        preexec_fn=_foreground,
    )  # fmt: skip
    _wait_until_running(db, play_id, running)
    if while_running is not None:
        while_running(db)
    running.proc.send_signal(signal.SIGINT)
    result = collect(running, timeout=30)
    assert result.code == 130, result
    assert "Traceback" not in result.err, result
    assert result.err.strip() == (
        f"interrupted: play {play_id} is still running; resume it with: flow8 plays resume {play_id}"
    ), result.err
    return db


def test_ctrl_c_leaves_the_play_resumable_and_says_how(tmp_path: Path) -> None:
    db = _interrupted_run(tmp_path, "p-ctrl-c", seconds=1.0)
    shown = flow8("plays", "show", "p-ctrl-c", "--db", db, cwd=tmp_path)
    assert shown.code == 0 and shown.json()["status"] == "running", shown

    resumed = flow8("plays", "resume", "p-ctrl-c", "--db", db, cwd=tmp_path)
    assert resumed.code == 0, resumed
    assert "play p-ctrl-c succeeded" in resumed.out, resumed.out  # printed as flow8 run prints it
    as_json = flow8("plays", "show", "p-ctrl-c", "--db", db, cwd=tmp_path).json()
    assert as_json["status"] == "succeeded" and as_json["flowlets"]["after"]["status"] == "succeeded"
    assert flow8("events", "p-ctrl-c", "--db", db, "--verify", cwd=tmp_path).code == 0

    again = flow8("plays", "resume", "p-ctrl-c", "--db", db, cwd=tmp_path)
    assert again.code == 1 and "already finished: succeeded" in again.err, again
    missing = flow8("plays", "resume", "p-none", "--db", db, cwd=tmp_path)
    assert missing.code == 1 and "no play p-none" in missing.err, missing
    streams = flow8("plays", "resume", "p-ctrl-c", cwd=tmp_path, MONGODB_URI="mongodb://127.0.0.1:1")
    assert_usage_error(streams, "the workers resume unfinished plays themselves")


def test_a_play_another_process_runs_is_neither_cancelled_nor_resumed_nor_run_again(tmp_path: Path) -> None:
    def meanwhile(db: Path) -> None:
        flow = tmp_path / "slow.json"
        busy = [
            ("plays", "cancel", "p-busy", "--company", "acme", "--db", db),
            ("plays", "resume", "p-busy", "--db", db),
            ("run", flow, "--play-id", "p-busy", "--company", "acme", "--db", db),
        ]
        for args in busy:
            result = flow8(*args, cwd=tmp_path)
            assert result.code == 1, (args, result)
            assert "play p-busy is being run by another flow8 process" in result.err, (args, result)
        shown = flow8("plays", "show", "p-busy", "--db", db, cwd=tmp_path).json()
        assert shown["status"] == "running" and shown["seq"] == 2, shown  # nothing written meanwhile

    db = _interrupted_run(tmp_path, "p-busy", seconds=600, while_running=meanwhile)
    assert flow8("events", "p-busy", "--db", db, "--verify", cwd=tmp_path).code == 0


def test_ctrl_c_on_a_terminal_ends_the_live_view_with_the_same_one_line(tmp_path: Path) -> None:
    db = tmp_path / "flow8.db"
    flow = _slow_flow(tmp_path / "slow.json", 600)
    controller, terminal = pty.openpty()  # a terminal on stdout: run shows its live view
    env = _env(TERM="xterm", LINES="40")
    proc = subprocess.Popen(
        [FLOW8, "run", flow, "--db", db, "--play-id", "p-tty"],
        cwd=tmp_path, env=env, stdin=subprocess.DEVNULL, stdout=terminal, stderr=subprocess.PIPE,
        preexec_fn=_foreground,
    )  # fmt: skip
    os.close(terminal)
    shown = bytearray()
    drawn = threading.Event()

    def drain() -> None:  # the terminal is read all along: a full one would block the live view
        with contextlib.suppress(OSError):  # EIO: the process closed the terminal
            while chunk := os.read(controller, 65536):
                shown.extend(chunk)
                if b"wait" in shown and b"running" in shown:
                    drawn.set()

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    try:
        _wait_until_running(db, "p-tty", Running(proc, time.monotonic()))
        assert drawn.wait(timeout=30), bytes(shown)  # a live frame shows the play running
        proc.send_signal(signal.SIGINT)
        err = proc.communicate(timeout=30)[1].decode("utf-8", "replace")
        reader.join(timeout=10)
    finally:
        os.close(controller)
    assert proc.returncode == 130, (proc.returncode, err)
    assert err.strip() == "interrupted: play p-tty is still running; resume it with: flow8 plays resume p-tty", err
    assert re.search(rb"\x1b\[[0-9;]*(3[0-9]|9[0-7])m", shown) is None, bytes(shown)  # NO_COLOR: no colours


def test_plays_cancel_on_the_local_database(tmp_path: Path) -> None:
    db = _interrupted_run(tmp_path, "p-cancel", seconds=600)

    wrong = flow8("plays", "cancel", "p-cancel", "--company", "other", "--db", db, cwd=tmp_path)
    assert wrong.code == 2 and "does not own that play" in wrong.err, wrong
    missing = flow8("plays", "cancel", "p-none", "--company", "acme", "--db", db, cwd=tmp_path)
    assert missing.code == 1 and "no play p-none" in missing.err, missing

    cancelled = flow8("plays", "cancel", "p-cancel", "--company", "acme", "--db", db, cwd=tmp_path)
    assert cancelled.code == 0 and "play p-cancel cancelled" in cancelled.out, cancelled
    play = flow8("plays", "show", "p-cancel", "--db", db, cwd=tmp_path).json()
    assert play["status"] == "cancelled", play
    assert {f["status"] for f in play["flowlets"].values()} == {"cancelled", "skipped"}, play
    assert flow8("events", "p-cancel", "--db", db, "--verify", cwd=tmp_path).code == 0

    again = flow8("plays", "cancel", "p-cancel", "--company", "acme", "--db", db, cwd=tmp_path)
    assert again.code == 1 and "already finished: cancelled" in again.err, again


# ---------------------------------------------------------------- narrow terminals, pipes


LONG = "process-documents-from-the-inbox-of-acme"


def test_names_are_whole_at_80_columns_and_piped(tmp_path: Path) -> None:
    flow = tmp_path / "long.json"
    flow.write_text(
        json.dumps(
            {
                "name": "a-rather-long-flow-name",
                "flowlets": [
                    {"name": LONG, "module_ref": "echo"},
                    {"name": "aggregate-everything-that-was-processed", "module_ref": "noop", "depends_on": [LONG]},
                ],
            }
        )
    )
    db = tmp_path / "flow8.db"
    play_id = str(uuid.uuid4())
    ran = flow8("run", flow, "--db", db, "--play-id", play_id, "--company", "a-company-with-a-long-name", cwd=tmp_path)
    assert ran.code == 0, ran
    assert "…" not in ran.out, ran.out
    header, *rows = ran.out.split("\nplay ")[0].splitlines()
    first_column = "".join(row[: header.index("module")].strip() for row in rows)  # a name may wrap, whole
    assert first_column == LONG + "aggregate-everything-that-was-processed", ran.out

    listed = flow8("plays", "list", "--db", db, cwd=tmp_path)
    assert listed.code == 0 and "…" not in listed.out, listed.out
    row = next(line for line in listed.out.splitlines() if play_id in line)  # piped: one line per play
    for value in ("a-company-with-a-long-name", "a-rather-long-flow-name v1", "succeeded"):
        assert value in row, (value, row)

    events = flow8("events", play_id, "--db", db, cwd=tmp_path)
    assert events.code == 0 and "…" not in events.out, events.out
    assert any("FlowletScheduled" in line and LONG in line for line in events.out.splitlines()), events.out


# ---------------------------------------------------------------- streams: Kafka + MongoDB


@pytest.fixture
def streams_env() -> dict[str, str]:
    from tests.services import require_service

    kafka = require_service("KAFKA_BOOTSTRAP_SERVERS")
    mongo = require_service("MONGODB_URI")
    tag = uuid.uuid4().hex[:10]
    return {
        "KAFKA_BOOTSTRAP_SERVERS": kafka,
        "MONGODB_URI": mongo,
        "MONGODB_DATABASE": f"newcomer-{tag}",
        "FLOW8_TOPICS__PREFIX": f"newcomer-{tag}",
        "FLOW8_TOPICS__PARTITIONS": "1",
    }


async def _topics(env: dict[str, str]) -> None:
    from flow8_streams.runtimes.streams.admin import ensure_topics
    from flow8_streams.settings import load_settings

    await ensure_topics(
        load_settings(
            kafka_bootstrap_servers=env["KAFKA_BOOTSTRAP_SERVERS"],
            topics={"prefix": env["FLOW8_TOPICS__PREFIX"], "partitions": 1},
        )
    )


async def _produce(env: dict[str, str], topic: str, values: list[bytes]) -> None:
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=env["KAFKA_BOOTSTRAP_SERVERS"])
    await producer.start()
    try:
        for value in values:
            await producer.send_and_wait(topic, value, key=b"acme")
    finally:
        await producer.stop()


def _result(play_id: str) -> bytes:
    now = datetime.now(UTC).isoformat()
    return json.dumps(
        {"play_id": play_id, "company_id": "acme", "flow": "f", "flow_version": 1, "status": "succeeded",
         "output": {"n": play_id}, "error": None, "started_at": now, "ended_at": now}
    ).encode()  # fmt: skip


@pytest.mark.kafka
def test_results_tail_follows_one_play_and_stops(tmp_path: Path, streams_env: dict[str, str]) -> None:
    prefix = streams_env["FLOW8_TOPICS__PREFIX"]
    asyncio.run(_topics(streams_env))
    asyncio.run(_produce(streams_env, f"{prefix}.play-results", [_result("p-a"), _result("p-b"), _result("p-c")]))

    found = flow8("results", "tail", "--play-id", "p-b", "--timeout", "20", cwd=tmp_path, **streams_env)
    assert found.code == 0, found
    assert [r["play_id"] for r in found.json_lines()] == ["p-b"], found.out

    started = time.monotonic()
    missing = flow8("results", "tail", "--play-id", "p-none", "--timeout", "1", cwd=tmp_path, **streams_env)
    assert missing.code == 1 and "no result for play p-none within 1s" in missing.err, missing
    assert missing.out == "" and time.monotonic() - started < 30


@pytest.mark.kafka
@pytest.mark.mongo
def test_plays_cancel_on_mongodb_sends_a_cancel_play(tmp_path: Path, streams_env: dict[str, str]) -> None:
    from flow8_streams.domain.flow import FlowDefinition
    from flow8_streams.domain.messages import Start
    from flow8_streams.engine import step
    from flow8_streams.stores.mongo import MongoStore

    prefix = streams_env["FLOW8_TOPICS__PREFIX"]
    asyncio.run(_topics(streams_env))
    flow = FlowDefinition.model_validate(json.loads(_slow_flow(tmp_path / "slow.json", 600).read_text()))
    _, running = step(None, Start(play_id="p-live", company_id="acme", flow=flow, input={}), datetime.now(UTC))
    assert running is not None and not running.finished

    async def project() -> None:  # what the projector writes for a running play
        store = MongoStore(streams_env["MONGODB_URI"], streams_env["MONGODB_DATABASE"])
        try:
            await store.open()
            await store.plays.save([running])
        finally:
            await store.close()

    asyncio.run(project())
    other = flow8("plays", "cancel", "p-live", "--company", "other", cwd=tmp_path, **streams_env)
    assert other.code == 1 and "has no play p-live" in other.err, other
    sent = flow8("plays", "cancel", "p-live", "--company", "acme", cwd=tmp_path, **streams_env)
    assert sent.code == 0 and f"sent CancelPlay for play p-live to {prefix}.commands" in sent.out, sent

    async def commands() -> list[dict[str, object]]:
        from aiokafka import AIOKafkaConsumer

        consumer = AIOKafkaConsumer(
            f"{prefix}.commands", bootstrap_servers=streams_env["KAFKA_BOOTSTRAP_SERVERS"],
            auto_offset_reset="earliest", isolation_level="read_committed",
        )  # fmt: skip
        await consumer.start()
        try:
            batch = await consumer.getmany(timeout_ms=10_000)
            return [json.loads(m.value or b"") for records in batch.values() for m in records]
        finally:
            await consumer.stop()

    assert [(c["type"], c["company_id"], c["play_id"]) for c in asyncio.run(commands())] == [
        ("CancelPlay", "acme", "p-live")
    ]
