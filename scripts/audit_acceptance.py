#!/usr/bin/env python3
"""Issue 12's acceptance run: ``flow8 audit`` over a log the streams runtime wrote on real Kafka.

    export $(scripts/services up | grep = | xargs)
    .venv/bin/python scripts/audit_acceptance.py [--plays 10000] [--workers 2] [--companies 5] [--json FILE]

1. ``flow8 audit keygen``, then ``--workers`` ``flow8 worker`` processes (the launcher's group: topics,
   a consumer group and a MongoDB database of their own) that sign checkpoints with
   ``FLOW8_AUDIT_SIGNING_KEY``.
2. ``--plays`` plays of an invoice flow (a fan-out; a flaky check, retried in one play in 11; one
   play in 53 declined: failed, its downstream flowlets skipped) across ``--companies`` companies,
   at most ``--in-flight`` at a time, until each result is on ``flow8.play-results``, each play final in
   MongoDB and named at its last seq by a committed checkpoint; then the workers stop.
3. As an auditor, through the ``flow8`` CLI (one subprocess per command), each exit code checked:
   ``verify --kafka --public-key --require-anchor`` for all companies (each play compared with its
   MongoDB projection) and per company: 0; the same without MongoDB (the chain and the signed heads:
   the Kafka rate); ``export --kafka`` per company and ``verify --archive`` of each: 0 (the archive
   rate); the projection (``plays``, ``plays_live``) dropped: 1, a missing row per play; ``rebuild
   --kafka --into-mongodb``, then ``verify``: 0; a forged record: 1; a cut tail: 1. The same
   verify, timed in this process (the library the CLI calls, best of ``--repeat``), gives the
   rates the issue asks for, free of a CLI's start-up.

The forged record is what anyone who can write to the events topic can do: append. It rewrites one
event of a play (another output) and is produced by a plain producer without the signing key;
``verify`` must name that play, ``duplicated`` at that ``seq``.

A cut tail is not an append: a topic's records are never edited or removed one by one (DeleteRecords
drops a partition's oldest records, every play's alike). Cutting a play's last events takes a Kafka
administrator who deletes the events topic and re-creates it with every record but those (the
forgery above left out too, so this finding stands alone), and someone who can write MongoDB to
re-fold the play's projection from what is left: the attack the issue found on the SQLite db. The
signed checkpoints on ``flow8.checkpoints`` are left as they were (changing one needs the key;
dropping the last ones naming the play is caught only against an auditor's earlier copy, such as an
export, which this script does not model). ``verify --kafka`` must name the play ``cut_tail`` at the
first seq cut. The same cut made to the play's lines in its company's export (a file an auditor
keeps, editable by whoever holds it) must be named by ``verify --archive``.

``--mongodb`` has no row: the streams runtime keeps its events on Kafka, not in MongoDB.

It prints a table (plays, events, seconds, events/s of wall time and per CPU-second of the auditing
process) and exits 1 when any expectation fails, 2 when the servers are not given. Each step is
bounded by ``--step-timeout``; the workers, topics and database it made are removed at the end,
on Ctrl-C too (``--keep`` keeps them to look at).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gzip
import json
import logging
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import orjson
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from flow8_streams.audit import ArchiveSource, Audit, Filter  # noqa: E402
from flow8_streams.audit import checkpoints as cp  # noqa: E402
from flow8_streams.audit.kafka import KafkaSource  # noqa: E402
from flow8_streams.audit.verify import Summary  # noqa: E402
from flow8_streams.domain.events import event_adapter  # noqa: E402
from flow8_streams.domain.messages import StartPlay  # noqa: E402
from flow8_streams.runtimes.streams.client import CommandProducer  # noqa: E402
from flow8_streams.stores.mongo import MongoStore  # noqa: E402
from tests.conformance.streams_harness import WorkerGroup  # noqa: E402  (the launcher's, with discard())
from tests.streams.support import collecting_results, fl, make_flow  # noqa: E402

FLOW8 = str(Path(sys.executable).parent / "flow8")
CHECKOUT = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))  # workers and CLI run this code
COMPANIES = ("acme", "globex", "initech", "umbrella", "hooli", "stark", "wayne", "tyrell")
BATCH = 100  # plays sent together; up to --in-flight of them wait for their results
FLOW = make_flow(
    "invoice",
    fl("receive", "echo", input={"invoice": "${input.invoice}", "amount": "${input.amount}"}),
    fl("tax", "transform", "receive", input={"rate": 0.2, "base": "${flowlets.receive.output.amount}"}),
    fl("fee", "transform", "receive", input={"fee": 2}),
    fl(
        "fraud-check",
        "fail",
        "receive",
        input={"times": "${input.declines}", "message": "card declined"},
        retry={"max_attempts": 3, "backoff_ms": 20},
    ),
    fl("charge", "echo", "tax", "fee", "fraud-check", input={"tax": "${flowlets.tax.output}"}),
    fl("notify", "echo", "charge", input={"sent": True}),
)

console = Console(stderr=True)


class Failed(Exception):
    """An expectation that did not hold."""


@dataclass
class Figure:
    """One timed auditor command: what it read and how fast."""

    step: str
    plays: int
    events: int
    seconds: float
    cpu_seconds: float
    exit: int

    @property
    def wall_rate(self) -> float:
        return self.events / self.seconds if self.seconds else 0.0

    @property
    def cpu_rate(self) -> float:
        return self.events / self.cpu_seconds if self.cpu_seconds else 0.0


@dataclass
class Run:
    code: int
    out: str
    err: str
    seconds: float
    cpu_seconds: float

    def lines(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.out.splitlines() if line.strip()]


@dataclass
class Acceptance:
    args: argparse.Namespace
    root: Path
    group: WorkerGroup
    companies: list[str]
    public: Path = Path()
    private: Path = Path()
    results: dict[str, Any] = field(default_factory=dict)  # play_id -> PlayResult
    figures: list[Figure] = field(default_factory=list)
    checks: list[tuple[bool, str]] = field(default_factory=list)

    # ------------------------------------------------------------ the auditor's side: the CLI

    def env(self, *, mongodb: bool = True) -> dict[str, str]:
        """The group's topics (and its MongoDB database), nothing else of this process's settings."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("FLOW8_", "MONGODB_", "KAFKA_"))}
        env |= {
            "NO_COLOR": "1",
            "PYTHONPATH": CHECKOUT,
            "KAFKA_BOOTSTRAP_SERVERS": self.group.settings.kafka_bootstrap_servers,
        }
        env["FLOW8_TOPICS__PREFIX"] = self.group.name
        if mongodb:
            env |= {"MONGODB_URI": self.group.settings.mongodb_uri, "MONGODB_DATABASE": self.group.name}
        return env

    def flow8(self, what: str, *args: str | Path, mongodb: bool = True) -> Run:
        """``flow8 ARGS`` as a subprocess, bounded by --step-timeout, with its wall and CPU time."""
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter()
        with console.status(f"{what}: flow8 {' '.join(map(str, args[:3]))} …"):
            try:
                done = subprocess.run(
                    [FLOW8, *map(str, args)],
                    cwd=self.root,
                    env=self.env(mongodb=mongodb),
                    capture_output=True,
                    text=True,
                    timeout=self.args.step_timeout,
                    check=False,
                )
            except subprocess.TimeoutExpired:
                raise Failed(f"{what}: not done within {self.args.step_timeout:.0f} s (--step-timeout)") from None
        seconds = time.perf_counter() - t0
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
        if "Traceback" in done.stderr:
            self.check(False, f"{what}: a traceback on stderr:\n{done.stderr[-2000:]}")
        return Run(done.returncode, done.stdout, done.stderr, seconds, cpu)

    def check(self, ok: bool, what: str) -> bool:
        self.checks.append((ok, what))
        console.print(f"[green]✔[/] {what}" if ok else f"[red]✘[/] {what}", soft_wrap=True)
        return ok

    def verify(self, what: str, *args: str | Path, expect: int, mongodb: bool = True, timed: bool = True) -> Run:
        """``flow8 audit verify --json ARGS --public-key --require-anchor``, its exit code checked."""
        run = self.flow8(
            what, "audit", "verify", "--json", "--public-key", self.public, "--require-anchor", *args, mongodb=mongodb
        )
        lines = run.lines() if run.code in (0, 1) else []
        summary = lines[-1] if lines and lines[-1].get("summary") else {}
        self.check(
            run.code == expect,
            f"{what}: exit {run.code} (expected {expect}); {summary.get('plays')} plays, "
            f"{summary.get('events')} events, {summary.get('findings_by_kind') or 'no findings'}"
            + ("" if run.code in (0, 1) else f"\n{run.err[-2000:]}"),
        )
        if timed and summary:
            self.figures.append(
                Figure(what, summary["plays"], summary["events"], run.seconds, run.cpu_seconds, run.code)
            )
        return run

    @staticmethod
    def with_findings(run: Run) -> dict[str, list[tuple[str, int | None]]]:
        """Play -> [(kind, seq)] of each play ``verify --json`` found something in."""
        return {
            v["play_id"]: [(f["kind"], f["seq"]) for f in v["findings"]] for v in run.lines()[:-1] if v.get("findings")
        }

    # ------------------------------------------------------------ the plays

    async def play(self) -> None:
        """--plays plays through the workers, every result awaited, then the projection caught up."""
        settings = self.group.settings
        store = MongoStore(settings.mongodb_uri, settings.mongodb_database)
        await store.open()
        try:
            for company in self.companies:
                await store.flows.put(company, FLOW)
        finally:
            await store.close()
        plays, window = self.args.plays, max(1, self.args.in_flight // BATCH)
        with Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console
        ) as progress:
            bar = progress.add_task("plays finished", total=plays)
            async with collecting_results(settings) as collector, CommandProducer(settings) as producer:
                waiting: list[set[str]] = []
                for start in range(0, plays, BATCH):
                    batch = set()
                    for i in range(start, min(plays, start + BATCH)):
                        command = self.start_play(i)
                        batch.add(command.play_id or "")
                        await producer.send(command)
                    await producer.flush()
                    waiting.append(batch)
                    while len(waiting) >= window:
                        await collector.wait_for(waiting.pop(0), self.args.step_timeout)
                        progress.update(bar, completed=len(collector.results))
                for batch in waiting:
                    await collector.wait_for(batch, self.args.step_timeout)
                progress.update(bar, completed=len(collector.results))
                self.results = dict(collector.results)
                self.check(not collector.duplicates, f"one result per play ({len(collector.duplicates)} twice)")
            await self.projection_caught_up(progress)
            await self.signed(progress)

    async def signed(self, progress: Progress) -> None:
        """Until the workers' signed checkpoints (committed on ``flow8.checkpoints``) name every play
        at its last seq: the heads a worker signs every FLOW8_AUDIT_CHECKPOINT_SECONDS. (Stopping the
        workers sooner left plays unanchored: the checkpoint signed at a graceful stop did not
        always land.)"""
        from aiokafka import AIOKafkaConsumer, TopicPartition

        settings = self.group.settings
        want = {p: r.last_seq or 0 for p, r in self.results.items()}
        signed: dict[str, int] = {}
        bar = progress.add_task("plays signed", total=len(want))
        consumer = AIOKafkaConsumer(
            **settings.kafka_client_options(), isolation_level="read_committed", enable_auto_commit=False
        )
        await consumer.start()
        try:
            tps = [TopicPartition(settings.topics.checkpoints, p) for p in range(settings.topics.partitions)]
            consumer.assign(tps)
            await consumer.seek_to_beginning(*tps)
            async with asyncio.timeout(self.args.step_timeout):
                while any(signed.get(p, 0) < seq for p, seq in want.items()):
                    for records in (await consumer.getmany(timeout_ms=500)).values():
                        for record in records:
                            item = cp.parse_line(record.value or b"", f"{record.partition}@{record.offset}")
                            for head in item.body["heads"] if isinstance(item, cp.SignedCheckpoint) else ():
                                signed[head["play_id"]] = max(signed.get(head["play_id"], 0), head["last_seq"])
                    progress.update(bar, completed=sum(signed.get(p, 0) >= seq for p, seq in want.items()))
        except TimeoutError:
            missing = sum(signed.get(p, 0) < seq for p, seq in want.items())
            raise Failed(f"{missing} plays not signed within {self.args.step_timeout:.0f} s") from None
        finally:
            await consumer.stop()

    def start_play(self, i: int) -> StartPlay:
        company = self.companies[i % len(self.companies)]
        # one play in 53 declined (failed), one in 11 retried once: moduli prime to the company count
        declines = 5 if i % 53 == 52 else 1 if i % 11 == 10 else 0
        return StartPlay(
            company_id=company,
            flow=FLOW.name,
            play_id=f"{company}-{i:06d}",
            input={"invoice": f"INV-{i:06d}", "amount": 100 + i % 900, "declines": declines},
        )

    async def projection_caught_up(self, progress: Progress) -> None:
        """Until MongoDB's ``plays`` holds every finished play (the projector writes after the results)."""
        store = MongoStore(self.group.settings.mongodb_uri, self.group.settings.mongodb_database)
        bar = progress.add_task("plays final in MongoDB", total=len(self.results))
        try:
            async with asyncio.timeout(self.args.step_timeout):
                while (n := await store.db["plays"].count_documents({})) < len(self.results):
                    progress.update(bar, completed=n)
                    await asyncio.sleep(0.5)  # another process's writes: there is no event to await
            progress.update(bar, completed=len(self.results))
        except TimeoutError:
            raise Failed(f"the projection did not catch up within {self.args.step_timeout:.0f} s") from None
        finally:
            await store.close()

    # ------------------------------------------------------------ rates in this process

    def in_process(self, what: str, verify: Callable[[Ed25519PublicKey], Summary | list[Summary]]) -> None:
        """``verify`` (the library the CLI calls) timed in this process, without a CLI's start-up:
        the rate the issue asks for, the best of ``--repeat`` runs (the others' load on a shared
        machine only ever slows one down). Every summary must be clean."""
        key = cp.load_public_key(self.public)
        runs: list[Figure] = []
        for n in range(1, self.args.repeat + 1):
            with console.status(f"{what} ({n} of {self.args.repeat}) …"):
                wall, cpu = time.perf_counter(), time.process_time()
                got = verify(key)
                wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            summaries = got if isinstance(got, list) else [got]
            clean = all(s.clean for s in summaries)
            plays, events = sum(s.plays for s in summaries), sum(s.events for s in summaries)
            runs.append(Figure(f"{what} (best of {self.args.repeat})", plays, events, wall, cpu, 0 if clean else 1))
        rates = ", ".join(f"{f.wall_rate:,.0f} ({f.cpu_rate:,.0f} per CPU-s)" for f in runs)
        self.check(all(f.exit == 0 for f in runs), f"{what}: {runs[0].plays} plays, {runs[0].events} events: {rates}")
        self.figures.append(max(runs, key=lambda f: f.wall_rate))

    def verify_archives(self, key: Ed25519PublicKey) -> list[Summary]:
        summaries = []
        for company in self.companies:
            packed, flt = ArchiveSource(self.root / f"{company}.jsonl.gz"), Filter(company)
            audit = Audit(flt, packed.checkpoints(), public_key=key, require_anchor=True)
            for history in packed.histories(flt):
                audit.play(history)
            summaries.append(audit.finish(packed.problems))
        return summaries

    def verify_kafka(self, key: Ed25519PublicKey) -> Summary:
        async def read() -> Summary:
            reader, flt = KafkaSource(self.group.settings), Filter(None)
            audit = Audit(flt, await reader.checkpoints(), public_key=key, require_anchor=True)
            async for history in reader.histories(flt):
                audit.play(history)
            return audit.finish(reader.problems)

        return asyncio.run(read())

    # ------------------------------------------------------------ the attacks

    def victim(self, company: str) -> tuple[str, int]:
        """A succeeded play of ``company`` from the middle of the run, and its last seq."""
        ids = sorted(p for p, r in self.results.items() if r.company_id == company and r.status == "succeeded")
        result = self.results[ids[len(ids) // 2]]
        return result.play_id, result.last_seq or 0

    def archive_events(self, company: str, play_id: str) -> list[dict[str, Any]]:
        with gzip.open(self.root / f"{company}.jsonl.gz", "rb") as f:
            lines = (orjson.loads(line) for line in f)
            return [x["event"] for x in lines if x.get("event", {}).get("play_id") == play_id]

    async def forge(self, company: str, play_id: str) -> tuple[int, int, int]:
        """A rewritten event of ``play_id`` (another output) appended to the events topic by a plain
        producer: returns its seq, partition and offset."""
        from aiokafka import AIOKafkaProducer

        original = next(e for e in self.archive_events(company, play_id) if e["type"] == "FlowletCompleted")
        forged = {**original, "payload": {**original["payload"], "output": {"amount": 1_000_000}}}
        producer = AIOKafkaProducer(**self.group.settings.kafka_client_options())
        await producer.start()
        try:
            at = await producer.send_and_wait(
                self.group.settings.topics.events, orjson.dumps(forged), key=company.encode()
            )
        finally:
            await producer.stop()
        return int(original["seq"]), at.partition, at.offset

    async def replace_events_topic(self, drop: set[tuple[int, int]], cut_play: str, keep_seq: int) -> int:
        """What a Kafka administrator can do: read the events topic, delete it, create it again and
        write back every record but those at ``drop`` (partition, offset) and ``cut_play``'s events
        after ``keep_seq``, each to its partition, in order. Returns the records written back."""
        from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
        from aiokafka.admin import AIOKafkaAdminClient
        from aiokafka.errors import TopicAlreadyExistsError

        from flow8_streams.runtimes.streams.admin import topic_specs

        settings, topic = self.group.settings, self.group.settings.topics.events
        kept: list[tuple[int, bytes | None, bytes]] = []
        consumer = AIOKafkaConsumer(
            **settings.kafka_client_options(), isolation_level="read_committed", enable_auto_commit=False
        )
        await consumer.start()
        try:
            tps = [TopicPartition(topic, p) for p in range(settings.topics.partitions)]
            consumer.assign(tps)
            await consumer.seek_to_beginning(*tps)
            end = await consumer.end_offsets(tps)
            while [tp for tp in tps if await consumer.position(tp) < end[tp]]:
                for records in (await consumer.getmany(timeout_ms=500, max_records=5000)).values():
                    for r in records:
                        doc = orjson.loads(r.value or b"{}")
                        cut = doc.get("play_id") == cut_play and doc.get("seq", 0) > keep_seq
                        if (r.partition, r.offset) not in drop and not cut:
                            kept.append((r.partition, r.key, r.value or b""))
        finally:
            await consumer.stop()
        admin = AIOKafkaAdminClient(**settings.kafka_client_options())
        await admin.start()
        try:
            await admin.delete_topics([topic])
            spec = next(s for s in topic_specs(settings) if s.name == topic)
            while True:
                try:
                    await admin.create_topics([spec])
                    break
                except TopicAlreadyExistsError:
                    await asyncio.sleep(0.5)  # the deletion completes in the background: no event to await
        finally:
            await admin.close()
        producer = AIOKafkaProducer(**settings.kafka_client_options(), linger_ms=20, max_batch_size=1 << 20)
        await producer.start()
        try:
            for partition, key, value in kept:
                await producer.send(topic, value, key=key, partition=partition)
            await producer.flush()
        finally:
            await producer.stop()
        return len(kept)

    async def refold(self, company: str, play_id: str, keep_seq: int) -> None:
        """What someone who can write MongoDB does after the cut: the play's projection, folded
        again (through the projection port) from the events left."""
        docs = [d for d in self.archive_events(company, play_id) if d["seq"] <= keep_seq]
        store = MongoStore(self.group.settings.mongodb_uri, self.group.settings.mongodb_database)
        await store.open()
        try:
            await store.db["plays"].delete_many({"_id": play_id})
            await store.db["plays_live"].delete_many({"play_id": play_id})
            await store.plays.apply([event_adapter.validate_python(d) for d in docs])
        finally:
            await store.close()

    def cut_archive(self, company: str, play_id: str, keep_seq: int) -> Path:
        """The company's export with ``play_id``'s events after ``keep_seq`` left out."""
        cut = self.root / f"{company}-cut.jsonl.gz"
        with gzip.open(self.root / f"{company}.jsonl.gz", "rb") as src, gzip.open(cut, "wb") as dst:
            for line in src:
                event = orjson.loads(line).get("event") or {}
                if event.get("play_id") != play_id or event.get("seq", 0) <= keep_seq:
                    dst.write(line)
        return cut


# ---------------------------------------------------------------- the run


def audit(a: Acceptance) -> None:
    """Every auditor step, in order (the workers stopped)."""
    events = sum(r.last_seq or 0 for r in a.results.values())
    run = a.verify("verify --kafka --all-companies (+ MongoDB projection)", "--kafka", "--all-companies", expect=0)
    summary = run.lines()[-1] if run.code in (0, 1) else {}
    a.check(
        (summary.get("plays"), summary.get("events")) == (len(a.results), events),
        f"verify read every play and event: {summary.get('plays')} plays, {summary.get('events')} events "
        f"(the results say {len(a.results)}, {events})",
    )
    for company in a.companies:
        a.verify(f"verify --kafka --company {company}", "--kafka", "--company", company, expect=0)
    a.verify(
        "verify --kafka --all-companies (chain, signed heads)", "--kafka", "--all-companies", expect=0, mongodb=False
    )

    for company in a.companies:
        out = a.root / f"{company}.jsonl.gz"
        run = a.flow8(
            f"export --kafka --company {company}",
            "audit",
            "export",
            "--kafka",
            "--company",
            company,
            "--out",
            out,
            "--public-key",
            a.public,
            mongodb=False,
        )
        a.check(run.code == 0, f"export --kafka --company {company}: exit {run.code} {run.err[-500:]}")
        wrote = re.search(r"wrote (\d+) plays, (\d+) events", run.out)
        exported = (int(wrote[1]), int(wrote[2])) if wrote else (0, 0)
        a.figures.append(Figure(f"export --kafka ({company})", *exported, run.seconds, run.cpu_seconds, run.code))
        a.verify(f"verify --archive ({company})", "--archive", out, "--company", company, expect=0)

    a.in_process("verify --kafka --all-companies, in this process", a.verify_kafka)
    a.in_process("verify --archive, every export, in this process", a.verify_archives)

    with pymongo_db(a) as db:
        for name in ("plays", "plays_live"):
            db[name].drop()
    run = a.verify("verify after the projection was dropped", "--kafka", "--all-companies", expect=1, timed=False)
    missing = a.with_findings(run) if run.code == 1 else {}
    a.check(
        len(missing) == len(a.results) and all(f == [("projection", None)] for f in missing.values()),
        f"each play's missing row named: {len(missing)} of {len(a.results)}",
    )
    run = a.flow8("rebuild", "audit", "rebuild", "--kafka", "--all-companies", "--into-mongodb", a.group.name, "--json")
    rebuilt = run.lines()[-1] if run.code in (0, 1) and run.out.strip() else {}
    a.check(
        run.code == 0, f"rebuild --kafka --into-mongodb: exit {run.code}, {rebuilt.get('plays')} plays {run.err[-500:]}"
    )
    a.figures.append(
        Figure(
            "rebuild --kafka --into-mongodb", rebuilt.get("plays", 0), events, run.seconds, run.cpu_seconds, run.code
        )
    )
    a.verify("verify after rebuild", "--kafka", "--all-companies", expect=0)

    forged_play, _ = a.victim(a.companies[0])
    seq, partition, offset = asyncio.run(a.forge(a.companies[0], forged_play))
    run = a.verify("verify after a forged record", "--kafka", "--all-companies", expect=1, timed=False)
    a.check(
        a.with_findings(run) == {forged_play: [("duplicated", seq)]},
        f"the forgery named: {a.with_findings(run)} (expected {forged_play} duplicated seq {seq})",
    )

    company = a.companies[1 % len(a.companies)]
    cut_play, last_seq = a.victim(company)
    keep = last_seq - 3
    with console.status("replacing the events topic (the tail of one play, and the forgery, left out) …"):
        written = asyncio.run(a.replace_events_topic({(partition, offset)}, cut_play, keep))
        asyncio.run(a.refold(company, cut_play, keep))
    a.check(written == events - 3, f"the events topic re-created with {written} of {events + 1} records")
    run = a.verify(
        "verify after a cut tail (topic replaced, projection re-folded)",
        "--kafka",
        "--all-companies",
        expect=1,
        timed=False,
    )
    a.check(
        a.with_findings(run) == {cut_play: [("cut_tail", keep + 1)]},
        f"the cut named: {a.with_findings(run)} (expected {cut_play} cut_tail seq {keep + 1})",
    )
    cut = a.cut_archive(company, cut_play, keep)
    run = a.verify(
        f"verify --archive of {company}'s export cut", "--archive", cut, "--company", company, expect=1, timed=False
    )
    a.check(
        a.with_findings(run) == {cut_play: [("cut_tail", keep + 1)]},
        f"the cut named in the archive: {a.with_findings(run)}",
    )


@contextlib.contextmanager
def pymongo_db(a: Acceptance) -> Iterator[Any]:
    from pymongo import MongoClient

    with MongoClient(a.group.settings.mongodb_uri) as client:
        yield client[a.group.name]


def table(a: Acceptance, played_s: float) -> Table:
    out = Table(
        title=f"flow8 audit acceptance: {len(a.results)} plays on {a.args.workers} workers in {played_s:.0f} s "
        f"(load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs)"
    )
    for name in ("step", "plays", "events", "seconds", "events/s", "events/CPU-s", "exit"):
        out.add_column(name, justify="left" if name == "step" else "right")
    for f in a.figures:
        out.add_row(
            f.step,
            f"{f.plays:,}",
            f"{f.events:,}",
            f"{f.seconds:.2f}",
            f"{f.wall_rate:,.0f}",
            f"{f.cpu_rate:,.0f}",
            str(f.exit),
        )
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--plays", type=int, default=10_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--companies", type=int, default=5, choices=range(2, len(COMPANIES) + 1))
    parser.add_argument("--in-flight", type=int, default=300, help="Plays started and not yet finished, at most.")
    parser.add_argument("--step-timeout", type=float, default=900.0, help="Seconds any one step may take.")
    parser.add_argument("--repeat", type=int, default=3, help="Runs of each in-process rate (the best is shown).")
    parser.add_argument("--json", type=Path, default=None, help="Also write the figures and checks to this file.")
    parser.add_argument("--keep", action="store_true", help="Keep the topics, the database and the files.")
    args = parser.parse_args()
    # Ctrl-C even when started in the background (where a shell makes SIGINT ignored), and a
    # SIGTERM (a CI's timeout) alike: KeyboardInterrupt, so that the finally below cleans up
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    logging.getLogger("aiokafka.cluster").setLevel(
        logging.CRITICAL
    )  # it logs the replaced topic, missing a moment, as an error
    kafka, mongodb = os.environ.get("KAFKA_BOOTSTRAP_SERVERS"), os.environ.get("MONGODB_URI")
    if not kafka or not mongodb:
        console.print("needs KAFKA_BOOTSTRAP_SERVERS and MONGODB_URI: export $(scripts/services up | grep = | xargs)")
        return 2
    root = Path(tempfile.mkdtemp(prefix="flow8-audit-acceptance-"))
    group = WorkerGroup(kafka, mongodb, root / "workers", count=args.workers, name=f"accept-{os.urandom(4).hex()}")
    a = Acceptance(args, root, group, list(COMPANIES[: args.companies]))
    stopped = False  # the workers stopped in order: no query of theirs still runs on the database
    played_s = 0.0
    try:
        run = a.flow8("keygen", "audit", "keygen", "--out", root / "keys")
        if not a.check(run.code == 0, f"flow8 audit keygen: exit {run.code}"):
            return 1
        a.private, a.public = root / "keys" / "audit-signing.key", root / "keys" / "audit-signing.pub"
        group.env |= {
            "PYTHONPATH": CHECKOUT,
            "FLOW8_AUDIT_SIGNING_KEY": str(a.private),
            "FLOW8_AUDIT_CHECKPOINT_SECONDS": "5",
        }
        with console.status(f"starting {args.workers} workers ({group.name}) …"):
            asyncio.run(asyncio.wait_for(group.start(), args.step_timeout))
        t0 = time.perf_counter()
        asyncio.run(a.play())
        played_s = time.perf_counter() - t0
        with console.status("stopping the workers (their last checkpoints signed) …"):
            group.stop()
        stopped = True
        statuses: dict[str, int] = {}
        for r in a.results.values():
            statuses[r.status] = statuses.get(r.status, 0) + 1
        console.print(f"{len(a.results)} plays in {played_s:.1f} s: {statuses}")
        audit(a)
    except Failed as exc:
        a.check(False, str(exc))
    except KeyboardInterrupt:
        a.check(False, "interrupted")
    finally:
        with console.status("cleaning up …"):
            group.stop()
            if not args.keep:
                asyncio.run(group.discard())
                if stopped:
                    with pymongo_db(a) as db:
                        db.client.drop_database(group.name)
                    if all(ok for ok, _ in a.checks):
                        shutil.rmtree(root, ignore_errors=True)
                    else:
                        console.print(f"the workers' logs and the exports are in {root}")
                else:
                    console.print(
                        f"left database {group.name} on MongoDB (the workers were stopped in a hurry) and {root}"
                    )
    Console(width=160).print(table(a, played_s))
    failed = [what for ok, what in a.checks if not ok]
    if args.json is not None:
        args.json.write_text(
            json.dumps(
                {
                    "plays": len(a.results),
                    "played_seconds": played_s,
                    "figures": [
                        asdict(f) | {"events_per_s": f.wall_rate, "events_per_cpu_s": f.cpu_rate} for f in a.figures
                    ],
                    "checks": [{"ok": ok, "what": what} for ok, what in a.checks],
                },
                indent=2,
            )
        )
    console.print(
        f"[red]{len(failed)} of {len(a.checks)} checks failed[/]"
        if failed
        else f"[green]all {len(a.checks)} checks passed[/]"
    )
    if args.keep:
        console.print(f"kept {root}, topics {group.name}.*, database {group.name}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
