"""``flow8 audit export`` from every source: a part of an archive exported again (by play, by
time, with a report), and a company's history read from ``flow8.events`` on real Kafka with the
workers' signed checkpoints from ``flow8.checkpoints``, and from MongoDB, each archive verifying
offline with the public key."""

from __future__ import annotations

import gzip
import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from flow8_streams.audit import checkpoints as cp
from tests.audit.conftest import Signed, flow8, kafka_env
from tests.audit.test_audit_mongo import mongo_db
from tests.conformance.streams_harness import StreamsHarness, WorkerGroup
from tests.streams.support import fl, make_flow, running_group

__all__ = ["mongo_db"]  # the fixture, used by name


def _archive(path: Path) -> tuple[dict[str, Any], list[dict[str, Any]], list[dict[str, Any]]]:
    """The header, the checkpoint lines and the events of an export."""
    lines = [json.loads(line) for line in gzip.decompress(path.read_bytes()).splitlines()]
    assert "header" in lines[0]
    return lines[0]["header"], [r for r in lines if "checkpoint" in r], [r["event"] for r in lines if "event" in r]


def _verify_archive(path: Path, public: Path, cwd: Path, *args: str) -> tuple[int, dict[str, Any], dict[str, Any]]:
    result = flow8("audit", "verify", "--archive", path, "--public-key", public, "--json", *args, cwd=cwd)
    assert result.code in (0, 1), result
    lines = result.json_lines()
    return result.code, {v["play_id"]: v for v in lines[:-1]}, lines[-1]


def test_an_archive_is_exported_again_by_play_and_by_time(signed: Signed) -> None:
    full = signed.dir / "acme.jsonl.gz"
    cwd = signed.dir
    common = ("--company", "acme", "--public-key", str(signed.public))
    assert flow8("audit", "export", "--db", signed.db, "--out", full, *common, cwd=cwd).code == 0
    _, full_checkpoints, full_events = _archive(full)

    part = signed.dir / "p2.jsonl.gz"
    result = flow8(
        "audit", "export", "--archive", full, "--play", "p2", "--out", part, "--html", cwd / "p2.html", *common, cwd=cwd
    )
    assert result.code == 0, result
    assert "wrote 1 plays, 10 events" in result.out and "Traceback" not in result.err
    header, checkpoints, events = _archive(part)
    assert header["company_id"] == "acme" and header["public_key"] == signed.public.read_text()
    assert checkpoints == full_checkpoints  # the signed anchors travel with the part
    assert events == [e for e in full_events if e["play_id"] == "p2"]
    assert 'data-play="p2"' in (cwd / "p2.html").read_text()
    code, verdicts, summary = _verify_archive(part, signed.public, cwd, "--company", "acme", "--play", "p2")
    assert code == 0 and summary["verdict"] == "ok", summary
    assert verdicts["p2"]["anchored"] is True

    # by the plays' start times (--since from, --until before)
    started = min(e["at"] for e in full_events)
    later = signed.dir / "later.jsonl.gz"
    result = flow8(
        "audit", "export", "--archive", full, "--since", "2999-01-01T00:00:00Z", "--out", later, *common, cwd=cwd
    )
    assert result.code == 0 and "wrote 0 plays, 0 events" in result.out, result
    result = flow8("audit", "export", "--archive", full, "--until", started, "--out", later, *common, cwd=cwd)
    assert result.code == 0 and "wrote 0 plays, 0 events" in result.out, result  # --until is exclusive
    result = flow8("audit", "export", "--archive", full, "--since", started, "--out", later, *common, cwd=cwd)
    assert result.code == 0 and "wrote 2 plays, 20 events" in result.out, result


def test_a_tampered_archive_exported_again_is_copied_faithfully_and_its_report_names_the_seq(signed: Signed) -> None:
    cwd = signed.dir
    full = cwd / "acme.jsonl.gz"
    common = ("--company", "acme", "--public-key", str(signed.public))
    assert flow8("audit", "export", "--db", signed.db, "--out", full, *common, cwd=cwd).code == 0
    lines = gzip.decompress(full.read_bytes()).splitlines()
    at = next(i for i, line in enumerate(lines) if b'"play_id":"p1"' in line and b'"seq":4,' in line)
    lines[at] = lines[at].replace(b'"attempt":1', b'"attempt":2')
    assert lines[at] != gzip.decompress(full.read_bytes()).splitlines()[at]
    tampered = cwd / "tampered.jsonl.gz"
    tampered.write_bytes(gzip.compress(b"\n".join([*lines, b"\x00{not json"]) + b"\n"))

    plain = flow8("audit", "export", "--archive", tampered, "--out", cwd / "plain.jsonl.gz", *common, cwd=cwd)
    assert plain.code == 0 and "skipped 1 records" in plain.err, plain  # an export does not verify; it counts

    again = cwd / "again.jsonl.gz"
    result = flow8(
        "audit", "export", "--archive", tampered, "--out", again, "--html", cwd / "again.html", *common, cwd=cwd
    )
    assert result.code == 1, result  # the archive and the page are written; the exit says findings
    assert _archive(again)[2] == [json.loads(line)["event"] for line in lines if b'"event"' in line]
    assert 'data-verdict="findings"' in (cwd / "again.html").read_text()
    code, verdicts, _ = _verify_archive(again, signed.public, cwd, "--company", "acme")
    assert code == 1 and [(f["kind"], f["seq"]) for f in verdicts["p1"]["findings"]] == [("altered", 4)]


