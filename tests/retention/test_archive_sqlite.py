"""``flow8 archive`` on the embedded runtime's SQLite file, signed: finished plays archived with a
manifest and deleted, a running one untouched, and ``flow8 audit verify --archive ... --db``
finding the chain continuous across archives and live data, and each tamper."""

from __future__ import annotations

import asyncio
import gzip
import json
import sqlite3
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from flow8_streams.domain.messages import Start
from flow8_streams.engine import decide, fold
from flow8_streams.retention import job
from flow8_streams.retention import manifest as mf
from flow8_streams.settings import Retention
from flow8_streams.stores.sqlite import SqliteStore
from tests.audit.conftest import DIAMOND, Signed, flow8, rows, write_rows
from tests.flow8_cli import Result

pytest_plugins = ["tests.audit.conftest"]


def _archive(signed: Signed, *args: str | Path, **env: str) -> Result:
    return flow8("archive", "--db", signed.db, *args, cwd=signed.dir, **env)


def _verify(signed: Signed, *args: str | Path) -> tuple[int, dict[str, Any], dict[str, Any]]:
    result = signed.verify("--company", "acme", "--json", *args)
    assert result.code in (0, 1), result
    lines = result.json_lines()
    return result.code, {v["play_id"]: v for v in lines[:-1]}, lines[-1]


def _archives(where: Path) -> list[Path]:
    return sorted((where / "acme").glob("*.jsonl.gz"))


def _archive_args(where: Path) -> list[str | Path]:
    return [a for path in _archives(where) for a in ("--archive", path)]


def _add_running(db: Path, play_id: str = "r1") -> None:
    """A play of acme still running, started long ago."""
    from datetime import UTC, datetime

    started = datetime(2026, 1, 1, tzinfo=UTC)
    events = decide(None, Start(play_id=play_id, company_id="acme", flow=DIAMOND, input={"amount": 1}), started)
    state = fold(events)
    assert state is not None and not state.finished
    store = SqliteStore(db)
    try:
        store.record(events, [state])
    finally:
        store.close()


def _plays(db: Path) -> dict[str, str]:
    with sqlite3.connect(db) as conn:
        found = dict(conn.execute("SELECT play_id, status FROM plays"))
    conn.close()
    return found


def _events(db: Path, play_id: str) -> int:
    with sqlite3.connect(db) as conn:
        (n,) = conn.execute("SELECT COUNT(*) FROM events WHERE play_id = ?", (play_id,)).fetchone()
    conn.close()
    return int(n)


def test_archive_and_prune_then_verify_across_archive_and_live(signed: Signed) -> None:
    _add_running(signed.db)
    before = {p: rows(signed.db, p) for p in ("p1", "p2")}
    result = _archive(signed, "--company", "acme", "--older-than", "0s", "--to", "arch", "--prune")
    assert result.code == 0, result
    assert "archived 2 plays (20 events)" in result.out and "deleted 2" in result.out, result

    # the finished plays of acme are gone with their events; the running one and globex's stay
    assert _plays(signed.db) == {"r1": "running", "p3": "succeeded"}
    assert _events(signed.db, "p1") == _events(signed.db, "p2") == 0 and _events(signed.db, "r1") > 0

    (archive,) = _archives(signed.dir / "arch")
    manifest = json.loads(mf.manifest_path(archive).read_text())
    assert manifest["plays"] == 2 and manifest["events"] == 20 and manifest["company_id"] == "acme"
    assert manifest["sha256"] == mf.sha256_file(archive)[0]
    for play_id, docs in before.items():
        head = manifest["heads"][play_id]
        assert (head["last_seq"], head["head_hash"], head["log"]) == (len(docs), docs[-1]["hash"], "archived")
    assert manifest["checkpoints"] and all(c["signature"] for c in manifest["checkpoints"])
    assert manifest["time_range"]["first_started_at"] <= manifest["time_range"]["last_ended_at"]

    # live data alone: the signed plays are missing; with the archive, continuous
    code, _, summary = _verify(signed)
    assert code == 1 and summary["findings_by_kind"] == {"missing": 2}, summary
    code, verdicts, summary = _verify(signed, "--archive", archive)
    assert code == 0, summary
    assert set(verdicts) == {"p1", "p2", "r1"} and summary["sources"]["plays_only_archived"] == 2
    assert verdicts["p1"]["anchored"] is True

    # the archive verifies on its own too, in the export's format
    alone = signed.verify("--company", "acme", "--archive", archive)
    assert alone.code == 0, alone


