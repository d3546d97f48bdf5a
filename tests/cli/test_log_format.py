"""``flow8 --log-format json|text`` and ``FLOW8_LOG_FORMAT``, black box: the installed ``flow8``
as a subprocess (``flow8 run``, with and without channels) and a real ``flow8 worker`` on Kafka
and FerretDB. JSON lines parse one by one and carry the play context of the module that logged."""

from __future__ import annotations

import asyncio
import json
import os
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from flow8_streams.domain.flow import FlowDefinition
from flow8_streams.domain.messages import CancelPlay
from tests.channels.conftest import free_port_block
from tests.conformance.streams_harness import StreamsHarness
from tests.flow8_cli import Result, run
from tests.streams.support import running_group

SCRUBBED_PREFIXES = ("FLOW8_", "MONGODB_", "KAFKA_", "CHANNEL_", "SERVER_")
PASSWORD = "hunter2-s3cret"

MODULES = """
import logging, os

def talk(ctx):
    ctx.log.warning("talk says hello from %s", ctx.flowlet)
    logging.getLogger("custom.thing").warning("a logger of the module's own")
    return {"ok": True}

async def fails_loudly(ctx):
    try:
        raise ValueError("two\\nlines, and " + os.environ.get("MONGODB_URI", "no uri"))
    except ValueError:
        ctx.log.exception("caught it, uri %s", os.environ.get("MONGODB_URI"))
    return {}

def far_away(ctx):
    ctx.log.warning("far_away runs on a channel")
    return {}
far_away.flow8_channel = True

def dies(ctx):
    os._exit(3)  # its channel worker is gone: the pool says so, about this flowlet
dies.flow8_channel = True

MODULES = {"talk": talk, "fails_loudly": fails_loudly, "far_away": far_away, "dies": dies}
"""

FLOW = {
    "name": "talky",
    "version": 1,
    "flowlets": [
        {"name": "first", "module_ref": "talk", "depends_on": []},
        {"name": "second", "module_ref": "fails_loudly", "depends_on": ["first"]},
    ],
}


def _env(**more: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(SCRUBBED_PREFIXES)}
    env["NO_COLOR"] = "1"
    env.update(more)
    return env


@pytest.fixture
def files(tmp_path: Path) -> Path:
    (tmp_path / "mods.py").write_text(MODULES)
    (tmp_path / "flow.json").write_text(json.dumps(FLOW))
    channel_flow = {**FLOW, "name": "far", "flowlets": [{"name": "away", "module_ref": "far_away", "depends_on": []}]}
    (tmp_path / "far.json").write_text(json.dumps(channel_flow))
    two = [{"name": "away", "module_ref": "far_away", "depends_on": []}, {"name": "gone", "module_ref": "dies"}]
    (tmp_path / "two.json").write_text(json.dumps({**FLOW, "name": "two", "flowlets": two}))
    return tmp_path


def json_lines(text: str) -> list[dict[str, Any]]:
    """Every non-empty line of ``text`` as a JSON object (a line that is not one fails the test)."""
    records = []
    for line in text.splitlines():
        if line.strip():
            try:
                record = json.loads(line)
            except ValueError:
                raise AssertionError(f"not a JSON line: {line!r}\nin:\n{text}") from None
            assert isinstance(record, dict), line
            records.append(record)
    return records


def assert_record_shape(record: dict[str, Any]) -> None:
    assert {"time", "level", "logger", "message"} <= record.keys(), record
    when = datetime.fromisoformat(record["time"])
    assert when.utcoffset() == UTC.utcoffset(None), record["time"]  # UTC, with its offset written
    assert record["level"] in {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}


def one(records: list[dict[str, Any]], message_part: str) -> dict[str, Any]:
    found = [r for r in records if message_part in r["message"]]
    assert len(found) == 1, (message_part, records)
    return found[0]


def run_talky(files: Path, *options: str, env: dict[str, str]) -> tuple[Result, str]:
    play_id = f"p-{uuid.uuid4().hex[:12]}"
    result = run(
        *options,
        "run",
        "flow.json",
        "--modules",
        "mods.py",
        "--company",
        "acme",
        "--play-id",
        play_id,
        "--json",
        cwd=files,
        env=env,
    )
    assert result.code == 0, result
    assert result.json()["status"] == "succeeded"
    return result, play_id


