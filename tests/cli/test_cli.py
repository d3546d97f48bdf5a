"""The ``flow8`` command, black box: a subprocess of the installed console script.

Every invocation runs in a temporary directory with its own ``--db`` and an
environment without ``FLOW8_*``, ``MONGODB_*`` and ``KAFKA_*`` variables, so
nothing leaks between tests or in from the developer's shell.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sqlite3
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from tests.flow8_cli import Result, collect, run, spawn

REPO = Path(__file__).resolve().parents[2]
EXAMPLE_FLOW = REPO / "examples" / "process-documents.json"
EXAMPLE_MODULES = REPO / "examples" / "modules.py"
DOCUMENTS = [str(REPO / "examples" / "document-pipeline.yaml"), str(REPO / "examples" / "modules.py")]
UTC_Z = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,6})?Z$")
PLAY_KEYS = {"play_id", "company_id", "flow", "status", "output", "flowlets"}
FLOWLET_KEYS = {"status", "attempts", "started_at", "ended_at", "output", "error"}
# settings the command reads from the environment, and what changes how it prints
SCRUBBED_PREFIXES = ("FLOW8_", "MONGODB_", "KAFKA_")
SCRUBBED = {"FORCE_COLOR", "COLUMNS", "TERM_PROGRAM"}


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(SCRUBBED_PREFIXES) and k not in SCRUBBED}
    env["NO_COLOR"] = "1"
    return env


def flow8(*args: str | Path, cwd: Path) -> Result:
    return run(*args, cwd=cwd, env=_env())


def flow8_many(*commands: tuple[str | Path, ...], cwd: Path) -> list[Result]:
    """Independent invocations, run side by side (each one starts a Python: keep the suite quick)."""
    procs = [spawn(*args, cwd=cwd, env=_env()) for args in commands]
    try:
        return [collect(running) for running in procs]
    finally:
        for running in procs:
            if running.proc.poll() is None:
                running.proc.kill()
                running.proc.wait()


def assert_clean_error(result: Result, code: int, *fragments: str) -> None:
    """One paragraph on stderr that names the problem, the exit code, and no traceback."""
    assert result.code == code, result
    assert "Traceback" not in result.err and "Traceback" not in result.out
    message = result.err.strip()
    assert message.startswith("error:"), message
    assert "\n\n" not in message, message
    for fragment in fragments:
        assert fragment in message, (fragment, message)


def write_flow(path: Path, *flowlets: dict[str, Any], name: str = "t") -> Path:
    path.write_text(json.dumps({"name": name, "flowlets": list(flowlets)}))
    return path


def run_example(cwd: Path, db: Path, *extra: str, documents: list[str] = DOCUMENTS) -> Result:
    return flow8(
        "run", EXAMPLE_FLOW, "--modules", EXAMPLE_MODULES,
        "--input", json.dumps({"documents": documents}), "--db", db, "--json", *extra,
        cwd=cwd,
    )  # fmt: skip


def utc(value: str) -> datetime:
    assert UTC_Z.match(value), value
    return datetime.fromisoformat(value)


@dataclass
class Recorded:
    """One successful run of the example flow, shared by the read-only tests."""

    dir: Path
    db: Path
    play: dict[str, Any]


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> Recorded:
    cwd = tmp_path_factory.mktemp("recorded")
    db = cwd / "flow8.db"
    result = run_example(cwd, db, "--play-id", "play-1", "--company", "acme")
    assert result.code == 0, result
    return Recorded(cwd, db, result.json())


# ---------------------------------------------------------------- run


def test_run_prints_the_play_contract(tmp_path: Path) -> None:
    result = run_example(tmp_path, tmp_path / "flow8.db")

    assert result.code == 0, result
    play = result.json()
    assert play.keys() >= PLAY_KEYS
    assert (play["company_id"], play["flow"], play["status"]) == ("default", "process-documents", "succeeded")
    assert play["play_id"]
    assert set(play["flowlets"]) == {"process-1", "process-2", "aggregate"}
    for name, flowlet in play["flowlets"].items():
        assert flowlet.keys() >= FLOWLET_KEYS, name
        assert (flowlet["status"], flowlet["attempts"], flowlet["error"]) == ("succeeded", 1, None)
        assert utc(flowlet["started_at"]) <= utc(flowlet["ended_at"])
    assert utc(play["started_at"]) <= utc(play["ended_at"])

    extracts = [play["flowlets"][f"process-{i}"]["output"] for i in (1, 2)]
    assert [e["source"] for e in extracts] == DOCUMENTS
    assert all(e["files"] == 1 and e["words"] > 0 for e in extracts)
    merged = play["flowlets"]["aggregate"]["output"]
    assert merged["sources"] == DOCUMENTS
    assert merged["words"] == sum(e["words"] for e in extracts)
    assert play["output"] == {"aggregate": merged}


def test_rerun_with_the_same_play_id_prints_the_play_without_running_it(tmp_path: Path) -> None:
    db = tmp_path / "flow8.db"
    first = run_example(tmp_path, db, "--play-id", "doc-run")
    assert first.code == 0, first
    events_before = flow8("events", "doc-run", "--db", db, "--json", cwd=tmp_path).json_lines()

    # Were it run again, extract would fail on these paths.
    (tmp_path / "input.json").write_text(json.dumps({"documents": ["/nope/1", "/nope/2"]}))
    again = flow8(
        "run", EXAMPLE_FLOW, "--modules", EXAMPLE_MODULES, "--input", "@input.json",
        "--db", db, "--json", "--play-id", "doc-run",
        cwd=tmp_path,
    )  # fmt: skip

    assert again.code == 0, again
    assert again.json() == first.json()
    assert again.json()["started_at"] == first.json()["started_at"]
    assert flow8("events", "doc-run", "--db", db, "--json", cwd=tmp_path).json_lines() == events_before


def test_rerun_under_another_company_is_refused(recorded: Recorded, tmp_path: Path) -> None:
    result = run_example(tmp_path, recorded.db, "--play-id", "play-1", "--company", "intruder")
    assert_clean_error(result, 2, "play-1", "'intruder'", "does not own that play")
    assert "acme" not in result.err, "the refusal must not name the play's owner"


def test_a_failing_play_exits_1(tmp_path: Path) -> None:
    flow = write_flow(
        tmp_path / "fails.json",
        {"name": "first", "module_ref": "echo"},
        {"name": "breaks", "module_ref": "fail", "depends_on": ["first"], "input": {"message": "broken"}},
        {"name": "never", "module_ref": "echo", "depends_on": ["breaks"]},
    )
    result = flow8("run", flow, "--db", tmp_path / "flow8.db", "--json", cwd=tmp_path)

    assert result.code == 1, result
    assert "Traceback" not in result.err
    play = result.json()
    assert play["status"] == "failed"
    assert "'breaks'" in play["error"] and "broken" in play["error"]
    assert {n: f["status"] for n, f in play["flowlets"].items()} == {
        "first": "succeeded",
        "breaks": "failed",
        "never": "skipped",
    }

    summary = flow8("run", flow, "--db", tmp_path / "flow8.db", cwd=tmp_path)  # the human summary
    assert summary.code == 1, summary
    assert "Traceback" not in summary.err and "failed" in summary.out


# ---------------------------------------------------------------- user errors: exit 2, one paragraph


def _ok_flowlet(**extra: Any) -> dict[str, Any]:
    return {"name": "a", "module_ref": "echo", **extra}


USER_ERRORS: dict[str, tuple[Any, list[str], list[str]]] = {
    # id: (flow file content (None: no file), extra args, fragments of the message)
    "bad-json-flow": ('{"name": "t", "flowlets": [', [], ["flow.json", "not valid JSON"]),
    "unknown-dependency": (
        {"name": "t", "flowlets": [_ok_flowlet(depends_on=["ghost"])]},
        [],
        ["'a'", "unknown flowlet 'ghost'"],
    ),
    "cycle": (
        {
            "name": "t",
            "flowlets": [_ok_flowlet(depends_on=["b"]), {"name": "b", "module_ref": "echo", "depends_on": ["a"]}],
        },
        [],
        ["cycle", "a -> b -> a"],
    ),
    "unknown-module": (
        {"name": "t", "flowlets": [{"name": "a", "module_ref": "teleport"}]},
        [],
        ["'a'", "'teleport'"],
    ),
    "bad-duration": ({"name": "t", "flowlets": [_ok_flowlet(timeout="soonish")]}, [], ["'a'", "'soonish'"]),
    "timeout-above-1h": ({"name": "t", "flowlets": [_ok_flowlet(timeout="2h")]}, [], ["'a'", "2h", "1h"]),
    "bad-input-json": ({"name": "t", "flowlets": [_ok_flowlet()]}, ["--input", "{nope"], ["--input", "JSON"]),
    "missing-flow-file": (None, [], ["flow.json", "no such file"]),
    "missing-input-file": (
        {"name": "t", "flowlets": [_ok_flowlet()]},
        ["--input", "@missing.json"],
        ["missing.json", "no such file"],
    ),
}


@pytest.fixture(scope="module")
def user_error_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Result]]:
    """Every case of USER_ERRORS, run at once (each in its own directory) to keep the suite quick."""
    started = {}
    for case, (content, extra, _) in USER_ERRORS.items():
        cwd = tmp_path_factory.mktemp(case)
        flow_file = cwd / "flow.json"
        if content is not None:
            flow_file.write_text(content if isinstance(content, str) else json.dumps(content))
        started[case] = (cwd, spawn("run", flow_file, "--db", cwd / "flow8.db", *extra, cwd=cwd, env=_env()))
    try:
        return {case: (cwd, collect(running)) for case, (cwd, running) in started.items()}
    finally:
        for _, running in started.values():
            if running.proc.poll() is None:
                running.proc.kill()
                running.proc.wait()


@pytest.mark.parametrize("case", USER_ERRORS)
def test_user_errors_exit_2_with_one_paragraph(user_error_runs: dict[str, tuple[Path, Result]], case: str) -> None:
    cwd, result = user_error_runs[case]
    assert_clean_error(result, 2, *USER_ERRORS[case][2])
    assert result.out == ""
    assert not (cwd / "flow8.db").exists(), "a rejected run must not create a database"


def test_an_invalid_flowlet_is_not_reported_as_an_empty_flow(tmp_path: Path) -> None:
    flow = write_flow(tmp_path / "flow.json", _ok_flowlet(timeout="soonish"))
    result = flow8("validate", flow, cwd=tmp_path)
    assert_clean_error(result, 2, "'soonish'")
    assert "at least 1 item" not in result.err


def test_validate(tmp_path: Path) -> None:
    cyclic = write_flow(
        tmp_path / "cycle.json",
        {"name": "x", "module_ref": "echo", "depends_on": ["y"]},
        {"name": "y", "module_ref": "echo", "depends_on": ["x"]},
    )
    good, without_modules, cycle = flow8_many(
        ("validate", EXAMPLE_FLOW, "--modules", EXAMPLE_MODULES),
        ("validate", EXAMPLE_FLOW),
        ("validate", cyclic),
        cwd=tmp_path,
    )
    assert good.code == 0, good
    assert "process-documents" in good.out and "valid" in good.out
    assert_clean_error(without_modules, 2, "'extract'")
    assert_clean_error(cycle, 2, "cycle")
    assert list(tmp_path.iterdir()) == [cyclic], "validate must not write anything"


# ---------------------------------------------------------------- plays, events, kv


def test_plays_list(recorded: Recorded) -> None:
    db = recorded.db
    as_json, table, by_company, other_company, by_status, bad_status = flow8_many(
        ("plays", "list", "--db", db, "--json"),
        ("plays", "list", "--db", db),
        ("plays", "list", "--db", db, "--company", "acme", "--status", "succeeded", "--json"),
        ("plays", "list", "--db", db, "--company", "nobody", "--json"),
        ("plays", "list", "--db", db, "--status", "failed", "--json"),
        ("plays", "list", "--db", db, "--status", "done"),
        cwd=recorded.dir,
    )
    assert as_json.code == 0, as_json
    assert [(p["play_id"], p["status"]) for p in as_json.json_lines()] == [("play-1", "succeeded")]
    assert as_json.json_lines()[0] == recorded.play
    assert table.code == 0, table
    assert "play-1" in table.out and "acme" in table.out and "succeeded" in table.out
    assert by_company.code == 0 and [p["play_id"] for p in by_company.json_lines()] == ["play-1"]
    assert other_company.code == 0 and other_company.json_lines() == []
    assert by_status.code == 0 and by_status.json_lines() == []
    assert_clean_error(bad_status, 2, "done")


def test_plays_show(recorded: Recorded) -> None:
    shown, unknown = flow8_many(
        ("plays", "show", "play-1", "--db", recorded.db),
        ("plays", "show", "nope", "--db", recorded.db),
        cwd=recorded.dir,
    )
    assert shown.code == 0, shown
    assert shown.json() == recorded.play
    assert_clean_error(unknown, 1, "nope")


def test_commands_on_a_missing_database_fail_cleanly(tmp_path: Path) -> None:
    result = flow8("plays", "show", "play-1", "--db", tmp_path / "none.db", cwd=tmp_path)
    assert_clean_error(result, 1, "none.db")
    assert not (tmp_path / "none.db").exists()


def test_events_json(recorded: Recorded) -> None:
    result, unknown = flow8_many(
        ("events", "play-1", "--db", recorded.db, "--json"),
        ("events", "nope", "--db", recorded.db),
        cwd=recorded.dir,
    )
    assert result.code == 0, result
    events = result.json_lines()
    assert [e["seq"] for e in events] == list(range(1, recorded.play["seq"] + 1))
    assert {e["play_id"] for e in events} == {"play-1"}
    assert events[0]["type"] == "PlayStarted" and events[-1]["type"] == "PlayCompleted"
    assert events[-1]["payload"]["output"] == recorded.play["output"]
    assert all(UTC_Z.match(e["at"]) and re.fullmatch(r"[0-9a-f]{64}", e["hash"]) for e in events)
    assert_clean_error(unknown, 1, "nope")


def test_events_verify(recorded: Recorded) -> None:
    result = flow8("events", "play-1", "--db", recorded.db, "--verify", cwd=recorded.dir)
    assert result.code == 0, result
    assert "PlayCompleted" in result.out
    assert "projection matches" in result.err


def _tamper_body(db: Path, play_id: str) -> None:
    with sqlite3.connect(db) as conn:
        seq, body = conn.execute(
            "SELECT seq, body FROM events WHERE play_id = ? AND type = 'FlowletCompleted' ORDER BY seq LIMIT 1",
            (play_id,),
        ).fetchone()
        event = json.loads(body)
        event["payload"]["output"]["words"] += 1
        conn.execute("UPDATE events SET body = ? WHERE play_id = ? AND seq = ?", (json.dumps(event), play_id, seq))
    conn.close()


def _cut(db: Path, play_id: str) -> None:
    with sqlite3.connect(db) as conn:
        conn.execute("DELETE FROM events WHERE play_id = ? AND seq = 3", (play_id,))
    conn.close()


def _garble(db: Path, play_id: str) -> None:
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE events SET body = ? WHERE play_id = ? AND seq = 2", (b"{not json", play_id))
    conn.close()


@pytest.mark.parametrize(
    ("damage", "expected"),
    [
        pytest.param(_tamper_body, "history altered", id="altered-body"),
        pytest.param(_cut, "history cut", id="deleted-event"),
        pytest.param(_garble, "cannot be read", id="unreadable-body"),
    ],
)
def test_events_verify_detects_a_damaged_log(recorded: Recorded, tmp_path: Path, damage: Any, expected: str) -> None:
    db = tmp_path / "flow8.db"
    shutil.copyfile(recorded.db, db)  # the recording verifies clean: test_events_verify
    assert not recorded.db.with_name("flow8.db-wal").exists(), "the copy would miss a WAL file"

    damage(db, "play-1")
    result = flow8("events", "play-1", "--db", db, "--verify", cwd=tmp_path)

    assert result.code == 1, result
    assert "Traceback" not in result.err
    assert expected in result.err, result.err


def test_kv_get_after_a_kv_set_flow(tmp_path: Path) -> None:
    db = tmp_path / "flow8.db"
    flow = write_flow(
        tmp_path / "kv.json",
        {"name": "put", "module_ref": "kv.set", "input": {"key": "colour", "value": "${input.colour}"}},
        {"name": "count", "module_ref": "kv.incr", "input": {"key": "runs"}},
    )
    for colour in ("red", "blue"):
        result = flow8("run", flow, "--db", db, "--company", "acme", "--input", json.dumps({"colour": colour}),
                       "--json", cwd=tmp_path)  # fmt: skip
        assert result.code == 0, result

    colour, runs, elsewhere = flow8_many(
        ("kv", "get", "colour", "--company", "acme", "--db", db),
        ("kv", "get", "runs", "--company", "acme", "--db", db),
        ("kv", "get", "colour", "--company", "other", "--db", db),
        cwd=tmp_path,
    )
    assert (colour.code, json.loads(colour.out)) == (0, "blue"), colour
    assert (runs.code, json.loads(runs.out)) == (0, 2), runs
    assert_clean_error(elsewhere, 1, "colour")  # keys are per company


# ---------------------------------------------------------------- schemas, bench, help


def test_schemas_export_check(tmp_path: Path) -> None:
    in_repo = flow8("schemas", "export", "--check", "--dir", REPO / "schemas", cwd=tmp_path)
    assert in_repo.code == 0, in_repo

    copy = tmp_path / "schemas"
    shutil.copytree(REPO / "schemas", copy)
    assert flow8("schemas", "export", "--check", "--dir", copy, cwd=tmp_path).code == 0

    target = copy / "events" / "play-started.schema.json"
    schema = json.loads(target.read_text())
    schema["title"] = "Drifted"
    target.write_text(json.dumps(schema))
    drifted = flow8("schemas", "export", "--check", "--dir", copy, cwd=tmp_path)
    assert drifted.code == 1, drifted
    assert "play-started.schema.json" in drifted.err and "Traceback" not in drifted.err
    assert json.loads(target.read_text())["title"] == "Drifted", "--check must write nothing"

    (copy / "stray.schema.json").write_text("{}")
    (copy / "start-play.schema.json").unlink()
    problems = flow8("schemas", "export", "--check", "--dir", copy, cwd=tmp_path)
    assert problems.code == 1
    assert "stray.schema.json" in problems.err and "start-play.schema.json" in problems.err

    assert flow8("schemas", "export", "--dir", copy, cwd=tmp_path).code == 0
    assert (copy / "start-play.schema.json").read_bytes() == (REPO / "schemas" / "start-play.schema.json").read_bytes()
    assert json.loads(target.read_text())["title"] == "PlayStarted"


def test_bench_json(tmp_path: Path) -> None:
    result = flow8("bench", "--runtime", "local", "--plays", "200", "--concurrency", "20", "--json", cwd=tmp_path)
    assert result.code == 0, result
    lines = result.out.splitlines()
    assert len(lines) == 1, result.out
    figures = json.loads(lines[0])
    for key in ("plays_per_s", "p50_ms", "p95_ms", "p99_ms", "cpu_ms_per_play"):
        assert isinstance(figures[key], int | float) and figures[key] > 0, (key, figures)
    assert figures["p50_ms"] <= figures["p95_ms"] <= figures["p99_ms"]
    assert (figures["plays"], figures["failed"]) == (200, 0)
    assert list(tmp_path.iterdir()) == [], "bench without --db must leave no database behind"

    assert_clean_error(flow8("bench", "--runtime", "kafka", "--json", cwd=tmp_path), 2, "kafka")


def test_help_lists_the_commands(tmp_path: Path) -> None:
    result = flow8("--help", cwd=tmp_path)
    assert result.code == 0, result
    listed = set(re.findall(r"^\W*(\w+)\s{2,}", result.out, flags=re.MULTILINE))
    assert {"run", "validate", "plays", "events", "kv", "schemas", "bench"} <= listed, result.out
