"""``flow8 audit verify`` on a signed db that an attacker with write access (and no key) edited:
each kind of tamper is caught with its seq named; an honest db is clean."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from flow8_streams.domain.events import event_adapter
from flow8_streams.engine import fold
from tests.audit.conftest import Signed, findings, flow8, refold, rehash, rows, write_rows


def test_an_honest_signed_db_is_clean_and_anchored(signed: Signed) -> None:
    code, verdicts, summary = signed.verdicts("--company", "acme")
    assert code == 0
    assert set(verdicts) == {"p1", "p2"}  # globex's p3 is not acme's to see
    for v in verdicts.values():
        assert v["verdict"] == "ok" and v["anchored"] is True and v["status"] == "succeeded", v
        assert v["last_seq"] == v["events"] == len(rows(signed.db, v["play_id"]))
    assert summary["verdict"] == "ok" and summary["plays"] == 2 and summary["checkpoints"] >= 1
    code, verdicts, summary = signed.verdicts("--all-companies")
    assert code == 0 and set(verdicts) == {"p1", "p2", "p3"}


def _completed(docs: list[dict], flowlet: str) -> dict:
    return next(d for d in docs if d["type"] == "FlowletCompleted" and d["payload"]["flowlet"] == flowlet)


def test_an_altered_amount_is_caught_at_its_seq(signed: Signed) -> None:
    docs = rows(signed.db, "p1")
    fetch = _completed(docs, "fetch")
    fetch["payload"]["output"]["amount"] = 1_000_000
    write_rows(signed.db, "p1", docs)

    code, verdicts, summary = signed.verdicts("--company", "acme", key=False)
    assert code == 1 and summary["verdict"] == "findings"
    assert findings(verdicts["p1"]) == [("altered", fetch["seq"])]
    assert verdicts["p2"]["verdict"] == "ok"


def test_an_altered_amount_with_the_chain_recomputed_is_caught_only_by_the_signed_checkpoint(signed: Signed) -> None:
    docs = rows(signed.db, "p1")
    _completed(docs, "fetch")["payload"]["output"]["amount"] = 1_000_000
    write_rows(signed.db, "p1", rehash(docs))
    refold(signed.db, "p1")

    code, verdicts, _ = signed.verdicts("--company", "acme", key=False)
    assert code == 0, "without an anchor a recomputed chain and re-folded projection pass: the reason for keys"
    code, verdicts, summary = signed.verdicts("--company", "acme")
    assert code == 1
    assert findings(verdicts["p1"]) == [("rewritten", len(docs))]
    assert summary["findings_by_kind"] == {"rewritten": 1}


def test_a_reordered_history_is_caught(signed: Signed) -> None:
    docs = rows(signed.db, "p1")
    docs[2], docs[3] = docs[3], docs[2]
    write_rows(signed.db, "p1", docs)
    _, verdicts, _ = signed.verdicts("--company", "acme")
    assert findings(verdicts["p1"]) == [("reordered", 3)]


def test_a_missing_event_is_caught(signed: Signed) -> None:
    docs = rows(signed.db, "p1")
    write_rows(signed.db, "p1", docs[:4] + docs[5:])
    _, verdicts, _ = signed.verdicts("--company", "acme")
    assert findings(verdicts["p1"]) == [("missing", 5)]


def test_a_duplicated_event_is_caught(signed: Signed) -> None:
    docs = rows(signed.db, "p1")
    write_rows(signed.db, "p1", [*docs[:4], docs[3], *docs[4:]])
    _, verdicts, _ = signed.verdicts("--company", "acme")
    assert findings(verdicts["p1"]) == [("duplicated", 4)]


def test_a_cut_tail_is_caught_by_the_projection_or_the_checkpoint(signed: Signed) -> None:
    docs = rows(signed.db, "p2")
    n = len(docs)
    write_rows(signed.db, "p2", docs[:-2])
    _, verdicts, _ = signed.verdicts("--company", "acme", key=False)
    assert ("cut_tail", n - 1) in findings(verdicts["p2"])  # the projection still says succeeded

    refold(signed.db, "p2")  # and the projection made to agree: only the anchor knows
    code, verdicts, _ = signed.verdicts("--company", "acme", key=False)
    assert code == 0
    _, verdicts, _ = signed.verdicts("--company", "acme")
    assert findings(verdicts["p2"]) == [("cut_tail", n - 1)]


def test_a_play_deleted_whole_is_named_by_its_checkpoint(signed: Signed) -> None:
    with sqlite3.connect(signed.db) as conn:
        conn.execute("DELETE FROM events WHERE play_id = 'p2'")
        conn.execute("DELETE FROM plays WHERE play_id = 'p2'")
    conn.close()
    code, verdicts, summary = signed.verdicts("--company", "acme")
    assert code == 1 and set(verdicts) == {"p1"}
    assert [(f["kind"], "p2" in f["detail"]) for f in summary["findings"]] == [("missing", True)]


def test_a_projection_that_differs_is_named_by_field(signed: Signed) -> None:
    with sqlite3.connect(signed.db) as conn:
        (state,) = conn.execute("SELECT state FROM plays WHERE play_id = 'p1'").fetchone()
        play = json.loads(state)
        play["output"] = {"pay": {"paid": 1}}
        play["flowlets"]["tax"]["attempts"] = 3
        conn.execute("UPDATE plays SET state = ? WHERE play_id = 'p1'", (json.dumps(play),))
    conn.close()
    _, verdicts, _ = signed.verdicts("--company", "acme")
    assert [(f["kind"], f.get("field")) for f in verdicts["p1"]["findings"]] == [
        ("projection", "flowlets.tax.attempts"),
        ("projection", "output"),
    ]


def test_a_forged_checkpoint_is_caught(signed: Signed) -> None:
    lines = signed.jsonl.read_text().splitlines()
    record = json.loads(lines[0])
    record["checkpoint"]["heads"][0]["last_seq"] = 2
    signed.jsonl.write_text("\n".join([json.dumps(record), *lines[1:]]) + "\n")
    with sqlite3.connect(signed.db) as conn:  # the db's copy edited alike
        conn.execute("DELETE FROM audit_checkpoints")
    conn.close()
    code, _, summary = signed.verdicts("--all-companies")
    assert code == 1
    assert summary["findings_by_kind"].get("checkpoint_forged") == 1, summary


def test_a_play_written_after_the_last_checkpoint_is_unanchored(signed: Signed) -> None:
    result = flow8(
        "run", _flow_file(signed.dir), "--db", signed.db, "--company", "acme", "--play-id", "late", "--json",
        cwd=signed.dir,
    )  # fmt: skip
    assert result.code == 0, result
    code, verdicts, summary = signed.verdicts("--company", "acme")
    assert code == 0 and verdicts["late"]["unanchored"] is True and summary["unanchored"] == 1
    code, verdicts, _ = signed.verdicts("--company", "acme", "--require-anchor")
    assert code == 1 and findings(verdicts["late"]) == [("unanchored", 1)]
    assert verdicts["p1"]["verdict"] == "ok"


def _flow_file(where: Path) -> Path:
    path = where / "one.json"
    path.write_text(json.dumps({"name": "one", "flowlets": [{"name": "a", "module_ref": "noop"}]}))
    return path


def test_a_v1_db_written_before_hash_version_verifies(tmp_path: Path) -> None:
    """The golden v1 history (recorded by the engine before v2) in a db as that engine wrote it."""
    from flow8_streams.stores.sqlite import SqliteStore

    lines = (Path(__file__).parent / "data" / "v1-history.jsonl").read_bytes().splitlines()
    db = tmp_path / "old.db"
    store = SqliteStore(db)
    events = [event_adapter.validate_json(line) for line in lines]
    with store.tx() as conn:
        conn.executemany(
            "INSERT INTO events (play_id, seq, company_id, type, at, body) VALUES (?,?,?,?,?,?)",
            [
                (e.play_id, e.seq, e.company_id, e.type, e.at.isoformat(), line)
                for e, line in zip(events, lines, strict=True)
            ],
        )
    state = fold(events)
    assert state is not None
    store.record([], [state])
    store.close()
    result = flow8("audit", "verify", "--db", db, "--company", "acme", "--json", cwd=tmp_path)
    assert result.code == 0, result
    assert result.json_lines()[0]["verdict"] == "ok"
    assert flow8("events", "v1-play", "--db", db, "--verify", cwd=tmp_path).code == 0


async def test_the_runtime_signs_checkpoints_while_it_runs(tmp_path: Path) -> None:
    """Every audit_checkpoint_seconds, not only at close: a play is anchored while the runtime
    that wrote it still runs."""
    import asyncio

    from flow8_streams import LocalRuntime
    from flow8_streams.audit.checkpoints import keygen
    from flow8_streams.settings import Settings
    from tests.audit.conftest import DIAMOND

    private, public, _ = keygen(tmp_path / "keys")
    db = tmp_path / "flow8.db"
    settings = Settings(audit_signing_key=private, audit_checkpoint_seconds=0.05)
    async with LocalRuntime.open(db, settings=settings) as runtime:
        await runtime.run(DIAMOND, {"amount": 5}, company_id="acme", play_id="early")
        runtime.checkpointed.clear()
        assert runtime.checkpointer is not None
        if runtime.checkpointer.pending:  # else a checkpoint since its last commit named them all
            await asyncio.wait_for(runtime.checkpointed.wait(), timeout=10)
        signed = Signed(tmp_path, db, public, private)
        result = await asyncio.to_thread(signed.verify, "--company", "acme", "--require-anchor", "--json")
    assert result.code == 0, result
    assert result.json_lines()[0]["anchored"] is True


def test_filters_choose_the_plays_and_never_report_the_others_missing(signed: Signed) -> None:
    _, verdicts, summary = signed.verdicts("--company", "acme", "--play", "p2")
    assert set(verdicts) == {"p2"} and summary["verdict"] == "ok"
    _, verdicts, summary = signed.verdicts("--all-companies", "--flow", "payout", "--status", "succeeded")
    assert set(verdicts) == {"p1", "p2", "p3"} and summary["verdict"] == "ok"
    _, verdicts, summary = signed.verdicts("--all-companies", "--status", "failed")
    assert verdicts == {} and summary["verdict"] == "ok"
    code, verdicts, summary = signed.verdicts("--company", "acme", "--since", "2999-01-01T00:00:00Z")
    assert code == 0 and verdicts == {} and summary["findings"] == []
    _, verdicts, _ = signed.verdicts("--company", "acme", "--until", "2999-01-01")
    assert set(verdicts) == {"p1", "p2"}