def test_dry_run_and_age_write_and_delete_nothing(signed: Signed) -> None:
    result = _archive(signed, "--company", "acme", "--older-than", "0s", "--dry-run")
    assert result.code == 0 and "would archive 2 plays (20 events)" in result.out, result
    result = _archive(signed, "--company", "acme", "--older-than", "1d", "--to", "arch", "--prune")
    assert result.code == 0 and "no finished play ended before" in result.out, result
    assert not (signed.dir / "arch").exists() or not _archives(signed.dir / "arch")
    assert set(_plays(signed.db)) == {"p1", "p2", "p3"}


def test_a_tampered_play_is_archived_but_never_deleted(signed: Signed) -> None:
    docs = rows(signed.db, "p2")
    docs[2]["payload"]["flowlet"] = "forged"
    write_rows(signed.db, "p2", docs)
    result = _archive(signed, "--company", "acme", "--older-than", "0s", "--to", "arch", "--prune")
    assert result.code == 0, result
    assert "kept p2: altered seq 3" in result.err, result
    assert set(_plays(signed.db)) == {"p2", "p3"}


def test_settings_give_the_age_and_the_destination_per_company(signed: Signed) -> None:
    # no retention anywhere: --all-companies has nothing to do
    result = _archive(signed, "--all-companies", "--prune", "--to", "arch")
    assert result.code == 0 and "no company has a retention" in result.err, result
    # globex kept forever, acme 1 day (its plays are younger): nothing; then by the flag
    config = signed.dir / "flow8.yaml"
    config.write_text(f"retention:\n  days: 1\n  archive: {signed.dir / 'arch'}\n  companies: {{globex: null}}\n")
    result = _archive(signed, "--all-companies", "--prune", "--config", config, "--json")
    assert result.code == 0, result
    (acme,) = result.json_lines()
    assert acme["company_id"] == "acme" and acme["plays"] == 0
    result = _archive(signed, "--all-companies", "--older-than", "0s", "--prune", "--config", config, "--json")
    assert result.code == 0 and [o["company_id"] for o in result.json_lines()] == ["acme"], result  # not globex
    assert set(_plays(signed.db)) == {"p3"}
    result = _archive(signed, "--company", "globex", "--older-than", "0s", "--prune", "--config", config)
    assert result.code == 0 and "deleted 1" in result.out, result
    assert set(_plays(signed.db)) == set()


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (("--company", "acme", "--older-than", "0s", "--prune"), ("nothing is deleted before it is archived",)),
        (("--company", "acme", "--older-than", "0s"), ("give --to DIR",)),
        (("--company", "acme", "--older-than", "30 days", "--to", "a"), ("--older-than", "not a duration")),
        (("--company", "acme", "--all-companies", "--to", "a"), ("--company C",)),
        (("--company", "acme", "--to", "a"), ("no retention for acme", "--older-than")),
        (("--company", "acme", "--older-than", "1d", "--to", "s3:///x"), ("names no bucket",)),
        (("--company", "acme", "--older-than", "1d", "--to", "ftp://host/x"), ("neither a directory",)),
        (("--company", "acme", "--older-than", "1d", "--to", "a", "--prune", "--dry-run"), ("--dry-run",)),
    ],
)
def test_bad_input_is_exit_2_with_one_paragraph(
    signed: Signed, args: tuple[str, ...], fragments: tuple[str, ...]
) -> None:
    result = _archive(signed, *args)
    assert result.code == 2, result
    message = result.err.strip()
    assert message.startswith("error:") and "Traceback" not in message and "\n\n" not in message, message
    for fragment in fragments:
        assert fragment in message, (fragment, message)
    assert set(_plays(signed.db)) == {"p1", "p2", "p3"}


