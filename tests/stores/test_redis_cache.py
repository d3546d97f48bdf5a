"""The flow catalog's shared cache on a real Redis (``cache.backend: redis``).

Two store instances share one Redis and one MongoDB: what one read from the database is a
Redis hit for the other, which then sends MongoDB no ``find`` (counted by a pymongo command
listener on the real client). Redis killed mid-test: reads still answer, from MongoDB, and
``flow8_cache_errors_total`` grows; Redis back: hits again. The shared-Redis tests use
REDIS_URL (``scripts/services up --redis``); the ones that kill Redis start their own
redis-server on a free port.
"""

from __future__ import annotations

import logging
import secrets
import shutil
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from urllib.parse import unquote, urlsplit

import pytest
from pydantic import SecretStr
from pymongo import AsyncMongoClient

from flow8_streams.cache import key
from flow8_streams.cache.redis import RedisSharedCache
from flow8_streams.domain.flow import FlowDefinition
from flow8_streams.metrics import Metrics
from flow8_streams.settings import RedisCache, Settings
from flow8_streams.stores.mongo import MongoStore
from tests.services import missing_service, require_service

from .contract import FLOW, new_id
from .test_mongo import mongodb_uri
from .test_mongo_specific import _Finds

pytest.importorskip("redis", reason="the redis package (the `redis` extra) is not installed")

pytestmark = [pytest.mark.mongo, pytest.mark.redis]

V2 = FlowDefinition.model_validate({**FLOW.model_dump(), "version": 2})


def redis_settings(url: str, **options: Any) -> RedisCache:
    parts = urlsplit(url)
    return RedisCache(
        host=parts.hostname or "127.0.0.1",
        port=parts.port or 6379,
        password=unquote(parts.password) if parts.password else None,
        db=int(parts.path.strip("/") or 0),
        **options,
    )


class Instance:
    """One flow8 instance's flow catalog: its own MongoDB client (finds counted), Redis client and metrics."""

    def __init__(self, database: str, redis: RedisCache, clock: Any = time.monotonic) -> None:
        self.finds = _Finds()
        self.metrics = Metrics()
        self.shared = RedisSharedCache(redis, self.metrics, clock=clock)
        client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongodb_uri(), event_listeners=[self.finds])
        self.client = client
        self.store = MongoStore(client, database, shared_cache=self.shared, flow_cache_ttl=60)

    def db_reads(self) -> int:
        return sum(1 for collection, _ in self.finds.finds if collection == "flows")

    def sample(self, name: str, **labels: str) -> float:
        return self.metrics.registry.get_sample_value(name, {"cache": "flows", "backend": "redis", **labels}) or 0.0

    def shared_hits(self) -> float:
        return self.sample("flow8_shared_cache_requests_total", outcome="hit")

    def shared_misses(self) -> float:
        return self.sample("flow8_shared_cache_requests_total", outcome="miss")

    def errors(self, reason: str = "unavailable") -> float:
        return self.sample("flow8_cache_errors_total", reason=reason)

    async def close(self) -> None:
        await self.store.close()
        await self.client.close()


@asynccontextmanager
async def instances(redis: RedisCache, n: int = 2, clock: Any = time.monotonic) -> AsyncIterator[list[Instance]]:
    """``n`` instances on one fresh database (dropped afterwards) and one Redis."""
    database = f"t{new_id('r').replace('-', '')[:14]}"
    made = [Instance(database, redis, clock) for _ in range(n)]
    try:
        await made[0].store.open()
        yield made
    finally:
        await made[0].client.drop_database(database)
        for instance in made:
            await instance.close()


@pytest.fixture
def shared_redis() -> RedisCache:
    return redis_settings(require_service("REDIS_URL", "scripts/services up --redis"))


