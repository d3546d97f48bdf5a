"""The independent verifier (tools/verify-js, plain Node.js) reads ``flow8 audit export`` archives
and reaches the same verdicts as ``flow8 audit verify --archive``: honest, rewritten with the
chain recomputed, cut, reordered."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.audit.conftest import Signed, flow8, refold, rehash, rows, write_rows

NODE = shutil.which("node")
VERIFIER = Path(__file__).resolve().parents[2] / "tools" / "verify-js" / "verify.mjs"
pytestmark = pytest.mark.skipif(NODE is None, reason="node is not installed: the JavaScript verifier cannot run")


def _rewrite_amount(signed: Signed) -> None:
    docs = rows(signed.db, "p1")
    fetch = next(d for d in docs if d["type"] == "FlowletCompleted" and d["payload"]["flowlet"] == "fetch")
    fetch["payload"]["output"]["amount"] = 1_000_000
    write_rows(signed.db, "p1", rehash(docs))
    refold(signed.db, "p1")


def _cut_tail(signed: Signed) -> None:
    write_rows(signed.db, "p2", rows(signed.db, "p2")[:-2])
    refold(signed.db, "p2")


def _reorder(signed: Signed) -> None:
    docs = rows(signed.db, "p1")
    docs[4], docs[5] = docs[5], docs[4]
    write_rows(signed.db, "p1", docs)


def _honest(signed: Signed) -> None:
    pass


def _verdicts(lines: list[dict[str, Any]]) -> tuple[dict[str, Any], dict[str, Any]]:
    plays = {
        v["play_id"]: (v["verdict"], [(f["kind"], f["seq"]) for f in v["findings"]], v["anchored"], v["unanchored"],
                       v["last_seq"], v["head_hash"], v["status"])
        for v in lines[:-1]
    }  # fmt: skip
    summary = lines[-1]
    return plays, {k: summary[k] for k in ("plays", "events", "ok", "with_findings", "findings_by_kind", "verdict")}


@pytest.mark.parametrize(
    ("tamper", "company", "expected"),
    [
        pytest.param(_honest, "acme", {}, id="honest"),
        pytest.param(_honest, "globex", {}, id="honest-floats-and-astral-keys"),
        pytest.param(_rewrite_amount, "acme", {"p1": [("rewritten", 10)]}, id="altered-amount-chain-recomputed"),
        pytest.param(_cut_tail, "acme", {"p2": [("cut_tail", 9)]}, id="cut-tail"),
        pytest.param(_reorder, "acme", {"p1": [("reordered", 5)]}, id="reordered"),
    ],
)
def test_the_javascript_verifier_agrees(
    signed: Signed, tamper: Callable[[Signed], None], company: str, expected: dict[str, Any]
) -> None:
    tamper(signed)
    archive = signed.dir / f"{company}.jsonl.gz"
    exported = flow8("audit", "export", "--db", signed.db, "--company", company, "--out", archive,
                     "--public-key", signed.public, cwd=signed.dir)  # fmt: skip
    assert exported.code == 0, exported

    ours = flow8("audit", "verify", "--archive", archive, "--company", company, "--public-key", signed.public,
                 "--json", cwd=signed.dir)  # fmt: skip
    assert NODE is not None
    theirs = subprocess.run(
        [NODE, VERIFIER, archive, "--public-key", signed.public], capture_output=True, text=True, timeout=60
    )
    assert ours.code == theirs.returncode == (1 if expected else 0), (ours, theirs.stderr)
    our_plays, our_summary = _verdicts(ours.json_lines())
    their_plays, their_summary = _verdicts([json.loads(line) for line in theirs.stdout.splitlines()])
    assert their_plays == our_plays
    assert their_summary == our_summary
    assert {p: v[1] for p, v in our_plays.items() if v[1]} == expected
    assert all(v[2] is True for p, v in our_plays.items() if p not in expected)  # every other play anchored


def test_the_javascript_verifier_refuses_bad_input(tmp_path: Path) -> None:
    assert NODE is not None
    missing = subprocess.run([NODE, VERIFIER, tmp_path / "nope.gz"], capture_output=True, text=True, timeout=60)
    not_key = tmp_path / "k.pub"
    not_key.write_text("not a key")
    archive = tmp_path / "a.jsonl"
    archive.write_text('{"header": {"format": "flow8-audit-export", "version": 1}}\n')
    bad_key = subprocess.run(
        [NODE, VERIFIER, archive, "--public-key", not_key], capture_output=True, text=True, timeout=60
    )
    for result in (missing, bad_key):
        assert result.returncode == 2 and result.stderr.startswith("error:"), result
        assert result.stderr.count("\n") == 1 and "    at " not in result.stderr, result  # one line, no stack
