"""The public Python API: ``flow8_streams.__all__``, the typed wheel, and the Kafka client
(``flow8_streams.client``) of upstream and downstream systems."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import secrets
import subprocess
import sys
import uuid
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.partitioner import DefaultPartitioner

import flow8_streams
from flow8_streams import errors
from flow8_streams.client import Producer, kafka_settings, results
from flow8_streams.domain.results import PlayResult
from flow8_streams.errors import InvalidCommand, InvalidInput, LimitExceeded, StoreUnavailable
from flow8_streams.runtimes.streams.admin import ensure_topics
from flow8_streams.runtimes.streams.client import tail_results
from flow8_streams.settings import load_settings
from flow8_streams.stores.mongo import MongoStore
from tests.conformance.streams_harness import WorkerGroup
from tests.security.test_kafka_scram import scram_login
from tests.services import require_service
from tests.streams.support import fl, make_flow, running_group
from tests.wheel import build_wheel, fresh_venv

REPO = Path(__file__).resolve().parent.parent

CURATED = {
    "FlowDefinition",
    "FlowletDefinition",
    "RetryPolicy",
    "StartPlay",
    "CancelPlay",
    "PlayResult",
    "PlayState",
    "ModuleContext",
    "ModuleFailed",
    "Pending",
    "LocalRuntime",
    "Limits",
    "Flow8Error",
    "InvalidInput",
    "InvalidFlow",
    "InvalidCommand",
    "CompanyMismatch",
    "LimitExceeded",
    "UnknownModule",
    "NotFound",
    "StoreUnavailable",
    "ReadTooLarge",
    "ReadTimedOut",
    "BadMessage",
    "TemplateError",
    "EngineError",
    "__version__",
}
HEAVY = ("faust", "aiokafka", "pymongo", "mode")


def loaded_after(statement: str) -> list[str]:
    """The heavy libraries a fresh interpreter has loaded after ``statement``."""
    probe = f"import json, sys; {statement}; print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))"
    done = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, check=True)
    return list(json.loads(done.stdout))


def test_all_is_the_curated_list_and_every_name_imports() -> None:
    assert set(flow8_streams.__all__) == CURATED
    assert len(flow8_streams.__all__) == len(CURATED)
    for name in flow8_streams.__all__:
        assert getattr(flow8_streams, name) is not None, name
    namespace: dict[str, object] = {}
    exec("from flow8_streams import *", namespace)
    assert namespace.keys() >= CURATED
    assert flow8_streams.ModuleFailed is errors.ModuleFailed
    with pytest.raises(AttributeError, match="no attribute 'nosuch'"):
        _ = flow8_streams.nosuch


def test_every_error_class_is_public() -> None:
    defined = {
        name
        for name, value in vars(errors).items()
        if inspect.isclass(value) and issubclass(value, errors.Flow8Error) and value.__module__ == errors.__name__
    }
    assert defined <= set(flow8_streams.__all__), sorted(defined - set(flow8_streams.__all__))


def test_importing_the_package_loads_no_kafka_or_mongodb_library() -> None:
    assert loaded_after("import flow8_streams") == []
    assert loaded_after("from flow8_streams import *") == []
    # an upstream or downstream system needs Kafka's client only
    assert loaded_after("import flow8_streams.client") == ["aiokafka"]


# -- the client, without a broker: what it refuses before anything is sent --


async def test_a_bad_company_id_is_refused_naming_the_field() -> None:
    producer = Producer("127.0.0.1:1")  # never started: nothing may reach a broker
    with pytest.raises(InvalidCommand, match=r"StartPlay: company_id: String should match pattern"):
        await producer.start_play("ac me", "greet")
    with pytest.raises(InvalidCommand, match=r"CancelPlay: company_id: "):
        await producer.cancel_play("", "p-1")
    with pytest.raises(InvalidCommand, match=r"StartPlay: flow_version: "):
        await producer.start_play("acme", "greet", flow_version=0)


async def test_a_play_id_in_the_reserved_prefix_is_refused() -> None:
    producer = Producer("127.0.0.1:1")
    with pytest.raises(InvalidCommand, match=r"play_id: play ids starting with 'flow8-' are reserved"):
        await producer.start_play("acme", "greet", play_id="flow8-0-17")


async def test_a_command_over_the_limits_is_refused_before_it_is_queued() -> None:
    producer = Producer(load_settings(kafka_bootstrap_servers="127.0.0.1:1", limits={"max_input_bytes": 64}))
    with pytest.raises(LimitExceeded, match=r"input is \d+ bytes, over the limit of 64 \(limits.max_input_bytes\)"):
        await producer.start_play("acme", "greet", {"text": "x" * 100})
    with pytest.raises(InvalidCommand, match="input is not JSON"):
        await producer.start_play("acme", "greet", {"when": object()})
    with pytest.raises(RuntimeError, match="async with"):
        await producer.start_play("acme", "greet", {"text": "fits"})


async def test_results_refuse_a_bad_company_or_play_id() -> None:
    with pytest.raises(InvalidCommand, match="company: String should match pattern"):
        await anext(results("127.0.0.1:1", company="ac me"))
    with pytest.raises(InvalidCommand, match="play_id: String should match pattern"):
        await anext(results("127.0.0.1:1", company="acme", play_id="a/b"))


async def test_a_broker_that_does_not_answer_is_a_store_unavailable_error() -> None:
    closed = "127.0.0.1:1"  # nothing listens on port 1
    with pytest.raises(StoreUnavailable, match=f"cannot reach Kafka at {closed}"):
        async with Producer(closed):
            pass
    with pytest.raises(StoreUnavailable, match=f"cannot reach Kafka at {closed}"):
        await anext(results(closed, company="acme"))


def test_settings_and_kafka_options_are_not_mixed() -> None:
    settings = kafka_settings("10.0.0.1:9092", topic_prefix="prod")
    assert (settings.kafka_bootstrap_servers, settings.topics.commands) == ("10.0.0.1:9092", "prod.commands")
    assert kafka_settings(settings) is settings
    with pytest.raises(InvalidInput, match="not both"):
        kafka_settings(settings, topic_prefix="other")
    with pytest.raises(InvalidInput, match="needs KAFKA_SASL_USERNAME and KAFKA_SASL_PASSWORD"):
        kafka_settings("10.0.0.1:9092", security_protocol="SASL_SSL")


# -- the wheel: typed for its users --

TYPED_USE = """
from __future__ import annotations

