"""The cache of audit filter queries, in front of a real audit of a real db: hits counted and
served from memory, an asked query refreshed by the background job (and only an asked one),
answers gone after the TTL, one query at a time per filter, a failed query never cached. With a
shared tier (the port's in-memory implementation here; Redis in tests/stores/test_redis_cache.py):
one instance's answer serves another no longer than the TTL from when it was computed, a recent
refresh elsewhere saves a query, and a value that is not an answer is ignored and counted."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import orjson
import pytest

from flow8_streams.audit import Audit, Filter, SqliteSource
from flow8_streams.audit.cache import AuditQueryCache, Shared, shared_key
from flow8_streams.cache import MemoryCache
from flow8_streams.errors import NotFound
from flow8_streams.metrics import Metrics
from flow8_streams.settings import Settings
from tests.audit.conftest import Signed, rows, write_rows


class Clock:
    """The cache's clock, moved by the test instead of waiting three minutes."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Audits:
    """``flow8 audit verify --db`` as a query: verdicts by play; counts its runs."""

    def __init__(self, db: Path) -> None:
        self.db = db
        self.runs = 0
        self.ran = asyncio.Event()

    def _verdicts(self, flt: Filter) -> dict[str, Any]:
        source = SqliteSource(self.db)
        try:
            audit = Audit(flt)
            return {h.play_id: audit.play(h).as_json()["verdict"] for h in source.histories(flt)}
        finally:
            source.close()

    async def __call__(self, flt: Filter) -> dict[str, Any]:
        self.runs += 1
        answer = await asyncio.to_thread(self._verdicts, flt)
        self.ran.set()
        return answer


def counted(metrics: Metrics) -> tuple[float, float]:
    sample = metrics.registry.get_sample_value
    return sample("flow8_cache_hits_total", {"cache": "audit"}) or 0, sample(
        "flow8_cache_misses_total", {"cache": "audit"}
    ) or 0


def tamper(db: Path, play_id: str) -> None:
    docs = rows(db, play_id)
    docs[2]["payload"]["output"] = {"amount": 1}
    write_rows(db, play_id, docs)


async def test_hits_refresh_and_ttl(signed: Signed) -> None:
    metrics, clock, query = Metrics(), Clock(), Audits(signed.db)
    cache = AuditQueryCache(query, ttl_seconds=180, metrics=metrics, clock=clock)
    acme, globex = Filter("acme"), Filter("globex")
    assert await cache.get(acme) == {"p1": "ok", "p2": "ok"}
    assert await cache.get(acme) == {"p1": "ok", "p2": "ok"}
    assert (query.runs, counted(metrics)) == (1, (1, 1))

    tamper(signed.db, "p1")
    clock.now = 100
    assert (await cache.get(acme))["p1"] == "ok"  # served from memory, within the TTL
    await cache.get(globex)
    assert await cache.refresh() == 2  # both asked since the last refresh
    assert (await cache.get(acme))["p1"] == "findings"  # fresh, and no miss for it
    assert counted(metrics) == (3, 2)

    clock.now = 200  # 100 s after the refresh: still held
    assert await cache.refresh() == 1  # only acme was asked since: globex is left to expire
    clock.now = 281  # globex answered at 100, not refreshed: its TTL ended at 280
    runs = query.runs
    await cache.get(globex)
    assert query.runs == runs + 1 and counted(metrics) == (3, 3)
    await cache.get(acme)  # refreshed at 200: held until 380
    assert query.runs == runs + 1


async def test_an_answer_the_caller_calls_stale_is_run_again(signed: Signed) -> None:
    metrics, query = Metrics(), Audits(signed.db)
    cache = AuditQueryCache(query, metrics=metrics)
    acme = Filter("acme")
    await cache.get(acme)
    tamper(signed.db, "p1")
    assert (await cache.get(acme, stale=lambda answer: False))["p1"] == "ok"  # held
    assert (await cache.get(acme, stale=lambda answer: answer["p1"] == "ok"))["p1"] == "findings"  # run again
    assert (await cache.get(acme))["p1"] == "findings"  # and held from then on
    assert query.runs == 2 and counted(metrics) == (2, 2)


async def test_one_query_at_a_time_per_filter(signed: Signed) -> None:
    query = Audits(signed.db)
    cache = AuditQueryCache(query)
    answers = await asyncio.gather(*(cache.get(Filter("acme")) for _ in range(5)))
    assert query.runs == 1 and all(a == answers[0] for a in answers)


async def test_a_failed_query_is_not_cached_and_a_failed_refresh_keeps_the_answer(
    signed: Signed, tmp_path: Path
) -> None:
    query, clock = Audits(tmp_path / "absent.db"), Clock()
    cache = AuditQueryCache(query, clock=clock)
    for _ in range(2):
        with pytest.raises(NotFound):
            await cache.get(Filter("acme"))
    assert query.runs == 2
    query.db = signed.db
    assert await cache.get(Filter("acme")) == {"p1": "ok", "p2": "ok"}
    query.db = tmp_path / "absent.db"
    assert await cache.refresh() == 0
    assert await cache.get(Filter("acme")) == {"p1": "ok", "p2": "ok"}