def test_plays_past_one_batch_go_to_one_archive_per_batch(signed: Signed) -> None:
    args = ("--company", "acme", "--older-than", "0s", "--to", "arch", "--json")
    # without --prune one batch is archived, and the rest is said to remain
    result = _archive(signed, *args, FLOW8_RETENTION__BATCH_PLAYS="1")
    assert result.code == 0, result
    (acme,) = result.json_lines()
    assert acme["plays"] == 1 and acme["more"] is True and acme["pruned"] == 0, acme
    # with --prune, batch after batch until none is left
    result = _archive(signed, *args, "--prune", FLOW8_RETENTION__BATCH_PLAYS="1")
    assert result.code == 0, result
    (acme,) = result.json_lines()
    assert acme["plays"] == acme["pruned"] == 2 and len(acme["archives"]) == 2 and not acme["more"], acme
    code, verdicts, summary = _verify(signed, *_archive_args(signed.dir / "arch"))
    assert code == 0 and set(verdicts) == {"p1", "p2"} and summary["sources"]["identical_copies"] == 1, summary


def test_delete_without_archive_only_when_the_setting_says_so(signed: Signed) -> None:
    result = _archive(
        signed, "--company", "acme", "--older-than", "0s", "--prune", FLOW8_RETENTION__DELETE_WITHOUT_ARCHIVE="true"
    )
    assert result.code == 0 and "deleted 2" in result.out, result
    assert set(_plays(signed.db)) == {"p3"}


def test_a_crash_between_archive_and_delete_loses_nothing(signed: Signed) -> None:
    # archived without --prune (a crash before the delete), then archived again and pruned
    assert _archive(signed, "--company", "acme", "--older-than", "0s", "--to", "arch").code == 0
    assert set(_plays(signed.db)) == {"p1", "p2", "p3"}
    assert _archive(signed, "--company", "acme", "--older-than", "0s", "--to", "arch", "--prune").code == 0
    assert set(_plays(signed.db)) == {"p3"}
    code, verdicts, summary = _verify(signed, *_archive_args(signed.dir / "arch"))
    assert code == 0, summary
    assert set(verdicts) == {"p1", "p2"} and summary["sources"]["identical_copies"] == 2


class _PowerCut(Exception):
    pass


def test_a_prune_cut_after_the_archive_is_renamed_is_finished_by_the_next_run(signed: Signed) -> None:
    """The first run stops at its second delete (the archive and manifest are in place); the next
    run archives what is left again and deletes it; nothing is lost, the copies are one."""

    async def go(cut: bool) -> None:
        async with job.open_sqlite(signed.db) as store:
            if cut:
                prune = store.port.prune
                calls = 0

                async def cut_prune(company: str, play_id: str, last_seq: int) -> bool:
                    nonlocal calls
                    calls += 1
                    if calls == 2:
                        raise _PowerCut
                    return await prune(company, play_id, last_seq)

                store.port.prune = cut_prune  # type: ignore[method-assign]
            retention = Retention(archive=str(signed.dir / "arch"))
            await job.run(store, retention, companies=["acme"], older="0s", to=None, prune=True, dry_run=False)

    with pytest.raises(_PowerCut):
        asyncio.run(go(cut=True))
    assert set(_plays(signed.db)) == {"p2", "p3"}
    assert len(_archives(signed.dir / "arch")) == 1
    asyncio.run(go(cut=False))
    assert set(_plays(signed.db)) == {"p3"}
    code, verdicts, summary = _verify(signed, *_archive_args(signed.dir / "arch"))
    assert code == 0, summary
    assert set(verdicts) == {"p1", "p2"} and summary["sources"]["identical_copies"] == 1