from flow8_streams import (
    Flow8Error, FlowDefinition, LocalRuntime, ModuleContext, ModuleFailed, Pending, PlayResult, StartPlay,
    __version__,
)
from flow8_streams.client import Producer, results


def shout(ctx: ModuleContext) -> str | Pending:
    if not isinstance(ctx.input, str):
        raise ModuleFailed("a text is expected", retryable=False)
    return ctx.input.upper()


async def upstream() -> str:
    async with Producer("127.0.0.1:9092", topic_prefix="flow8") as producer:
        play_id: str = await producer.start_play("acme", "greet", {"name": "Ada"}, play_id=None)
        await producer.cancel_play("acme", play_id)
    return play_id


async def downstream(play_id: str) -> list[PlayResult]:
    try:
        return [result async for result in results(company="acme", play_id=play_id, from_beginning=True)]
    except Flow8Error:
        return []


async def close(runtime: LocalRuntime) -> None:
    await runtime.close()


flow = FlowDefinition.model_validate({"name": "greet", "flowlets": [{"name": "a", "module_ref": "echo"}]})
command = StartPlay(company_id="acme", flow=flow.name)
version: str = __version__
"""
MISTYPED_USE = """
from flow8_streams.client import Producer

async def upstream(producer: Producer) -> int:
    return await producer.start_play("acme", "greet")
"""


@pytest.mark.slow
def test_the_built_wheel_passes_mypy_strict_in_a_fresh_venv(tmp_path: Path) -> None:
    wheel = build_wheel(tmp_path / "dist")
    assert "flow8_streams/py.typed" in zipfile.ZipFile(wheel).namelist()
    python = fresh_venv(tmp_path / "venv", wheel, "mypy")
    work = tmp_path / "user"
    work.mkdir()  # outside the repository: only the installed wheel can be found
    (work / "typed_use.py").write_text(TYPED_USE)
    (work / "mistyped_use.py").write_text(MISTYPED_USE)

    def mypy(file: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [python, "-m", "mypy", "--strict", "--no-incremental", file], cwd=work, capture_output=True, text=True
        )

    good = mypy("typed_use.py")
    assert good.returncode == 0, good.stdout + good.stderr
    bad = mypy("mistyped_use.py")  # the types are real, not Any
    assert bad.returncode == 1, bad.stdout + bad.stderr
    assert 'Incompatible return value type (got "str", expected "int")' in bad.stdout


# -- the client against a real broker and workers --


@pytest.fixture(scope="module")
def group(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WorkerGroup]:
    with running_group(tmp_path_factory.mktemp("workers")) as group:
        yield group


def company_on_the_partition_of(company: str, partitions: int) -> str:
    """Another company whose commands, and so results, share ``company``'s partition."""
    choose = DefaultPartitioner()
    every = list(range(partitions))
    target = choose(company.encode(), every, every)
    return next(
        f"{company}-other{i}" for i in range(10_000) if choose(f"{company}-other{i}".encode(), every, every) == target
    )