async def test_the_background_job_refreshes_what_is_asked(signed: Signed) -> None:
    query = Audits(signed.db)
    cache = AuditQueryCache(query, ttl_seconds=60, refresh_seconds=0.05)
    await cache.get(Filter("acme"))
    query.ran.clear()
    tamper(signed.db, "p2")
    job = asyncio.create_task(cache.run())
    try:
        await asyncio.wait_for(query.ran.wait(), timeout=10)
    finally:
        job.cancel()
        with pytest.raises(asyncio.CancelledError):
            await job
    assert query.runs == 2
    assert (await cache.get(Filter("acme")))["p2"] == "findings"


def test_sized_by_the_settings_and_refreshed_within_the_ttl(signed: Signed) -> None:
    settings = Settings()
    assert (settings.cache.audit.ttl_seconds, settings.cache.audit.max_entries) == (180, 1000)
    cache = AuditQueryCache.of(Audits(signed.db), settings.cache)
    assert cache.refresh_seconds == 120
    with pytest.raises(ValueError, match="less than the TTL"):
        AuditQueryCache(Audits(signed.db), ttl_seconds=10, refresh_seconds=10)


# ------------------------------------------------------------------ the shared tier (cache.backend: redis)


def shared_of(cache: MemoryCache, clock: Clock) -> Shared[dict[str, Any]]:
    """The tier as the API builds it for a query whose answers are ``{play: verdict}`` of one company."""

    def decode(flt: Filter, doc: Any) -> tuple[dict[str, Any]] | None:
        return (doc,) if isinstance(doc, dict) and all(isinstance(v, str) for v in doc.values()) else None

    return Shared(cache, encode=lambda answer: answer, decode=decode, wall=clock)


def two_instances(
    signed: Signed, clock: Clock, memory: MemoryCache, **options: Any
) -> tuple[tuple[AuditQueryCache[dict[str, Any]], Audits, Metrics], ...]:
    made = []
    for _ in range(2):
        query, metrics = Audits(signed.db), Metrics()
        cache = AuditQueryCache(query, metrics=metrics, clock=clock, shared=shared_of(memory, clock), **options)
        made.append((cache, query, metrics))
    return tuple(made)


async def test_instances_share_answers_and_their_age(signed: Signed) -> None:
    clock, memory = Clock(), MemoryCache(clock=Clock())  # entries in ``memory`` outlive the test's clock
    (one, q1, _), (two, q2, m2) = two_instances(signed, clock, memory, ttl_seconds=180)
    acme = Filter("acme")
    assert await one.get(acme) == {"p1": "ok", "p2": "ok"}
    tamper(signed.db, "p1")
    clock.now = 100
    assert await two.get(acme) == {"p1": "ok", "p2": "ok"}  # the first instance's answer, from the shared cache
    assert (q1.runs, q2.runs) == (1, 0) and counted(m2) == (0, 1)
    clock.now = 181  # 181 s after the first instance computed it: the second does not hold it longer
    assert (await two.get(acme))["p1"] == "findings"
    assert q2.runs == 1


async def test_a_refresh_takes_another_instances_recent_refresh(signed: Signed) -> None:
    clock, memory = Clock(), MemoryCache(clock=Clock())
    (one, q1, _), (two, q2, _) = two_instances(signed, clock, memory, ttl_seconds=180, refresh_seconds=120)
    acme = Filter("acme")
    await one.get(acme)
    await two.get(acme)
    clock.now = 120
    tamper(signed.db, "p1")
    assert await one.refresh() == 1  # runs the query: the shared answer is 120 s old
    clock.now = 150
    assert await two.refresh() == 1  # the first's refresh, 30 s old (under half of 120 s): no query
    assert (q1.runs, q2.runs) == (2, 0)
    assert (await two.get(acme))["p1"] == "findings"
    clock.now = 299  # held from the first's refresh at 120 until 300
    await two.get(acme)
    assert q2.runs == 0


async def test_a_shared_value_that_is_not_an_answer_is_ignored_and_counted(signed: Signed) -> None:
    clock, memory = Clock(), MemoryCache(clock=Clock())
    (one, q1, _), _ = two_instances(signed, clock, memory)
    acme = Filter("acme")
    for forged in (b"not json", orjson.dumps({"at": 0, "answer": ["p1"]}), orjson.dumps({"at": 60, "answer": {}})):
        await memory.set("audit", shared_key(acme), forged, 60)  # the last one computed in the future
        assert await one.get(acme) == {"p1": "ok", "p2": "ok"}
        one._answers.clear()
    assert q1.runs == 3 and memory.rejects == 3


def test_filters_have_their_own_keys_in_their_companys_namespace() -> None:
    keys = {shared_key(f) for f in (Filter("acme"), Filter("acme", play="p1"), Filter("acme", play="p2"))}
    assert len(keys) == 3 and all(k.startswith("flow8:audit:acme:") for k in keys)
    assert shared_key(Filter("acme", play="p1")) == shared_key(Filter("acme", play="p1"))
    assert shared_key(Filter("ac:me")) != shared_key(Filter("ac", play="me"))
