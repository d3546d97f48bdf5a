"""The streams commands of ``flow8``, black box: subprocesses of the installed console
script against a real worker group (its own topics, group and database)."""

from __future__ import annotations

import asyncio
import json
import os
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from flow8_streams.settings import load_settings
from flow8_streams.stores.mongo import MongoStore
from tests.conformance.streams_harness import WorkerGroup
from tests.flow8_cli import Result, run

RESULT_KEYS = {
    "play_id", "company_id", "flow", "flow_version", "status", "output", "error", "started_at", "ended_at",
    "last_seq", "head_hash", "input", "flowlets",
}  # fmt: skip
SETTINGS_ENV = ("FLOW8_", "MONGODB_", "KAFKA_", "SERVER_", "CHANNEL_", "WORKER_")


def services(test: Any) -> Any:
    """The marks of a test that needs the worker group (the others need no server)."""
    return pytest.mark.kafka(pytest.mark.mongo(pytest.mark.slow(test)))


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(SETTINGS_ENV)}
    env.update(NO_COLOR="1", COLUMNS="200", **extra)
    return env


def flow8(*args: str | Path, cwd: Path, env: dict[str, str], timeout: float = 90) -> Result:
    return run(*args, cwd=cwd, env=env, timeout=timeout)


def assert_clean_error(result: Result, *fragments: str) -> None:
    """Exit 2, one paragraph on stderr naming the problem, no traceback."""
    assert result.code == 2, result
    assert "Traceback" not in result.err + result.out, result
    message = result.err.strip()
    assert message.startswith("error:"), message
    assert "\n\n" not in message, message
    for fragment in fragments:
        assert fragment in message, (fragment, message)


@pytest.fixture(scope="module")
def group_env(worker_group: WorkerGroup) -> dict[str, str]:
    """What a user of this deployment exports: the servers, the database, the topic prefix."""
    s = worker_group.settings
    return clean_env(
        KAFKA_BOOTSTRAP_SERVERS=s.kafka_bootstrap_servers,
        MONGODB_URI=s.mongodb_uri,
        MONGODB_DATABASE=s.mongodb_database,
        FLOW8_TOPICS__PREFIX=s.topics.prefix,
    )


def write_flow(path: Path, name: str, *flowlets: dict[str, Any]) -> Path:
    path.write_text(json.dumps({"name": name, "flowlets": list(flowlets)}))
    return path


