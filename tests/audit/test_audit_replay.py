"""``flow8 audit replay``: the golden histories recorded from the engine (scripts/record_golden.py)
replay clean with today's engine; a changed flow (a flowlet added, a retry policy or timeout
changed) is reported at the first event the engine would now decide differently."""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from pymongo import MongoClient

from flow8_streams.audit.replay import replay as replay_history
from flow8_streams.domain.flow import FlowDefinition
from flow8_streams.domain.messages import FlowletDispatch, FlowletResult, Start
from flow8_streams.engine import step
from flow8_streams.stores.mongo import MongoStore
from tests.audit.conftest import DIAMOND, flow8
from tests.audit.test_audit_mongo import _fill, _uri
from tests.flow8_cli import Result

GOLDEN = Path(__file__).resolve().parent / "golden"
NAMES = sorted(p.name.removesuffix(".flow.json") for p in GOLDEN.glob("*.flow.json"))


def recorded(name: str) -> list[dict[str, Any]]:
    lines = (GOLDEN / f"{name}.jsonl").read_text().splitlines()
    return [json.loads(line)["event"] for line in lines[1:]]


def replay(name: str, cwd: Path, flow: Path | None = None, *args: str) -> tuple[Result, list[dict[str, Any]]]:
    given = ("--flow", str(flow)) if flow is not None else ()
    result = flow8("audit", "replay", "--archive", GOLDEN / f"{name}.jsonl", "--all-companies", *given, *args, cwd=cwd)
    assert result.code in (0, 1), result
    return result, result.json_lines() if "--json" in args else []


def changed(name: str, tmp_path: Path, change: Any) -> Path:
    flow = json.loads((GOLDEN / f"{name}.flow.json").read_text())
    change(flow)
    path = tmp_path / f"{name}.changed.json"
    path.write_text(json.dumps(flow))
    return path


def by_name(flow: dict[str, Any], flowlet: str) -> dict[str, Any]:
    return next(f for f in flow["flowlets"] if f["name"] == flowlet)


def test_the_golden_set_covers_each_kind_of_decision() -> None:
    assert {"linear", "diamond", "retries", "failure", "timeout", "cancel", "skipped-branch"} <= set(NAMES)
    types = {e["type"] for name in NAMES for e in recorded(name)}
    assert {"FlowletRetryScheduled", "FlowletTimedOut", "FlowletSkipped", "FlowletCancelled", "PlayCancelled"} <= types


@pytest.mark.parametrize("name", NAMES)
def test_golden_history_replays_clean(name: str, tmp_path: Path) -> None:
    result, lines = replay(name, tmp_path, GOLDEN / f"{name}.flow.json", "--json")
    assert result.code == 0, result
    play, summary = lines
    assert play["verdict"] == "ok" and play["divergence"] is None and play["events"] == len(recorded(name))
    assert summary == {**summary, "plays": 1, "diverged": 0, "verdict": "ok"}


def test_without_a_flow_each_play_replays_with_the_flow_it_recorded(tmp_path: Path) -> None:
    result, lines = replay("diamond", tmp_path, None, "--json")
    assert result.code == 0, result
    assert lines[0]["flow"] == "recorded v1"


def test_an_added_flowlet_diverges_where_the_play_completed(tmp_path: Path) -> None:
    flow = changed(
        "linear", tmp_path, lambda f: f["flowlets"].append({"name": "d", "module_ref": "echo", "depends_on": ["c"]})
    )
    result, lines = replay("linear", tmp_path, flow, "--json")
    assert result.code == 1, result
    last = recorded("linear")[-1]
    d = lines[0]["divergence"]
    assert (d["seq"], d["fields"]) == (last["seq"], ["type"])
    assert d["expected"]["type"] == "PlayCompleted"
    assert d["got"] == {**d["got"], "type": "FlowletScheduled"} and d["got"]["payload"]["flowlet"] == "d"
    assert lines[-1]["diverged"] == 1 and lines[-1]["verdict"] == "findings"


def test_fewer_attempts_fail_the_play_where_the_last_retry_was_recorded(tmp_path: Path) -> None:
    flow = changed("retries", tmp_path, lambda f: by_name(f, "flaky")["retry"].update(max_attempts=2))
    result, lines = replay("retries", tmp_path, flow, "--json")
    assert result.code == 1, result
    second_retry = [e for e in recorded("retries") if e["type"] == "FlowletRetryScheduled"][1]
    d = lines[0]["divergence"]
    assert d["seq"] == second_retry["seq"]
    assert (d["expected"]["type"], d["got"]["type"]) == ("FlowletRetryScheduled", "PlayFailed")


