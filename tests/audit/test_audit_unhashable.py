"""A record whose ``type`` or ``seq`` is a JSON array or object (hostile: such a value cannot be
looked up in a set) is reported and skipped, or named as a finding, never a crash (exit 70)."""

from __future__ import annotations

import gzip
import json

import pytest

from flow8_streams.audit.verify import PlayHistory, verify
from tests.audit.conftest import Signed, flow8, rehash, rows


@pytest.mark.parametrize("kind", [["PlayCompleted"], {"x": 1}])
def test_an_archive_record_with_an_unhashable_type_is_skipped_and_reported(signed: Signed, kind: object) -> None:
    cwd = signed.dir
    full = cwd / "acme.jsonl.gz"
    assert flow8("audit", "export", "--db", signed.db, "--company", "acme", "--out", full, cwd=cwd).code == 0
    lines = gzip.decompress(full.read_bytes()).splitlines()
    hostile = json.loads(lines[-1])
    hostile["event"].update(type=kind, seq=11)
    bad = cwd / "bad.jsonl.gz"
    bad.write_bytes(gzip.compress(b"\n".join([*lines, json.dumps(hostile).encode()]) + b"\n"))

    result = flow8("audit", "verify", "--archive", bad, "--company", "acme", "--json", cwd=cwd)
    assert result.code == 1 and "Traceback" not in result.err, result
    summary = result.json_lines()[-1]
    assert summary["findings_by_kind"] == {"unknown_type": 1} and summary["ok"] == 2, summary
    assert f"bad.jsonl.gz:{len(lines) + 1}" in summary["findings"][0]["detail"]


def test_a_history_with_an_unhashable_seq_or_type_gets_a_verdict(signed: Signed) -> None:
    docs = rows(signed.db, "p1")
    moved = [dict(d) for d in docs]
    moved[3]["seq"], moved[4]["seq"] = 5, [4]  # out of place, and a later seq that is no integer
    verdict = verify(PlayHistory("p1", "acme", moved))
    assert [(f.kind, f.seq) for f in verdict.findings] == [("missing", 4)]  # no integer seq 4 follows

    odd = [dict(d) for d in docs]
    odd[2]["type"] = odd[-1]["type"] = ["PlayCompleted"]
    verdict = verify(PlayHistory("p1", "acme", rehash(odd)))  # a chain recomputed over them holds
    assert verdict.findings == [] and verdict.status == "running" and verdict.last_seq == len(docs)
