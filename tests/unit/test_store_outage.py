"""``StoreOutage`` and ``WaitingKV``: how a worker waits out a MongoDB outage, without a server.

A fake store fails its first calls the way the adapter does (``StoreUnavailable`` caused by
pymongo's error), then answers; the tests look at what was tried, counted and said."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest
from pymongo.errors import AutoReconnect, ServerSelectionTimeoutError

from flow8_streams.errors import InvalidInput, StoreUnavailable
from flow8_streams.logs import ContextFilter, log_context
from flow8_streams.metrics import Metrics
from flow8_streams.runtimes.streams.retrying import StoreOutage, WaitingKV
from flow8_streams.stores.ports import KVEntry
from tests.conformance.streams_harness import metric, parse_metrics


def down(cause: Exception) -> StoreUnavailable:
    """What ``MongoStore.errors`` raises for a pymongo error."""
    exc = StoreUnavailable(f"MongoDB at 127.0.0.1:1 is unreachable (x): {cause}")
    exc.__cause__ = cause
    return exc


class Flaky:
    """A call that raises each of ``errors`` in turn, then returns ``value``."""

    def __init__(self, *errors: Exception, value: Any = "ok") -> None:
        self.errors = list(errors)
        self.value = value
        self.calls = 0

    async def __call__(self) -> Any:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return self.value


def samples(metrics: Metrics) -> Any:
    return parse_metrics(metrics.render().decode())


def outage(metrics: Metrics) -> StoreOutage:
    return StoreOutage("127.0.0.1:1", metrics, pause_s=0.01, try_s=0, settle_s=0)


async def test_an_outage_is_waited_out_counted_and_told_once(caplog: pytest.LogCaptureFixture) -> None:
    metrics = Metrics()
    waits = outage(metrics)
    refused = ServerSelectionTimeoutError("127.0.0.1:1: [Errno 111] Connection refused")
    project = Flaky(*(down(refused) for _ in range(4)))
    claim = Flaky(down(refused), down(refused))
    with caplog.at_level(logging.INFO, logger="flow8.streams"):
        assert await waits.call("projector", "project", project) == "ok"
        assert await waits.call("orchestrator", "claim_play_id", claim) == "ok"
    assert (project.calls, claim.calls) == (5, 3)
    got = samples(metrics)
    assert metric(got, "flow8_store_retries_total", store="mongodb", operation="project") == 4
    assert metric(got, "flow8_store_retries_total", store="mongodb", operation="claim_play_id") == 2
    assert metric(got, "flow8_store_waiting", store="mongodb") == 0
    said = [r.getMessage() for r in caplog.records]
    # the first call's outage: one line when it began, one when it ended; the second call's its own
    assert len([m for m in said if "unreachable since" in m]) == 2, said
    assert len([m for m in said if " back after " in m]) == 2, said
    assert said[0].startswith("MongoDB at 127.0.0.1:1 unreachable since ")
    assert "projector waiting, retrying every 0.01 s" in said[0]
    assert "Traceback" not in caplog.text


async def test_a_wait_bounded_by_within_raises_the_store_error_when_it_is_over() -> None:
    waits = outage(Metrics())
    refused = ServerSelectionTimeoutError("refused")
    forever = Flaky(*(down(refused) for _ in range(10_000)))
    with pytest.raises(StoreUnavailable):
        await waits.call("flowlets", "kv_incr", forever, within=0.2)
    assert forever.calls > 1
    assert waits.note() is not None  # still down, as far as the worker knows
    assert waits.waiting == 0


async def test_other_errors_are_not_retried() -> None:
    waits = outage(Metrics())
    bad = Flaky(InvalidInput("not a number"))
    with pytest.raises(InvalidInput):
        await waits.call("flowlets", "kv_incr", bad)
    assert bad.calls == 1


async def test_a_call_that_never_failed_does_not_end_an_outage(caplog: pytest.LogCaptureFixture) -> None:
    """A cache hit passes while MongoDB is down: it proves nothing about MongoDB."""
    waits = outage(Metrics())
    with caplog.at_level(logging.INFO, logger="flow8.streams"):
        with pytest.raises(StoreUnavailable):
            lost = Flaky(*(down(AutoReconnect("x")) for _ in range(1000)))
            await waits.call("projector", "project", lost, within=0.1)
        assert await waits.call("orchestrator", "read_flow", Flaky()) == "ok"
    assert waits.note() is not None
    assert [r for r in caplog.records if "back after" in r.getMessage()] == []


class FakeKV:
    """Each operation fails once with ``error``, then answers."""

    def __init__(self, error: Exception) -> None:
        self.error = error
        self.calls: dict[str, int] = {}

    async def _op(self, name: str) -> Any:
        self.calls[name] = self.calls.get(name, 0) + 1
        if self.calls[name] == 1:
            raise self.error
        return KVEntry("k", 1, 1)

    async def get(self, company_id: str, key: str) -> KVEntry | None:
        return await self._op("get")

    async def set(self, company_id: str, key: str, value: Any) -> KVEntry:
        return await self._op("set")

    async def cas(self, company_id: str, key: str, value: Any, expected_version: int) -> KVEntry | None:
        return await self._op("cas")

    async def incr(self, company_id: str, key: str, by: float, op_id: str) -> KVEntry:
        return await self._op("incr")

    async def keys(self, company_id: str, prefix: str = "", limit: int = 50, after: str | None = None) -> list[str]:
        await self._op("keys")
        return ["k"]


async def test_a_flowlets_kv_call_is_tried_again_only_where_a_repeat_does_no_harm() -> None:
    sent = FakeKV(down(AutoReconnect("connection closed")))  # it may have landed
    kv = WaitingKV(sent, outage(Metrics()), within=5)
    assert (await kv.incr("acme", "k", 1, "op")).value == 1  # counted once per op id: safe
    assert await kv.get("acme", "k") is not None
    assert await kv.set("acme", "k", 1) is not None
    assert await kv.keys("acme") == ["k"]
    with pytest.raises(StoreUnavailable):  # a cas that may have landed would find its own version
        await kv.cas("acme", "k", 2, 1)
    assert sent.calls == {"incr": 2, "get": 2, "set": 2, "keys": 2, "cas": 1}

    never_sent = FakeKV(down(ServerSelectionTimeoutError("no server")))
    kv = WaitingKV(never_sent, outage(Metrics()), within=5)
    assert await kv.cas("acme", "k", 2, 1) is not None
    assert never_sent.calls == {"cas": 2}


async def test_the_outage_lines_carry_no_play_context(caplog: pytest.LogCaptureFixture) -> None:
    """The call that notices is some play's; the line is about the store, for every play."""
    waits = outage(Metrics())
    caplog.handler.addFilter(ContextFilter())
    with caplog.at_level(logging.INFO, logger="flow8.streams"), log_context(company_id="acme", play_id="p-1"):
        await waits.call("flowlets", "kv_incr", Flaky(down(AutoReconnect("x"))))
    said = [r for r in caplog.records if "unreachable since" in r.getMessage() or "back after" in r.getMessage()]
    assert len(said) == 2 and all(r.flow8_context == "" for r in said), [r.flow8_context for r in said]


async def test_a_server_that_answers_once_in_between_is_one_outage(caplog: pytest.LogCaptureFixture) -> None:
    """A clean stop refuses new connections a moment before it drops the open ones: a call may
    pass in between. Until calls pass for ``settle_s`` with no failure, the outage goes on."""
    waits = StoreOutage("127.0.0.1:1", Metrics(), pause_s=0.01, try_s=0, settle_s=0.3)
    refused = ServerSelectionTimeoutError("refused")
    with caplog.at_level(logging.INFO, logger="flow8.streams"):
        await waits.call("flowlets", "kv_incr", Flaky(down(refused)))  # refused, then passes
        assert not waits.over.is_set()
        await waits.call("projector", "project", Flaky(down(refused), down(refused)))  # down after all
        async with asyncio.timeout(5):
            await waits.over.wait()
    said = [r.getMessage() for r in caplog.records]
    assert len([m for m in said if "unreachable since" in m]) == 1, said
    back = [m for m in said if " back after " in m]
    assert len(back) == 1 and "(3 retries while it was down)" in back[0], said
    assert waits.note() is None
