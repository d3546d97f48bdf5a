"""``flow8 audit keygen`` and the signing key setting: file modes, never a private key in output,
files or the process list; bad input refused with exit 2 and one paragraph; a hostile archive
reported, never crashed on."""

from __future__ import annotations

import base64
import gzip
import json
import os
import sqlite3
import stat
from pathlib import Path

import pytest

from tests.audit.conftest import Signed, flow8
from tests.flow8_cli import Result, collect, spawn


def _assert_clean_error(result: Result, *fragments: str) -> None:
    assert result.code == 2, result
    assert "Traceback" not in result.err + result.out
    message = result.err.strip()
    assert message.startswith("error:") and "\n\n" not in message, message
    for fragment in fragments:
        assert fragment in message, (fragment, message)


def _pem_body(path: Path) -> str:
    return "".join(line for line in path.read_text().splitlines() if not line.startswith("-----"))


def test_keygen_writes_a_0600_private_key_and_never_prints_it(tmp_path: Path) -> None:
    result = flow8("audit", "keygen", "--out", tmp_path / "keys", cwd=tmp_path)
    assert result.code == 0, result
    private, public = tmp_path / "keys" / "audit-signing.key", tmp_path / "keys" / "audit-signing.pub"
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert private.read_text().startswith("-----BEGIN PRIVATE KEY-----")
    assert public.read_text().startswith("-----BEGIN PUBLIC KEY-----")
    secret = _pem_body(private)
    raw = base64.b64decode(secret)[-32:]
    for shown in (result.out, result.err):
        assert secret not in shown and raw.hex() not in shown and "PRIVATE KEY" not in shown

    again = flow8("audit", "keygen", "--out", tmp_path / "keys", cwd=tmp_path)
    _assert_clean_error(again, "already exists")
    assert _pem_body(private) == secret  # never replaced


def _flow(tmp_path: Path) -> Path:
    path = tmp_path / "one.json"
    path.write_text(json.dumps({"name": "one", "flowlets": [{"name": "a", "module_ref": "noop"}]}))
    return path


def test_a_signed_run_keeps_the_key_out_of_the_db_the_checkpoints_and_the_process_list(tmp_path: Path) -> None:
    assert flow8("audit", "keygen", "--out", tmp_path / "k", cwd=tmp_path).code == 0
    private = tmp_path / "k" / "audit-signing.key"
    secret = _pem_body(private)
    db = tmp_path / "flow8.db"
    running = spawn(
        "run", _flow(tmp_path), "--db", db, "--company", "acme", "--play-id", "p1", "--json",
        cwd=tmp_path, env={**os.environ, "FLOW8_AUDIT_SIGNING_KEY": str(private)},
    )  # fmt: skip
    cmdline = Path(f"/proc/{running.proc.pid}/cmdline").read_bytes()
    result = collect(running)
    assert result.code == 0, result
    assert secret.encode() not in cmdline
    jsonl = tmp_path / "flow8.db.checkpoints.jsonl"
    assert stat.S_IMODE(jsonl.stat().st_mode) == 0o600
    (record,) = [json.loads(line) for line in jsonl.read_text().splitlines()]
    assert record["checkpoint"]["heads"] == [
        {
            "play_id": "p1",
            "company_id": "acme",
            "last_seq": 4,
            "head_hash": record["checkpoint"]["heads"][0]["head_hash"],
        }
    ]
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT count(*) FROM audit_checkpoints").fetchone() == (1,)
    conn.close()
    for blob in (db.read_bytes(), jsonl.read_bytes(), result.out.encode(), result.err.encode()):
        assert secret.encode() not in blob and base64.b64decode(secret)[-32:] not in blob