def test_export_refuses_bad_input_with_exit_2(signed: Signed) -> None:
    cwd = signed.dir
    full = cwd / "acme.jsonl.gz"
    assert flow8("audit", "export", "--db", signed.db, "--company", "acme", "--out", full, cwd=cwd).code == 0
    cases = [
        (("--archive", full, "--out", full), "--archive"),  # would replace what it reads
        (("--db", signed.db, "--archive", full, "--out", cwd / "x.gz"), "give one source"),
        (("--out", cwd / "x.gz"), "give one source"),
        (("--db", signed.db, "--out", cwd / "x.gz", "--partition", "0"), "--partition"),
    ]
    for args, named in cases:
        result = flow8("audit", "export", "--company", "acme", *args, cwd=cwd)
        assert result.code == 2 and named in result.err and "Traceback" not in result.err, (args, result)
    result = flow8(
        "audit", "export", "--company", "acme", "--archive", cwd / "absent.gz", "--out", cwd / "x.gz", cwd=cwd
    )
    assert result.code == 1 and "no archive at" in result.err and "absent.gz" in result.err, result  # as verify says
    assert not (cwd / "x.gz").exists()


# ---------------------------------------------------------------- Kafka and MongoDB

FLOW = make_flow(
    "export-k",
    fl("fetch", "echo", input={"amount": "${input.amount}"}),
    fl("tax", "echo", "fetch", input={"rate": 0.2, "base": 100.0}),
)
COMPANIES = ("export-a", "export-b")


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    private, public, _ = cp.keygen(tmp_path_factory.mktemp("keys") / "audit")
    return private, public


@pytest.fixture(scope="module")
def signing_group(tmp_path_factory: pytest.TempPathFactory, keys: tuple[Path, Path]) -> Iterator[WorkerGroup]:
    env = {"FLOW8_AUDIT_SIGNING_KEY": str(keys[0]), "FLOW8_AUDIT_CHECKPOINT_SECONDS": "0.5"}
    with running_group(tmp_path_factory.mktemp("export-workers"), count=1, extra_env=env) as group:
        yield group


@pytest.mark.kafka
@pytest.mark.mongo
async def test_export_from_kafka_carries_the_workers_signed_checkpoints_and_verifies_offline(
    signing_group: WorkerGroup, keys: tuple[Path, Path], tmp_path: Path, no_leaked_tasks: None
) -> None:
    from tests.streams.test_streams_checkpoints import read_checkpoints

    plays = {f"x-{uuid.uuid4().hex[:8]}": COMPANIES[i % 2] for i in range(4)}
    async with StreamsHarness(signing_group) as harness:
        for play_id, company in plays.items():
            await harness.start(FLOW, {"amount": 7}, company_id=company, play_id=play_id)
        heads = {}
        for play_id, company in plays.items():
            await harness.wait(play_id)
            assert await harness.projection(company, play_id) is not None  # the projector caught up
            last = harness.tap.history(play_id)[-1]
            heads[play_id] = (last.seq, last.hash)
    await read_checkpoints(signing_group.settings, heads)  # every head signed and committed

    mine = {p for p, c in plays.items() if c == COMPANIES[0]}
    env = kafka_env(signing_group)
    out = tmp_path / "a.jsonl.gz"
    result = flow8(
        "audit", "export", "--kafka", "--company", COMPANIES[0], "--out", out, "--public-key", keys[1],
        "--html", tmp_path / "a.html", cwd=tmp_path, **env,
    )  # fmt: skip
    assert result.code == 0, result
    header, checkpoints, events = _archive(out)
    assert header["company_id"] == COMPANIES[0]
    assert {e["play_id"] for e in events} == mine and {e["company_id"] for e in events} == {COMPANIES[0]}
    assert checkpoints and {c["checkpoint"]["company_id"] for c in checkpoints} == {COMPANIES[0]}
    assert {c["checkpoint"]["writer"] for c in checkpoints} == {f"{signing_group.name}-w0-g1"}
    page = (tmp_path / "a.html").read_text()
    assert all(f'data-play="{p}"' in page for p in mine) and 'data-verdict="findings"' not in page

    code, verdicts, summary = _verify_archive(out, keys[1], tmp_path, "--company", COMPANIES[0])
    assert code == 0 and summary["verdict"] == "ok", summary
    assert set(verdicts) == mine and all(v["anchored"] for v in verdicts.values()), verdicts


@pytest.mark.mongo
def test_export_from_mongodb_verifies_offline(mongo_db: tuple[str, str], tmp_path: Path) -> None:
    uri, database = mongo_db
    out = tmp_path / "m.jsonl.gz"
    env = {"MONGODB_URI": uri, "MONGODB_DATABASE": database}
    result = flow8("audit", "export", "--mongodb", "--company", "acme", "--out", out, cwd=tmp_path, **env)
    assert result.code == 0 and "wrote 2 plays, 20 events and 0 checkpoints" in result.out, result
    header, checkpoints, events = _archive(out)
    assert header["company_id"] == "acme" and checkpoints == []
    assert {e["play_id"] for e in events} == {"m1", "m2"}  # globex's m3 is not acme's
    result = flow8("audit", "verify", "--archive", out, "--company", "acme", "--json", cwd=tmp_path)
    assert result.code == 0 and result.json_lines()[-1]["events"] == 20, result