def assert_talky_json(result: Result, play_id: str) -> None:
    records = json_lines(result.err)
    for record in records:
        assert_record_shape(record)
    hello = one(records, "talk says hello from first")
    assert hello["logger"] == "flow8.module" and hello["level"] == "WARNING"
    assert (hello["company_id"], hello["play_id"], hello["flowlet"]) == ("acme", play_id, "first")
    # a logger of the module's own, on the module's thread, has the context too
    own = one(records, "a logger of the module's own")
    assert (own["logger"], own["play_id"], own["flowlet"]) == ("custom.thing", play_id, "first")
    caught = one(records, "caught it")
    assert (caught["level"], caught["flowlet"]) == ("ERROR", "second")
    assert "ValueError: two\nlines" in caught["exc_info"]  # the traceback: one string field


def test_log_format_json_option_gives_json_lines_with_the_play_context(files: Path) -> None:
    result, play_id = run_talky(files, "--log-format", "json", env=_env())
    assert_talky_json(result, play_id)


def test_flow8_log_format_env_gives_the_same(files: Path) -> None:
    result, play_id = run_talky(files, env=_env(FLOW8_LOG_FORMAT="json"))
    assert_talky_json(result, play_id)


def test_the_option_wins_over_the_environment(files: Path) -> None:
    result, play_id = run_talky(files, "--log-format", "json", env=_env(FLOW8_LOG_FORMAT="text"))
    assert_talky_json(result, play_id)


def test_text_is_the_default_and_shows_the_context_in_short(files: Path) -> None:
    result, play_id = run_talky(files, env=_env())
    hello = [line for line in result.err.splitlines() if "talk says hello" in line]
    assert len(hello) == 1, result.err
    assert f"WARNING flow8.module [acme/{play_id}/first]: talk says hello from first" in hello[0]
    assert "Traceback (most recent call last)" in result.err  # text keeps the traceback readable


def test_no_secret_of_the_connection_strings_in_any_line_tracebacks_included(files: Path) -> None:
    uri = f"mongodb://flow8user:{PASSWORD}@127.0.0.1:1/db"
    for log_format in ("json", "text"):
        result, _ = run_talky(files, "--log-format", log_format, env=_env(MONGODB_URI=uri))
        assert "caught it" in result.err
        assert PASSWORD not in result.err, result.err
        assert "mongodb://flow8user:***@127.0.0.1:1/db" in result.err


@pytest.mark.parametrize(
    ("options", "env", "named"),
    [
        (["--log-format", "xml"], {}, "--log-format 'xml'"),
        (["--log-format", ""], {}, "--log-format ''"),
        ([], {"FLOW8_LOG_FORMAT": "yaml"}, "FLOW8_LOG_FORMAT 'yaml'"),
        (["--log-format", "j" * 100_000], {}, "--log-format 'jjjj"),
    ],
)
def test_a_bad_format_exits_2_naming_the_option_and_the_formats(
    files: Path, options: list[str], env: dict[str, str], named: str
) -> None:
    result = run(*options, "run", "flow.json", "--modules", "mods.py", cwd=files, env=_env(**env))
    assert result.code == 2, result
    assert named in result.err and "text, json" in result.err, result.err
    assert "Traceback" not in result.err and len(result.err) < 400, result.err
    assert result.out == "" and not (files / "flow8.db").exists()  # nothing run, nothing written


def test_channel_workers_log_in_the_format_of_the_run(files: Path) -> None:
    ports = free_port_block(2)
    env = _env(CHANNEL_PORT_RANGE=f"{ports[0]}-{ports[-1]}", CHANNEL_POOL_SIZE="1", CHANNEL_POOL_WARM="1")
    play_id = f"p-{uuid.uuid4().hex[:12]}"
    result = run(
        "--log-format",
        "json",
        "run",
        "far.json",
        "--channels",
        "--modules",
        "mods.py",
        "--company",
        "acme",
        "--play-id",
        play_id,
        "--json",
        cwd=files,
        env=env,
    )
    assert result.code == 0, result
    far = one(json_lines(result.err), "far_away runs on a channel")  # written by the channel's process
    assert (far["company_id"], far["play_id"], far["flowlet"]) == ("acme", play_id, "away")