# ---------------------------------------------------------------- tampered archives


@pytest.fixture
def pruned(signed: Signed) -> tuple[Signed, Path]:
    result = _archive(signed, "--company", "acme", "--older-than", "0s", "--to", "arch", "--prune")
    assert result.code == 0, result
    (archive,) = _archives(signed.dir / "arch")
    return signed, archive


def _lines(archive: Path) -> list[dict[str, Any]]:
    with gzip.open(archive, "rb") as f:
        return [json.loads(line) for line in f.read().splitlines()]


def _write(archive: Path, records: list[dict[str, Any]]) -> None:
    with gzip.open(archive, "wb") as f:
        f.write(b"".join(json.dumps(r).encode() + b"\n" for r in records))


def _kinds(summary: dict[str, Any]) -> dict[str, int]:
    return dict(summary["findings_by_kind"])


def test_an_altered_event_in_the_archive_is_found(pruned: tuple[Signed, Path]) -> None:
    signed, archive = pruned
    records = _lines(archive)
    event = next(
        r["event"] for r in records if "event" in r and r["event"]["play_id"] == "p1" and r["event"]["seq"] == 2
    )
    event["at"] = "2020-01-01T00:00:00Z"
    _write(archive, records)
    code, verdicts, summary = _verify(signed, "--archive", archive)
    assert code == 1
    assert ("altered", 2) in [(f["kind"], f["seq"]) for f in verdicts["p1"]["findings"]]
    assert _kinds(summary).get("manifest", 0) >= 1, summary


def test_a_play_deleted_from_the_archive_is_found(pruned: tuple[Signed, Path]) -> None:
    signed, archive = pruned
    _write(archive, [r for r in _lines(archive) if r.get("event", {}).get("play_id") != "p2"])
    code, _, summary = _verify(signed, "--archive", archive)
    assert code == 1
    details = " ".join(f["detail"] for f in summary["findings"])
    assert "p2" in details and _kinds(summary)["missing"] == 1 and _kinds(summary)["manifest"] >= 1, summary


def test_an_edited_or_missing_manifest_is_found(pruned: tuple[Signed, Path]) -> None:
    signed, archive = pruned
    path = mf.manifest_path(archive)
    manifest = json.loads(path.read_text())
    manifest["heads"]["p1"]["last_seq"] = 3
    path.write_text(json.dumps(manifest))
    code, _, summary = _verify(signed, "--archive", archive)
    assert code == 1 and _kinds(summary) == {"manifest": 1}, summary
    assert "play p1 ends at seq 10" in summary["findings"][0]["detail"]
    path.unlink()
    code, _, summary = _verify(signed, "--archive", archive)
    assert code == 1 and _kinds(summary) == {"manifest": 1} and "missing" in summary["findings"][0]["detail"]


def test_a_live_copy_that_differs_from_its_archived_one_is_found(signed: Signed) -> None:
    assert _archive(signed, "--company", "acme", "--older-than", "0s", "--to", "arch").code == 0
    docs = rows(signed.db, "p1")
    docs[3]["payload"]["flowlet"] = "forged"
    write_rows(signed.db, "p1", docs)
    code, _, summary = _verify(signed, *_archive_args(signed.dir / "arch"))
    assert code == 1 and _kinds(summary).get("diverged") == 1, summary
    (diverged,) = [f for f in summary["findings"] if f["kind"] == "diverged"]
    assert diverged["seq"] == 4


def test_the_older_than_age_is_measured_from_each_play_s_end(signed: Signed) -> None:
    async def expired(age: timedelta) -> list[str]:
        from datetime import UTC, datetime

        store = SqliteStore(signed.db)
        try:
            return await store.retention.expired("acme", datetime.now(UTC) - age, 10)
        finally:
            store.close()

    assert asyncio.run(expired(timedelta(0))) == ["p1", "p2"]
    assert asyncio.run(expired(timedelta(hours=1))) == []