# ------------------------------------------------------------ a Redis of the test's own, to kill


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RedisServer:
    """A redis-server on loopback, no persistence, its password in a config file (not the process list)."""

    def __init__(self, folder: Path) -> None:
        self.folder, self.port, self.password = folder, _free_port(), secrets.token_urlsafe(16)
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        conf = self.folder / "redis.conf"
        conf.write_text(
            f"bind 127.0.0.1\nport {self.port}\nrequirepass {self.password}\nsave ''\nappendonly no\n"
            f"dir {self.folder}\nlogfile {self.folder / 'redis.log'}\n"
        )
        self.proc = subprocess.Popen(["redis-server", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 20
        while not self._answers():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"redis-server did not start: {(self.folder / 'redis.log').read_text()[-2000:]}")
            time.sleep(0.02)  # polling a port that has no event to await

    def _answers(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                sock.sendall(f"AUTH {self.password}\r\nPING\r\n".encode())
                got = b""
                while b"+PONG" not in got:
                    chunk = sock.recv(100)
                    if not chunk:
                        return False
                    got += chunk
                return True
        except OSError:
            return False

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()

    def settings(self, **options: Any) -> RedisCache:
        return RedisCache(**{"host": "127.0.0.1", "port": self.port, "password": self.password, **options})


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    if shutil.which("redis-server") is None:
        missing_service("redis-server is not on PATH: `apt-get install redis-server` or `scripts/services up --redis`")
    server = RedisServer(tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.kill()


class Clock:
    """A monotonic clock the test moves: Redis's retry window passes without a sleep."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# ------------------------------------------------------------ tests


async def test_the_second_instance_reads_from_redis_not_mongodb(shared_redis: RedisCache) -> None:
    company = new_id("co")
    async with instances(shared_redis) as (a, b):
        await a.store.flows.put(company, FLOW)
        assert await a.store.flows.get(company, FLOW.name) == FLOW
        assert await a.store.flows.get(company, FLOW.name, 1) == FLOW
        assert (a.db_reads(), a.shared_misses()) == (2, 2)  # both from MongoDB, then into Redis

        assert await b.store.flows.get(company, FLOW.name) == FLOW
        assert await b.store.flows.get(company, FLOW.name, 1) == FLOW
        assert (b.db_reads(), b.shared_hits(), b.shared_misses()) == (0, 2, 0)
        assert await b.store.flows.get(company, FLOW.name) == FLOW  # now b's own cache: Redis not asked
        assert b.shared_hits() == 2


async def test_a_new_version_is_not_served_from_redis(shared_redis: RedisCache) -> None:
    company = new_id("co")
    async with instances(shared_redis, 3) as (a, b, c):
        await a.store.flows.put(company, FLOW)
        assert await b.store.flows.get(company, FLOW.name) == FLOW  # "latest" is v1 in Redis now
        await a.store.flows.put(company, V2)  # deletes the shared "latest"
        assert await c.store.flows.get(company, FLOW.name) == V2
        assert (c.db_reads(), c.shared_misses()) == (1, 1)
        assert await c.store.flows.get(company, FLOW.name, 1) == FLOW  # a version itself stays shared


async def test_tenants_do_not_share_entries(shared_redis: RedisCache) -> None:
    one, other = new_id("co"), new_id("co")
    async with instances(shared_redis) as (a, b):
        await a.store.flows.put(one, FLOW)
        assert await a.store.flows.get(one, FLOW.name) == FLOW
        assert await b.store.flows.get(other, FLOW.name) is None
        assert b.shared_hits() == 0


@pytest.mark.parametrize(
    "value", [b"not json", b'{"name": "other", "flowlets": []}', b"{" * (2 << 20)], ids=["junk", "other", "huge"]
)
async def test_a_bad_value_in_redis_is_counted_and_ignored(shared_redis: RedisCache, value: bytes) -> None:
    from redis.asyncio import Redis

    company = new_id("co")
    async with instances(shared_redis) as (a, b):
        await a.store.flows.put(company, FLOW)
        raw = Redis(host=shared_redis.host, port=shared_redis.port, db=shared_redis.db, password=_pw(shared_redis))
        try:
            await raw.set(key("flows", company, FLOW.name, "latest"), value)
            assert await b.store.flows.get(company, FLOW.name) == FLOW  # from MongoDB
            assert (b.errors("invalid"), b.db_reads()) == (1, 1)
            assert await raw.get(key("flows", company, FLOW.name, "latest")) != value  # replaced by the good one
        finally:
            await raw.aclose()


def _pw(settings: RedisCache) -> str | None:
    return settings.password.get_secret_value() if settings.password else None


async def test_reads_go_on_while_redis_is_down_and_hit_again_when_it_is_back(
    own_redis: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    clock = Clock()
    company = new_id("co")
    settings = own_redis.settings(retry_seconds=5)
    async with instances(settings, 3, clock) as (a, b, c):
        await a.store.flows.put(company, FLOW)
        assert await a.store.flows.get(company, FLOW.name, 1) == FLOW

        own_redis.kill()
        with caplog.at_level(logging.WARNING, logger="flow8.cache"):
            assert await b.store.flows.get(company, FLOW.name, 1) == FLOW  # from MongoDB
            assert await b.store.flows.get(company, FLOW.name) == FLOW  # Redis not even tried: in its retry window
        assert b.db_reads() == 2
        assert b.errors() >= 2
        said = [r.getMessage() for r in caplog.records if r.name == "flow8.cache"]
        assert len(said) == 1 and f"127.0.0.1:{own_redis.port}" in said[0] and "unavailable" in said[0]
        assert own_redis.password not in caplog.text and not caplog.records[0].exc_info
        assert own_redis.password not in repr(b.shared)

        own_redis.start()  # empty: no persistence
        clock.now += 6  # past the retry window
        assert await b.store.flows.get(company, FLOW.name, 1) == FLOW  # b's own cache
        assert await c.store.flows.get(company, FLOW.name, 1) == FLOW  # MongoDB, then into Redis again
        assert await a.store.flows.get(company, FLOW.name) == FLOW
        errors_before = c.errors()
        assert await b.store.flows.get(company, FLOW.name) == FLOW  # b's own; a filled "latest" in Redis
        d = Instance(a.store.database, settings, clock)
        try:
            assert await d.store.flows.get(company, FLOW.name, 1) == FLOW
            assert (d.db_reads(), d.shared_hits(), d.errors()) == (0, 1, 0)
        finally:
            await d.close()
        assert c.errors() == errors_before


async def test_a_refused_password_falls_through_to_mongodb(own_redis: RedisServer) -> None:
    wrong = own_redis.settings(password="not-" + own_redis.password)
    company = new_id("co")
    async with instances(wrong, 1, Clock()) as (a,):
        await a.store.flows.put(company, FLOW)  # its delete of the shared "latest" is refused: error 1
        assert await a.store.flows.get(company, FLOW.name) == FLOW  # Redis in its retry window: errors 2, 3
        assert (a.db_reads(), a.errors()) == (1, 3)  # the get, then the set of what MongoDB answered


def test_the_settings_read_the_redis_cache_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLOW8_CACHE__BACKEND", "redis")
    monkeypatch.setenv("FLOW8_CACHE__REDIS__HOST", "redis.company.com")
    monkeypatch.setenv("FLOW8_CACHE__REDIS__PASSWORD", "s3cret-pw")
    settings = Settings()
    assert settings.cache.backend == "redis"
    assert settings.cache.redis.host == "redis.company.com" and settings.cache.redis.ttl_seconds == 300
    assert "s3cret-pw" not in repr(settings) and "s3cret-pw" not in str(settings.model_dump())


async def test_with_a_signing_key_a_value_written_to_redis_by_someone_else_is_ignored(
    shared_redis: RedisCache,
) -> None:
    from redis.asyncio import Redis

    signed = shared_redis.model_copy(update={"signing_key": SecretStr(secrets.token_urlsafe(32))})
    victim, attacker = new_id("co"), new_id("co")
    forged = FlowDefinition.model_validate({**FLOW.model_dump(), "description": "forged"})
    async with instances(signed) as (a, b):
        await a.store.flows.put(victim, FLOW)
        await a.store.flows.put(attacker, forged)
        assert await a.store.flows.get(victim, FLOW.name) == FLOW
        assert await a.store.flows.get(attacker, FLOW.name) == forged
        raw = Redis(host=signed.host, port=signed.port, db=signed.db, password=_pw(signed))
        try:
            victims = key("flows", victim, FLOW.name, "latest")
            copied = await raw.get(key("flows", attacker, FLOW.name, "latest"))  # validly signed, another key
            for value in (copied, forged.model_dump_json().encode(), b"\0" * 32 + forged.model_dump_json().encode()):
                await raw.set(victims, value)
                assert await b.store.flows.get(victim, FLOW.name) == FLOW  # from MongoDB
                b.store.flows._cache.clear()  # b's own tier emptied, so its next read asks Redis
        finally:
            await raw.aclose()
        assert (b.errors("invalid"), b.db_reads(), b.shared_hits()) == (3, 3, 0)
        assert await b.store.flows.get(victim, FLOW.name, 1) == FLOW  # not yet shared: MongoDB, then signed in Redis
        c = Instance(a.store.database, signed)
        try:
            assert await c.store.flows.get(victim, FLOW.name, 1) == FLOW
            assert (c.db_reads(), c.shared_hits()) == (0, 1)  # signed values are hits
        finally:
            await c.close()


# ------------------------------------------------------------ audit verdicts (the API's AuditQueryCache)


class Verdicts:
    """A verdict query as the API's (``flow8_streams.http.audits.verdict``) answers: counted runs."""

    def __init__(self) -> None:
        self.runs = 0

    async def __call__(self, flt: Any) -> dict[str, Any]:
        self.runs += 1
        return {
            "play_id": flt.play,
            "company_id": flt.company,
            "status": "succeeded",
            "verdict": "ok",
            "findings": [],
            "last_seq": 5,
            "head_hash": "ab" * 32,
        }


async def test_audit_verdicts_are_shared_only_when_signed(shared_redis: RedisCache) -> None:
    from redis.asyncio import Redis

    from flow8_streams.audit.cache import shared_key
    from flow8_streams.audit.sources import Filter
    from flow8_streams.http.audits import audit_cache, held_verdict

    signed = shared_redis.model_copy(update={"signing_key": SecretStr(secrets.token_urlsafe(32))})
    company = new_id("co")
    p1, p2 = Filter(company, play="p1"), Filter(company, play="p2")
    instances = [RedisSharedCache(signed, Metrics()) for _ in range(2)]
    queries = [Verdicts(), Verdicts()]
    made = []
    for shared, query in zip(instances, queries, strict=True):
        settings = Settings(cache={"backend": "redis", "redis": signed.model_dump()})
        backend = SimpleNamespace(shared_cache=shared)
        cache = audit_cache(backend, settings, Metrics())  # type: ignore[arg-type]
        assert cache.shared is not None
        cache.query = query
        made.append(cache)
    raw = Redis(host=signed.host, port=signed.port, db=signed.db, password=_pw(signed))
    try:
        assert (await made[0].get(p1))["play_id"] == "p1"
        assert (await made[1].get(p1))["play_id"] == "p1"
        assert [q.runs for q in queries] == [1, 0]  # the second instance's answer came from Redis
        # p1's signed verdict copied onto p2's key, and an unsigned verdict of p2: both ignored
        await made[0].get(p2)
        await raw.set(shared_key(p2), await raw.get(shared_key(p1)))
        assert (await made[1].get(p2))["play_id"] == "p2" and queries[1].runs == 1
        made[1]._answers.clear()
        await raw.set(shared_key(p2), b'{"at": 0, "answer": null}')
        assert (await made[1].get(p2))["play_id"] == "p2" and queries[1].runs == 2
        sample = instances[1]._metrics.registry.get_sample_value  # type: ignore[union-attr]
        assert sample("flow8_cache_errors_total", {"cache": "audit", "backend": "redis", "reason": "invalid"}) == 2
        assert held_verdict(p2, await queries[0](p1)) is None  # a verdict of another play is never taken
    finally:
        await raw.aclose()
        for shared in instances:
            await shared.close()

    unsigned = Settings(cache={"backend": "redis", "redis": shared_redis.model_dump()})
    shared = RedisSharedCache(shared_redis)
    try:  # without the signing key a verdict from Redis would be Redis's word: kept per instance
        assert audit_cache(SimpleNamespace(shared_cache=shared), unsigned, Metrics()).shared is None  # type: ignore[arg-type]
    finally:
        await shared.close()
