"""``flow8 keys``: a key printed once, alone on the last line; stored as its SHA-256 only."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

from tests.flow8_cli import run

from .server import clean_env

KEY = re.compile(r"f8k_([0-9a-f]{16})_[A-Za-z0-9_-]{43}")


def test_a_key_is_shown_once_and_stored_as_its_hash(tmp_path: Path) -> None:
    db = tmp_path / "keys.db"
    made = run("keys", "create", "--company", "acme", "--role", "admin", "--db", db, cwd=tmp_path, env=clean_env())
    assert made.code == 0, made.err
    key = made.lines()[-1]
    match = KEY.fullmatch(key)
    assert match is not None, made.out
    key_id = match.group(1)
    stored = db.read_bytes() + b"".join(p.read_bytes() for p in tmp_path.glob("keys.db-*"))
    assert key.encode() not in stored and key.split("_", 2)[2].encode() not in stored
    assert hashlib.sha256(key.encode()).digest() in stored

    listed = run("keys", "list", "--db", db, "--json", cwd=tmp_path, env=clean_env())
    assert listed.code == 0, listed.err
    (row,) = listed.json_lines()
    assert (row["key_id"], row["company_id"], row["role"], row["revoked_at"]) == (key_id, "acme", "admin", None)
    table = run("keys", "list", "--db", db, "--company", "acme", cwd=tmp_path, env=clean_env())
    assert key_id in table.out and "f8k_" not in table.out + listed.out

    assert run("keys", "revoke", key_id, "--db", db, cwd=tmp_path, env=clean_env()).code == 0
    (row,) = run("keys", "list", "--db", db, "--json", cwd=tmp_path, env=clean_env()).json_lines()
    assert row["revoked_at"] is not None
    assert run("keys", "list", "--db", db, "--company", "globex", "--json", cwd=tmp_path, env=clean_env()).out == ""


def test_bad_arguments_are_exit_2_in_one_paragraph_and_unknown_keys_exit_1(tmp_path: Path) -> None:
    db = tmp_path / "keys.db"
    env = clean_env()
    assert run("keys", "create", "--company", "acme", "--db", db, cwd=tmp_path, env=env).code == 0
    cases = [
        (["keys", "create", "--company", "acme", "--role", "root", "--db", db], "--role 'root'"),
        (["keys", "create", "--company", "bad company", "--db", db], "--company"),
        (["keys", "revoke", "not-an-id", "--db", db], "KEY_ID"),
        (["keys", "list", "--db", db, "--mongodb"], "not both"),
        (["serve", "--db", db, "--streams"], "not both"),
    ]
    for args, named in cases:
        done = run(*args, cwd=tmp_path, env=env)
        assert done.code == 2, (args, done.out, done.err)
        assert named in done.err and "Traceback" not in done.err and "\n\n" not in done.err.strip(), done.err
    unknown = run("keys", "revoke", "0" * 16, "--db", db, cwd=tmp_path, env=env)
    assert unknown.code == 1 and "no API key" in unknown.err
    missing = run("keys", "list", "--db", tmp_path / "none.db", cwd=tmp_path, env=env)
    assert missing.code == 1 and "no database" in missing.err