def test_the_pool_logs_about_a_task_in_that_tasks_context_not_in_the_one_that_freed_its_channel(
    files: Path,
) -> None:
    """One channel: 'gone' waits for 'away' and is started when 'away' ends, from the code that
    finished 'away'; the pool's line about losing 'gone' names 'gone', in the text and the fields."""
    ports = free_port_block(2)
    env = _env(CHANNEL_PORT_RANGE=f"{ports[0]}-{ports[-1]}", CHANNEL_POOL_SIZE="1", CHANNEL_POOL_WARM="1")
    play_id = f"p-{uuid.uuid4().hex[:12]}"
    result = run(
        "--log-format",
        "json",
        "run",
        "two.json",
        "--channels",
        "--modules",
        "mods.py",
        "--company",
        "acme",
        "--play-id",
        play_id,
        "--json",
        cwd=files,
        env=_env(FLOW8_LOG_LEVEL="info", **{k: env[k] for k in env if k.startswith("CHANNEL_")}),
    )
    assert result.code == 1, result  # 'gone' failed: channel_lost
    records = json_lines(result.err)
    lost = one(records, "lost while running")
    assert f"{play_id}/gone" in lost["message"]
    assert (lost["company_id"], lost["play_id"], lost["flowlet"]) == ("acme", play_id, "gone")
    pool_lines = [r for r in records if r["message"].startswith("channels: ")]  # the pool's own: no play
    assert pool_lines and all("play_id" not in r for r in pool_lines), records


# ---------------------------------------------------------------- a streams worker


def _worker_log(workdir: Path) -> str:
    return "".join(path.read_text() for path in sorted(workdir.glob("worker-*.log")))


async def _until_logged(workdir: Path, fragment: str, timeout: float = 30) -> str:
    deadline = time.monotonic() + timeout
    while fragment not in (text := _worker_log(workdir)):
        if time.monotonic() > deadline:
            raise AssertionError(f"{fragment!r} not in the worker's log after {timeout} s:\n{text}")
        await asyncio.sleep(0.1)  # another process's log file: there is no event to await
    return text


@pytest.mark.kafka
@pytest.mark.mongo
@pytest.mark.slow
@pytest.mark.parametrize("chosen_by", ["environment", "settings file"])
def test_a_worker_in_json_mode_logs_json_lines_with_the_play_context(files: Path, chosen_by: str) -> None:
    workdir = files / "workers"
    env = {"FLOW8_MODULES": str(files / "mods.py"), "FLOW8_LOG_LEVEL": "info"}  # faust's start-up lines too
    if chosen_by == "environment":
        env["FLOW8_LOG_FORMAT"] = "json"
    else:
        (files / "settings.yaml").write_text("log_format: json\n")
        env["FLOW8_CONFIG"] = str(files / "settings.yaml")
    flow = FlowDefinition.model_validate(FLOW).check({"talk", "fails_loudly"})
    play_id = f"p-{uuid.uuid4().hex[:12]}"

    async def scenario(harness: StreamsHarness) -> str:
        state = await harness.run(flow, company_id="acme", play_id=play_id)
        assert state.status.value == "succeeded"
        # another company's cancel of the play: the orchestrator refuses it, in that message's context
        await harness.producer.send(CancelPlay(company_id="intruder", play_id=play_id))
        await harness.producer.flush()
        return await _until_logged(workdir, "dead-lettered")

    with running_group(workdir, extra_env=env) as group:

        async def main() -> str:
            async with StreamsHarness(group) as harness:
                return await scenario(harness)

        text = asyncio.run(main())
    records = json_lines(text)  # every line the worker wrote, faust's and aiokafka's too
    for record in records:
        assert_record_shape(record)
    assert {"faust", "aiokafka"} & {r["logger"].split(".")[0] for r in records}, records
    hello = one(records, "talk says hello from first")
    assert (hello["company_id"], hello["play_id"], hello["flowlet"]) == ("acme", play_id, "first")
    caught = one(records, "caught it")
    assert caught["flowlet"] == "second" and "ValueError: two\nlines" in caught["exc_info"]
    refused = one(records, "dead-lettered")
    assert (refused["company_id"], refused["play_id"]) == ("intruder", play_id)
    assert "flowlet" not in refused


@pytest.mark.parametrize(("level", "shown"), [("info", False), ("debug", True)])
def test_aiokafka_s_line_per_consumer_assignment_shows_at_debug_only(level: str, shown: bool) -> None:
    """A streams instance's history reads assign a lent consumer each time, and aiokafka logs
    every assignment at INFO: a line per read at info level, noise."""
    import logging

    from flow8_streams import logs

    root = logging.getLogger()
    before = (list(root.handlers), root.level)
    try:
        logs.configure("text", level)
        logger = logging.getLogger("aiokafka.consumer.subscription_state")
        assert logger.isEnabledFor(logging.INFO) is shown
        assert logging.getLogger("aiokafka.consumer.fetcher").isEnabledFor(logging.INFO) is True
    finally:
        root.handlers[:], root.level = before
        logging.getLogger("aiokafka.consumer.subscription_state").setLevel(logging.NOTSET)
