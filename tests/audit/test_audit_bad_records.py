"""Bad records in the db and in an archive (an event type this version does not know, a line
that is not JSON) are reported where they are and skipped: the play's verdict names the gap
they leave, the run never crashes."""

from __future__ import annotations

import gzip
import json
import sqlite3

from tests.audit.conftest import Signed, findings, flow8


def test_an_unknown_event_type_in_the_db_is_named_by_row(signed: Signed) -> None:
    with sqlite3.connect(signed.db) as conn:
        (body,) = conn.execute("SELECT body FROM events WHERE play_id = 'p1' AND seq = 4").fetchone()
        doc = json.loads(body)
        doc["type"] = "FlowletPaused"
        conn.execute("UPDATE events SET body = ? WHERE play_id = 'p1' AND seq = 4", (json.dumps(doc),))
    conn.close()
    code, verdicts, _ = signed.verdicts("--company", "acme", key=False)
    assert code == 1
    assert findings(verdicts["p1"]) == [("unknown_type", 4)]
    assert "'FlowletPaused' is unknown" in verdicts["p1"]["findings"][0]["detail"]
    assert verdicts["p2"]["verdict"] == "ok"


def test_bad_lines_of_an_archive_are_counted_and_skipped(signed: Signed) -> None:
    archive = signed.dir / "acme.jsonl.gz"
    result = flow8("audit", "export", "--db", signed.db, "--company", "acme", "--out", archive, cwd=signed.dir)
    assert result.code == 0, result
    lines = gzip.decompress(archive.read_bytes()).splitlines()
    at = next(i for i, line in enumerate(lines) if b'"seq":5' in line and b'"p2"' in line)
    event = json.loads(lines[at])
    event["event"]["type"] = "FlowletPaused"
    lines[at] = json.dumps(event).encode()
    lines.insert(at + 1, b"\x00 not json")
    archive.write_bytes(gzip.compress(b"\n".join(lines) + b"\n"))

    result = flow8("audit", "verify", "--archive", archive, "--company", "acme", "--json", cwd=signed.dir)
    assert result.code == 1, result
    *plays, summary = result.json_lines()
    by_play = {v["play_id"]: v for v in plays}
    assert by_play["p1"]["verdict"] == "ok"
    assert findings(by_play["p2"]) == [("missing", 5)]  # the skipped event leaves its seq out
    kinds = sorted((f["kind"], f["seq"]) for f in summary["findings"])
    assert kinds == [("undecodable", None), ("unknown_type", 5)]
    assert f"{archive}:{at + 1}:" in next(f["detail"] for f in summary["findings"] if f["kind"] == "unknown_type")
    assert "Traceback" not in result.err