def test_a_longer_backoff_differs_in_the_retry_fields(tmp_path: Path) -> None:
    flow = changed("retries", tmp_path, lambda f: by_name(f, "flaky")["retry"].update(backoff_ms=500))
    result, lines = replay("retries", tmp_path, flow, "--json")
    assert result.code == 1, result
    first_retry = next(e for e in recorded("retries") if e["type"] == "FlowletRetryScheduled")
    d = lines[0]["divergence"]
    assert (d["seq"], d["fields"]) == (first_retry["seq"], ["backoff_ms", "due_at"])
    assert (d["expected"]["payload"]["backoff_ms"], d["got"]["payload"]["backoff_ms"]) == (20, 500)


def test_a_changed_timeout_differs_at_the_first_schedule_and_says_so(tmp_path: Path) -> None:
    flow = changed("timeout", tmp_path, lambda f: by_name(f, "slow").update(timeout="2s"))
    result, _ = replay("timeout", tmp_path, flow)
    assert result.code == 1, result
    scheduled = next(e for e in recorded("timeout") if e["type"] == "FlowletScheduled")
    assert f"timeout diverges at seq {scheduled['seq']}" in result.out
    assert "FlowletScheduled differs in deadline, timeout_ms" in result.out
    assert "recorded: " in result.out and "replayed: " in result.out


def test_a_flow_file_that_is_not_json_is_exit_2(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text("{nope")
    result = flow8(
        "audit", "replay", "--archive", GOLDEN / "linear.jsonl", "--all-companies", "--flow", bad, cwd=tmp_path
    )
    assert result.code == 2, result
    assert "Traceback" not in result.err


@pytest.mark.mongo
def test_replay_from_mongodb_takes_the_catalogs_latest_flow(tmp_path: Path) -> None:
    uri, database = _uri(), f"replay{uuid.uuid4().hex[:10]}"
    env = {"MONGODB_URI": uri, "MONGODB_DATABASE": database}

    async def put(flow: FlowDefinition) -> None:
        async with MongoStore(uri, database) as store:
            await store.flows.put("acme", flow)

    asyncio.run(_fill(uri, database))
    try:
        args = ("audit", "replay", "--mongodb", "--company", "acme", "--json")
        result = flow8(*args, cwd=tmp_path, **env)
        assert result.code == 0, result
        assert [p["flow"] for p in result.json_lines()[:-1]] == ["recorded v1", "recorded v1"]

        asyncio.run(put(DIAMOND))
        result = flow8(*args, cwd=tmp_path, **env)
        assert result.code == 0, result
        assert {p["flow"] for p in result.json_lines()[:-1]} == {"catalog v1"}

        grown = DIAMOND.model_dump(mode="json")
        grown["version"] = 2
        grown["flowlets"].append({"name": "notify", "module_ref": "echo", "depends_on": ["pay"]})
        asyncio.run(put(FlowDefinition.model_validate(grown)))
        result = flow8(*args, cwd=tmp_path, **env)
        assert result.code == 1, result
        *plays, summary = result.json_lines()
        assert {p["flow"] for p in plays} == {"catalog v2"} and summary["diverged"] == 2
        assert {(p["divergence"]["expected"]["type"], p["divergence"]["got"]["type"]) for p in plays} == {
            ("PlayCompleted", "FlowletScheduled")
        }
    finally:
        with MongoClient(uri) as client:
            client.drop_database(database)


def test_a_channel_dispatch_replays_and_a_history_past_the_engine_is_named() -> None:
    """In process, over a history the engine decides here: a flowlet dispatched to a channel
    (no golden history runs channels), then a record the engine would never write."""
    flow = FlowDefinition.model_validate(
        {"name": "deferred", "flowlets": [{"name": "long", "module_ref": "echo", "defer_after_ms": 10}]}
    )
    t0 = datetime(2026, 11, 30, 5, 0, tzinfo=UTC)
    ids = {"play_id": "ch-1", "company_id": "acme"}
    events, state = step(None, Start(**ids, flow=flow, input={"n": 1}), t0)
    for now, message in (
        (t0 + timedelta(seconds=1), FlowletDispatch(**ids, flowlet="long", attempt=1, channel="127.0.0.1:7701")),
        (
            t0 + timedelta(seconds=2),
            FlowletResult(**ids, flowlet="long", attempt=1, ok=True, output={"n": 1}, started_at=t0, ended_at=t0),
        ),
    ):
        more, state = step(state, message, now)
        events += more
    assert [e.type for e in events] == [
        "PlayStarted", "FlowletScheduled", "FlowletDispatched", "FlowletCompleted", "PlayCompleted",
    ]  # fmt: skip
    assert replay_history(events, flow) is None

    extra = events[-1].model_copy(update={"seq": events[-1].seq + 1})
    divergence = replay_history([*events, extra], flow)
    assert divergence is not None and divergence.seq == extra.seq and divergence.got is None

    cut = replay_history(events[:-1], flow)  # the decision's last event is missing from the record
    assert cut is not None and cut.seq == events[-1].seq and cut.expected is None
    assert cut.got is not None and cut.got["type"] == "PlayCompleted"
