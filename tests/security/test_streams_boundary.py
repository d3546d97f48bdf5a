"""The streams runtime against a hostile producer (real Kafka, FerretDB and ``flow8 worker``):
another company's messages are dead-lettered as ``company_mismatch``; poison (too deep, too
large) is dead-lettered and its partition keeps flowing; an output over the limit fails its
flowlet cleanly."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime

import orjson
import pytest
from aiokafka import AIOKafkaProducer

from flow8_streams.domain.messages import CancelPlay, FlowletResult, StartPlay
from flow8_streams.domain.state import PlayStatus
from flow8_streams.runtimes.streams import codec
from tests.conformance.streams_harness import StreamsHarness, WorkerGroup, metric
from tests.streams.support import fl, make_flow, running_group
from tests.streams.test_dlq import read_dlq

pytestmark = [pytest.mark.kafka, pytest.mark.mongo, pytest.mark.slow]

OWNER, INTRUDER = "owner-co", "intruder-co"
SLOW = make_flow("pay", fl("charge", "sleep", input={"seconds": 1.5}), fl("receipt", "echo", "charge", input={"ok": 1}))
ECHO = make_flow("echo-input", fl("a", "echo"))
OUTPUT_LIMIT = 50_000


@pytest.fixture(scope="module")
def worker_group(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WorkerGroup]:
    env = {"FLOW8_LIMITS__MAX_OUTPUT_BYTES": str(OUTPUT_LIMIT)}
    with running_group(tmp_path_factory.mktemp("workers"), extra_env=env) as group:
        yield group


@pytest.fixture
async def harness(worker_group: WorkerGroup, no_leaked_tasks: None) -> AsyncIterator[StreamsHarness]:
    async with StreamsHarness(worker_group) as harness:
        yield harness


async def send_completion(harness: StreamsHarness, key: str, value: bytes) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=harness.settings.kafka_bootstrap_servers)
    await producer.start()
    try:
        await producer.send_and_wait(harness.settings.topics.completions, value, key=key.encode())
    finally:
        await producer.stop()


def new_id() -> str:
    return f"p-{uuid.uuid4().hex[:12]}"


async def test_another_companys_messages_are_dead_lettered_and_change_nothing(
    harness: StreamsHarness, worker_group: WorkerGroup
) -> None:
    settings = harness.settings
    for company in (OWNER, INTRUDER):
        await harness.store.flows.put(company, SLOW)
    play = new_id()
    await harness.start(SLOW, {"amount": 10}, company_id=OWNER, play_id=play)
    await harness.wait_for_event(play, lambda e: e.type == "FlowletScheduled")

    now = datetime.now(UTC)
    forged_result = FlowletResult(
        play_id=play, company_id=INTRUDER, flowlet="charge", attempt=1, ok=True, output={"paid_to": "intruder"},
        started_at=now, ended_at=now,
    )  # fmt: skip
    await send_completion(harness, INTRUDER, codec.encode(forged_result))
    await harness.producer.send(CancelPlay(company_id=INTRUDER, play_id=play))
    await harness.producer.send(StartPlay(company_id=INTRUDER, flow=SLOW.name, play_id=play, input={"amount": 1e6}))
    await harness.producer.flush()

    final = await harness.wait(play)
    assert final.status is PlayStatus.SUCCEEDED
    assert final.input == {"amount": 10}
    assert final.flowlets["charge"].output != {"paid_to": "intruder"}
    assert {e.company_id for e in await harness.events(play)} == {OWNER}

    # and once the play is finished, its id is still the owner's
    await harness.producer.send(StartPlay(company_id=INTRUDER, flow=SLOW.name, play_id=play))
    await harness.producer.flush()

    dead = await read_dlq(settings, 4)
    assert len(dead) == 4
    for message in dead:
        headers = {k: v.decode() for k, v in message.headers}
        assert headers["flow8-reason"] == "company_mismatch", headers
        assert OWNER not in headers["flow8-error"]
        assert message.key == INTRUDER.encode()
    sources = sorted(dict(m.headers)["flow8-source-topic"].decode() for m in dead)
    assert sources == sorted([settings.topics.completions] + [settings.topics.commands] * 3)
    assert await harness.store.plays.get(INTRUDER, play) is None
    samples = worker_group.metrics(0)
    assert metric(samples, "flow8_dlq_messages_total", topic=settings.topics.commands, reason="company_mismatch") == 3


async def test_poison_is_dead_lettered_and_the_partition_flows_on(harness: StreamsHarness) -> None:
    company = f"poison-{uuid.uuid4().hex[:6]}"
    await harness.store.flows.put(company, ECHO)
    too_deep = new_id()
    too_large = new_id()
    good = new_id()
    # 300 levels: decodes (orjson stops at 1024), and was a crash inside the engine
    deep = b'{"d":' * 300 + b'"bottom"' + b"}" * 300
    for play_id, play_input in ((too_deep, deep), (too_large, orjson.dumps({"blob": "x" * 300_000}))):
        head = orjson.dumps({"type": "StartPlay", "company_id": company, "flow": ECHO.name, "play_id": play_id})
        await harness.producer.send_raw(company.encode(), head[:-1] + b',"input":' + play_input + b"}")
    await harness.producer.send(StartPlay(company_id=company, flow=ECHO.name, play_id=good, input={"n": 1}))
    await harness.producer.flush()

    final = await harness.wait(good)  # after both, on the same partition
    assert final.status is PlayStatus.SUCCEEDED
    reasons = {}
    for message in await read_dlq(harness.settings, 2, key=company.encode()):
        headers = {k: v.decode() for k, v in message.headers}
        reasons[orjson.loads(message.value)["play_id"]] = (headers["flow8-reason"], headers["flow8-error"])
    assert reasons[too_deep][0] == "too_deep" and "deeper than the limit of 64" in reasons[too_deep][1]
    assert reasons[too_large][0] == "too_large" and "limits.max_input_bytes" in reasons[too_large][1]
    assert await harness.events(too_deep) == [] and await harness.events(too_large) == []


async def test_an_output_over_the_limit_fails_its_flowlet_and_nothing_is_half_written(
    harness: StreamsHarness,
) -> None:
    company = f"big-{uuid.uuid4().hex[:6]}"
    play = new_id()
    final = await harness.run(ECHO, {"blob": "y" * (OUTPUT_LIMIT + 1000)}, company_id=company, play_id=play)
    assert final.status is PlayStatus.FAILED
    error = final.flowlets["a"].error
    assert error is not None and error.startswith("output_too_large: flowlet 'a' returned")
    assert f"over the limit of {OUTPUT_LIMIT} (limits.max_output_bytes)" in error
    projected = await harness.projection(company, play)
    assert projected is not None and projected.status is PlayStatus.FAILED
    assert projected.flowlets["a"].output is None