@pytest.mark.kafka
@pytest.mark.mongo
@pytest.mark.slow
async def test_start_play_returns_the_id_and_results_yield_that_plays_only(group: WorkerGroup) -> None:
    settings = group.settings
    other = company_on_the_partition_of("acme", settings.topics.partitions)
    flow = make_flow("api-echo", fl("echo", "echo"))
    store = MongoStore(settings.mongodb_uri, settings.mongodb_database)
    await store.open()
    try:
        for company in ("acme", other):
            await store.flows.put(company, flow)
    finally:
        await store.close()

    async with asyncio.timeout(90):
        # Kafka options only, as an upstream system has them
        async with Producer(settings.kafka_bootstrap_servers, topic_prefix=settings.topics.prefix) as producer:
            first = await producer.start_play("acme", flow.name, {"n": 1})
        assert uuid.UUID(first).version == 4
        got = [r async for r in results(settings, company="acme", play_id=first, from_beginning=True)]
        assert [(r.play_id, r.company_id, r.flow, r.status) for r in got] == [(first, "acme", flow.name, "succeeded")]

        given = f"g-{uuid.uuid4().hex}"
        async with Producer(settings) as producer:
            assert await producer.start_play(other, flow.name, {"n": 2}, play_id=given) == given
        (theirs,) = [r async for r in results(settings, company=other, play_id=given, from_beginning=True)]
        assert (theirs.company_id, theirs.status) == (other, "succeeded")

        async with Producer(settings) as producer:
            second = await producer.start_play("acme", flow.name, {"n": 3})
        # the other company's result lies between acme's two on their shared partition
        on_topic = []
        async with contextlib.aclosing(tail_results(settings, from_beginning=True)) as everyone:  # type: ignore[type-var]
            async for result, _ in everyone:
                on_topic.append(result.play_id)
                if result.play_id == second:
                    break
        assert on_topic.index(first) < on_topic.index(given) < on_topic.index(second)
        ours = []
        async with contextlib.aclosing(results(settings, company="acme", from_beginning=True)) as acme:
            async for result in acme:
                ours.append((result.play_id, result.company_id))
                if result.play_id == second:
                    break
        assert ours == [(first, "acme"), (second, "acme")]


@pytest.mark.kafka
@pytest.mark.mongo
@pytest.mark.slow
async def test_cancel_play_cancels_a_running_play(group: WorkerGroup) -> None:
    settings = group.settings
    flow = make_flow("api-sleep", fl("wait", "sleep"))
    store = MongoStore(settings.mongodb_uri, settings.mongodb_database)
    await store.open()
    try:
        await store.flows.put("acme", flow)
    finally:
        await store.close()

    async with asyncio.timeout(60):
        ready = asyncio.Event()
        stream = results(settings, company="acme", on_ready=ready.set)

        async def first_result() -> PlayResult:
            return await anext(stream)

        first = asyncio.create_task(first_result())
        await ready.wait()
        async with Producer(settings) as producer:
            play_id = await producer.start_play("acme", flow.name, {"seconds": 120})
            await producer.cancel_play("acme", play_id, reason="not needed")
        result = await first
        await stream.aclose()
    assert (result.play_id, result.status) == (play_id, "cancelled")
    assert result.error is not None and "not needed" in result.error


@pytest.mark.kafka
@pytest.mark.slow
async def test_the_client_logs_in_with_the_sasl_options_it_is_given() -> None:
    bootstrap = require_service("KAFKA_SASL_BOOTSTRAP_SERVERS")
    login = scram_login()  # not from the environment: the options alone must log in
    assert (login["KAFKA_SECURITY_PROTOCOL"], login["KAFKA_SASL_MECHANISM"]) == ("SASL_PLAINTEXT", "SCRAM-SHA-256")
    user, password = login["KAFKA_SASL_USERNAME"], login["KAFKA_SASL_PASSWORD"]
    prefix = f"t{uuid.uuid4().hex[:10]}"

    def producer(password: str) -> Producer:
        return Producer(
            bootstrap,
            topic_prefix=prefix,
            security_protocol="SASL_PLAINTEXT",
            sasl_mechanism="SCRAM-SHA-256",
            sasl_username=user,
            sasl_password=password,
        )

    settings = producer(password).settings
    await ensure_topics(settings)
    try:
        async with asyncio.timeout(60):
            async with producer(password) as logged_in:
                play_id = await logged_in.start_play("acme", "greet")
                await logged_in.flush()  # raises unless the broker took it
            wrong = f"wrong-{secrets.token_hex(8)}"
            with pytest.raises(StoreUnavailable) as refused:
                async with producer(wrong):
                    pass
        message = str(refused.value)
        assert f"as {user!r} (SASL_PLAINTEXT, SCRAM-SHA-256)" in message, message
        assert wrong not in message and password not in message
        assert uuid.UUID(play_id).version == 4
    finally:
        admin = AIOKafkaAdminClient(**settings.kafka_client_options())
        await admin.start()
        try:
            await admin.delete_topics([t for t in await admin.list_topics() if t.startswith(f"{prefix}.")])
        finally:
            await admin.close()
