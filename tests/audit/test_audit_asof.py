"""``flow8 audit as-of TIME``: plays as the engine's fold had them at TIME (from the db and from an
export), KV values as far as the SQLite store can tell (known, absent, unknown: never guessed),
every history verified, and exit codes 0 / 1 / 2."""

from __future__ import annotations

import asyncio
import json
import shutil
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from flow8_streams import FlowDefinition, LocalRuntime
from flow8_streams.cli.common import dumps
from flow8_streams.engine import fold
from flow8_streams.settings import Settings
from tests.audit.conftest import flow8, rows, write_rows
from tests.audit.report_plays import COMPANY, PLAY_IDS, Recorded, recorded

__all__ = ["recorded"]  # the session fixture, used by name


def _kv_flow(name: str, *writes: tuple[str, int]) -> FlowDefinition:
    flowlets: list[dict[str, Any]] = []
    for i, (key, value) in enumerate(writes):
        flowlets.append(
            {
                "name": f"set-{i}",
                "module_ref": "kv.set",
                "input": {"key": key, "value": value},
                "depends_on": [f"set-{i - 1}"] if i else [],
            }
        )
    return FlowDefinition.model_validate({"name": name, "flowlets": flowlets})


@dataclass(frozen=True)
class KvRun:
    db: Path
    between: datetime  # after the first play ended, before the second started


async def _kv_record(db: Path) -> datetime:
    async with LocalRuntime.open(db, settings=Settings()) as runtime:
        await runtime.run(_kv_flow("first", ("a", 1), ("b", 1)), None, company_id=COMPANY, play_id="kv-1")
        between = datetime.now(UTC)
        await runtime.run(_kv_flow("second", ("b", 2), ("c", 3)), None, company_id=COMPANY, play_id="kv-2")
    return between


@pytest.fixture(scope="module")
def kv_run(tmp_path_factory: pytest.TempPathFactory) -> KvRun:
    db = tmp_path_factory.mktemp("asof") / "flow8.db"
    return KvRun(db, asyncio.run(_kv_record(db)))


def _as_of(when: str, *args: str | Path, cwd: Path) -> tuple[int, dict[str, dict[str, Any]], dict[str, Any]]:
    result = flow8("audit", "as-of", when, "--json", *args, cwd=cwd)
    assert result.code in (0, 1), result
    lines = result.json_lines()
    assert lines[-1]["summary"] is True
    return result.code, {p["play_id"]: p for p in lines[:-1]}, lines[-1]


def _iso(when: datetime) -> str:
    return when.isoformat().replace("+00:00", "Z")


def test_kv_values_then_are_known_absent_or_unknown_never_guessed(kv_run: KvRun, tmp_path: Path) -> None:
    code, plays, summary = _as_of(_iso(kv_run.between), "--db", kv_run.db, "--company", COMPANY, cwd=tmp_path)
    assert code == 0 and set(plays) == {"kv-1"} and summary["not_started"] == 1
    assert plays["kv-1"]["status_then"] == "succeeded" and plays["kv-1"]["verdict"] == "ok"
    kv = {k["kv"]: k for k in summary["kv"]}
    assert (kv["a"]["state"], kv["a"]["value"], kv["a"]["version"]) == ("known", 1, 1)
    assert (kv["b"]["state"], kv["b"]["value"], kv["b"]["version"]) == ("unknown", None, 2)  # it was 1: not kept
    assert (kv["c"]["state"], kv["c"]["value"]) == ("absent", None)
    assert summary["kv_keys"] == 3 and "keeps each key's latest value" in summary["kv_note"]

    _, plays, summary = _as_of(_iso(datetime.now(UTC)), "--db", kv_run.db, "--company", COMPANY, cwd=tmp_path)
    assert {k["kv"]: k["value"] for k in summary["kv"]} == {"a": 1, "b": 2, "c": 3}
    assert {p: v["status_then"] for p, v in plays.items()} == {"kv-1": "succeeded", "kv-2": "succeeded"}

    _, plays, summary = _as_of("2000-01-01T00:00:00Z", "--db", kv_run.db, "--company", COMPANY, cwd=tmp_path)
    assert plays == {} and summary["not_started"] == 2
    # b was rewritten since: when it was first written is not kept either
    assert {k["kv"]: k["state"] for k in summary["kv"]} == {"a": "absent", "b": "unknown", "c": "absent"}


@pytest.mark.parametrize("name", ["retries", "failing", "channel"])
def test_at_each_event_time_a_play_is_the_fold_of_its_log_so_far(recorded: Recorded, tmp_path: Path, name: str) -> None:
    events = recorded.events(PLAY_IDS[name])
    for n in (1, len(events) // 2, len(events)):
        when = events[n - 1].at
        reached = max(i for i, e in enumerate(events, start=1) if e.at <= when)  # events may share a time
        _, plays, _ = _as_of(
            _iso(when), "--db", recorded.db, "--company", COMPANY, "--play", PLAY_IDS[name], cwd=tmp_path
        )
        (play,) = plays.values()
        expected = fold(events[:reached])
        assert expected is not None
        assert play["seq_then"] == reached and play["status_then"] == expected.status.value
        assert play["state"] == json.loads(dumps(expected.public(), indent=False))


def test_an_archive_gives_the_same_states_and_says_it_has_no_kv(recorded: Recorded, tmp_path: Path) -> None:
    archive = tmp_path / "acme.jsonl.gz"
    exported = flow8("audit", "export", "--db", recorded.db, "--company", COMPANY, "--out", archive, cwd=tmp_path)
    assert exported.code == 0, exported
    when = _iso(recorded.events(PLAY_IDS["timeout"])[1].at)
    _, from_db, _ = _as_of(when, "--db", recorded.db, "--company", COMPANY, cwd=tmp_path)
    code, from_archive, summary = _as_of(when, "--archive", archive, "--company", COMPANY, cwd=tmp_path)
    assert code == 0 and from_archive == from_db and from_db[PLAY_IDS["timeout"]]["status_then"] == "running"
    assert summary["kv"] is None and summary["kv_note"] == "an archive holds no KV values"


def test_a_tampered_history_is_a_finding_beside_its_state(recorded: Recorded, tmp_path: Path) -> None:
    db = tmp_path / "tampered.db"
    shutil.copyfile(recorded.db, db)
    docs = rows(db, PLAY_IDS["retries"])
    docs[2]["at"] = docs[0]["at"]  # a time moved back, the hash not recomputed
    write_rows(db, PLAY_IDS["retries"], docs)
    code, plays, summary = _as_of(_iso(datetime.now(UTC)), "--db", db, "--company", COMPANY, cwd=tmp_path)
    assert code == 1 and summary["verdict"] == "findings"
    assert [(f["kind"], f["seq"]) for f in plays[PLAY_IDS["retries"]]["findings"]] == [("altered", 3)]
    assert {p["verdict"] for i, p in plays.items() if i != PLAY_IDS["retries"]} == {"ok"}


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (("yesterday", "--company", COMPANY), "TIME 'yesterday' is not an ISO time"),
        (("2026-11-30T00:00:00Z",), "give --company C"),
        (("2026-11-30T00:00:00Z", "--company", COMPANY, "--mongodb"), "give one source"),
    ],
)
def test_bad_input_exits_2_with_one_paragraph(
    recorded: Recorded, tmp_path: Path, args: tuple[str, ...], fragment: str
) -> None:
    result = flow8("audit", "as-of", *args[:1], "--db", recorded.db, *args[1:], cwd=tmp_path)
    assert result.code == 2, result
    assert fragment in result.err and "Traceback" not in result.err + result.out and result.out == ""