@pytest.fixture(scope="module")
def echo_flow(group_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """(company, flow name) of an echo flow stored with ``flows put``."""
    cwd = tmp_path_factory.mktemp("put")
    company = f"cli-{uuid.uuid4().hex[:8]}"
    flow_file = write_flow(
        cwd / "echo.json", "cli-echo", {"name": "say", "module_ref": "echo", "input": {"said": "${input.said}"}}
    )
    put = flow8("flows", "put", flow_file, "--company", company, cwd=cwd, env=group_env)
    assert put.code == 0, put
    assert "cli-echo" in put.out and company in put.out, put.out
    return company, "cli-echo"


@pytest.fixture(scope="module")
def produced(
    echo_flow: tuple[str, str], group_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> list[str]:
    """The play ids ``flow8 produce --count 5`` printed."""
    company, name = echo_flow
    cwd = tmp_path_factory.mktemp("produce")
    result = flow8(
        "produce", "--flow", name, "--company", company, "--count", "5", "--input", '{"said": "hi"}',
        cwd=cwd, env=group_env,
    )  # fmt: skip
    assert result.code == 0, result
    ids = result.lines()
    assert len(ids) == 5, result
    for play_id in ids:
        uuid.UUID(play_id)
    assert "sent 5 command(s)" in result.err, result.err
    return ids


@services
def test_flows_put_then_get_prints_the_definition(
    echo_flow: tuple[str, str], group_env: dict[str, str], tmp_path: Path
) -> None:
    company, name = echo_flow
    got = flow8("flows", "get", name, "--company", company, cwd=tmp_path, env=group_env)
    assert got.code == 0, got
    flow = json.loads(got.out)
    assert flow["name"] == name and flow["version"] == 1
    assert [(f["name"], f["module_ref"], f["input"]) for f in flow["flowlets"]] == [
        ("say", "echo", {"said": "${input.said}"})
    ]
    missing = flow8("flows", "get", name, "--company", "nobody", cwd=tmp_path, env=group_env)
    assert missing.code != 0 and "Traceback" not in missing.err, missing
    assert "'nobody'" in missing.err and name in missing.err, missing.err


@services
def test_produce_then_results_tail_prints_one_result_per_play(
    produced: list[str], echo_flow: tuple[str, str], group_env: dict[str, str], tmp_path: Path
) -> None:
    company, name = echo_flow
    tail = flow8(
        "results", "tail", "--from-beginning", "--count", "5", "--timeout", "60", "--company", company,
        cwd=tmp_path, env=group_env,
    )  # fmt: skip
    assert tail.code == 0, tail
    results = [json.loads(line) for line in tail.lines()]
    assert len(results) == 5, tail
    for result in results:
        assert set(result) == RESULT_KEYS, result
        assert result["company_id"] == company and result["flow"] == name and result["flow_version"] == 1
        assert result["status"] == "succeeded" and result["error"] is None
        assert result["last_seq"] > 1 and len(result["head_hash"]) == 64  # the terminal event: an audit anchor
        assert result["output"] == {"say": {"said": "hi"}}
        assert result["started_at"] <= result["ended_at"]
        assert set(result["flowlets"]) == {"say"} and result["flowlets"]["say"]["status"] == "succeeded"
    assert sorted(r["play_id"] for r in results) == sorted(produced)


@services
async def test_plays_show_reads_mongodb_from_the_environment(
    produced: list[str], echo_flow: tuple[str, str], group_env: dict[str, str], worker_group: WorkerGroup,
    tmp_path: Path,
) -> None:  # fmt: skip
    company, _ = echo_flow
    play_id = produced[0]
    s = worker_group.settings
    store = MongoStore(s.mongodb_uri, s.mongodb_database)
    try:  # the projector writes after the result: wait until it holds the finished play
        deadline = time.monotonic() + 60
        while (state := await store.plays.get(company, play_id)) is None or not state.finished:
            assert time.monotonic() < deadline, f"play {play_id} not projected as finished within 60 s"
            await asyncio.sleep(0.1)  # the projection has no event of its own to await
    finally:
        await store.close()
    # no --db and no ./flow8.db: $MONGODB_URI (and $MONGODB_DATABASE) name where plays are
    shown = flow8("plays", "show", play_id, cwd=tmp_path, env=group_env)
    assert shown.code == 0, shown
    play = json.loads(shown.out)
    assert play["play_id"] == play_id and play["company_id"] == company
    assert play["status"] == "succeeded"
    assert play["output"] == {"say": {"said": "hi"}}
    assert not (tmp_path / "flow8.db").exists()


@services
def test_kv_get_reads_what_a_kv_set_flow_stored(group_env: dict[str, str], tmp_path: Path) -> None:
    company = f"kv-{uuid.uuid4().hex[:8]}"
    flow_file = write_flow(
        tmp_path / "kv.json", "cli-kv", {"name": "store", "module_ref": "kv.set",
                                         "input": {"key": "greeting", "value": "${input.greeting}"}},
    )  # fmt: skip
    assert flow8("flows", "put", flow_file, "--company", company, cwd=tmp_path, env=group_env).code == 0
    value = {"text": "hello", "n": 3}
    produced = flow8(
        "produce", "--flow", "cli-kv", "--company", company, "--input", json.dumps({"greeting": value}),
        cwd=tmp_path, env=group_env,
    )  # fmt: skip
    assert produced.code == 0, produced
    tail = flow8(
        "results", "tail", "--from-beginning", "--count", "1", "--timeout", "60", "--company", company,
        cwd=tmp_path, env=group_env,
    )  # fmt: skip
    assert [json.loads(line)["status"] for line in tail.lines()] == ["succeeded"], tail
    # the URI from the environment only: a flag would show it in the process list
    got = flow8("kv", "get", "greeting", "--company", company, cwd=tmp_path, env=group_env)
    assert got.code == 0, got
    assert json.loads(got.out) == value
    absent = flow8("kv", "get", "nope", "--company", company, cwd=tmp_path, env=group_env)
    assert absent.code != 0 and "'nope'" in absent.err and "Traceback" not in absent.err, absent


def test_produce_file_with_a_bad_line_exits_2_naming_it(tmp_path: Path) -> None:
    commands = tmp_path / "cmds.jsonl"
    commands.write_text(
        json.dumps({"type": "StartPlay", "company_id": "c", "flow": "f"}) + "\n"
        + json.dumps({"type": "StartPlay", "company_id": "c"}) + "\n"
        + json.dumps({"type": "CancelPlay", "company_id": "c", "play_id": "p"}) + "\n"
    )  # fmt: skip
    # nothing is sent when a line is bad, so no broker is needed: one that does not answer proves it
    result = flow8("produce", "--file", commands, cwd=tmp_path, env=clean_env(KAFKA_BOOTSTRAP_SERVERS="127.0.0.1:9"))
    assert_clean_error(result, f"{commands} line 2", "flow")
    assert result.out == ""


def test_worker_refuses_a_pool_larger_than_its_port_range(tmp_path: Path) -> None:
    env = clean_env(CHANNEL_PORT_RANGE="7701-7703", CHANNEL_POOL_SIZE="5", KAFKA_BOOTSTRAP_SERVERS="127.0.0.1:9")
    result = flow8("worker", cwd=tmp_path, env=env, timeout=60)
    assert_clean_error(result, "CHANNEL_POOL_SIZE 5", "CHANNEL_PORT_RANGE 7701-7703", "3 ports")
    assert result.out == ""


def test_settings_precedence_yaml_then_env_then_flag(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith(SETTINGS_ENV):
            monkeypatch.delenv(name)
    config = tmp_path / "flow8.yaml"
    config.write_text("server_port: 5001\ntopics:\n  prefix: from-yaml\n  partitions: 6\n")

    from_yaml = load_settings(config)
    assert (from_yaml.server_port, from_yaml.topics.prefix, from_yaml.topics.partitions) == (5001, "from-yaml", 6)

    monkeypatch.setenv("SERVER_PORT", "5002")
    monkeypatch.setenv("FLOW8_TOPICS__PREFIX", "from-env")
    from_env = load_settings(config)
    assert (from_env.server_port, from_env.topics.prefix) == (5002, "from-env")
    assert from_env.topics.partitions == 6, "a nested value the environment does not set still comes from YAML"

    from_flag = load_settings(config, server_port=5003, topics={"prefix": "from-flag"})
    assert (from_flag.server_port, from_flag.topics.prefix) == (5003, "from-flag")

    monkeypatch.setenv("FLOW8_CONFIG", str(config))
    assert load_settings().server_port == 5002, "$FLOW8_CONFIG names the YAML file when --config is not given"
    monkeypatch.delenv("SERVER_PORT")
    assert load_settings().server_port == 5001
    assert load_settings(server_port=None).server_port == 5001, "a flag left unset does not override"