def test_a_signing_key_others_can_read_or_that_is_not_one_is_refused(tmp_path: Path) -> None:
    assert flow8("audit", "keygen", "--out", tmp_path / "k", cwd=tmp_path).code == 0
    private = tmp_path / "k" / "audit-signing.key"
    private.chmod(0o644)
    readable = flow8(
        "run", _flow(tmp_path), "--db", tmp_path / "a.db", cwd=tmp_path, FLOW8_AUDIT_SIGNING_KEY=str(private)
    )
    _assert_clean_error(readable, "readable by others", "chmod 600")
    assert _pem_body(private) not in readable.err

    garbage = tmp_path / "garbage.key"
    garbage.write_text("not a key")
    garbage.chmod(0o600)
    wrong = flow8("run", _flow(tmp_path), "--db", tmp_path / "b.db", cwd=tmp_path, FLOW8_AUDIT_SIGNING_KEY=str(garbage))
    _assert_clean_error(wrong, "not an unencrypted PEM private key")


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        pytest.param(("--company", "acme"), "give one source", id="no-source"),
        pytest.param(("--db", "DB", "--mongodb", "--company", "acme"), "give one source", id="two-sources"),
        pytest.param(("--kafka", "--archive", "DB", "--company", "acme"), "not --kafka", id="archive-and-kafka"),
        pytest.param(("--db", "DB"), "--company C", id="no-company"),
        pytest.param(("--db", "DB", "--company", "acme", "--all-companies"), "not both", id="company-and-all"),
        pytest.param(("--db", "DB", "--company", "acme", "--since", "yesterday"), "not an ISO time", id="bad-since"),
        pytest.param(("--db", "DB", "--company", "acme", "--status", "done"), "--status", id="bad-status"),
        pytest.param(("--db", "DB", "--company", "a b"), "--company", id="bad-company"),
        pytest.param(("--db", "DB", "--company", "acme", "--public-key", "KEYS"), "not a PEM public key", id="bad-key"),
        pytest.param(("--db", "DB", "--company", "acme", "--require-anchor"), "needs --public-key", id="anchor-no-key"),
        pytest.param(("--db", "KEYS", "--company", "acme"), "not a flow8 database", id="not-a-db"),
    ],
)
def test_bad_input_is_refused_with_exit_2(signed: Signed, args: tuple[str, ...], fragment: str) -> None:
    keys = signed.dir / "not-a-db"
    keys.write_text("hello")
    resolved = [str(signed.db) if a == "DB" else str(keys) if a == "KEYS" else a for a in args]
    _assert_clean_error(flow8("audit", "verify", *resolved, cwd=signed.dir), fragment)


def test_a_hostile_archive_is_reported_not_crashed_on(signed: Signed) -> None:
    archive = signed.dir / "a.jsonl.gz"
    assert flow8("audit", "export", "--db", signed.db, "--company", "acme", "--out", archive, cwd=signed.dir).code == 0
    lines = gzip.decompress(archive.read_bytes()).splitlines()
    hostile = [*lines[:3], b"{not json", b"[1, 2]", b'{"event": {"no": "play"}}', *lines[3:]]
    archive.write_bytes(gzip.compress(b"\n".join(hostile) + b"\n"))
    result = flow8("audit", "verify", "--archive", archive, "--company", "acme", "--json", cwd=signed.dir)
    assert result.code == 1, result
    summary = result.json_lines()[-1]
    assert summary["findings_by_kind"] == {"undecodable": 3}, summary
    assert summary["plays"] == 2 and summary["with_findings"] == 0

    not_ours = signed.dir / "other.jsonl"
    not_ours.write_text('{"header": {"format": "something-else"}}\n')
    _assert_clean_error(
        flow8("audit", "verify", "--archive", not_ours, "--company", "acme", cwd=signed.dir), "not a flow8 audit export"
    )


def test_a_checkpoint_that_cannot_be_written_is_an_error_naming_the_file(tmp_path: Path) -> None:
    assert flow8("audit", "keygen", "--out", tmp_path / "k", cwd=tmp_path).code == 0
    (tmp_path / "flow8.db.checkpoints.jsonl").mkdir()  # where the file should go
    result = flow8(
        "run", _flow(tmp_path), "--db", tmp_path / "flow8.db", "--company", "acme", "--play-id", "p1",
        cwd=tmp_path, FLOW8_AUDIT_SIGNING_KEY=str(tmp_path / "k" / "audit-signing.key"),
    )  # fmt: skip
    assert result.code == 1, result
    assert "Traceback" not in result.err and result.err.startswith("error: writing a signed checkpoint"), result.err
    assert "flow8.db.checkpoints.jsonl" in result.err
    with sqlite3.connect(tmp_path / "flow8.db") as conn:  # nothing half written
        assert conn.execute("SELECT count(*) FROM audit_checkpoints").fetchone() == (0,)
    conn.close()
