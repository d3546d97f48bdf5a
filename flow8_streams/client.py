"""The Kafka client of flow8's two outside users: an upstream system starting and cancelling
plays (``Producer``) and a downstream system reading their results (``results``).

Both need only Kafka: its bootstrap servers, the deployment's topic prefix and, when the
brokers take logins, the SASL settings (a ``Settings`` works too). What they are not given
comes from the environment as for ``flow8`` itself (``KAFKA_BOOTSTRAP_SERVERS``,
``FLOW8_TOPICS__PREFIX``, ``KAFKA_SECURITY_PROTOCOL``, ``KAFKA_SASL_*``)::

    async with Producer("127.0.0.1:9092") as producer:
        play_id = await producer.start_play("acme", "process-documents", {"documents": ["a.txt"]})
    async for result in results("127.0.0.1:9092", company="acme", play_id=play_id):
        print(result.status, result.output)

A command is checked as a worker checks it (the models, then the deployment's limits)
before it is queued, so one a worker would dead-letter raises here instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncGenerator, Callable
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Self, TypeVar, cast

from aiokafka.errors import KafkaError
from pydantic import BaseModel, TypeAdapter, ValidationError
from pydantic_core import PydanticSerializationError

from flow8_streams.domain.messages import CancelPlay, CompanyId, PlayId, StartPlay
from flow8_streams.domain.results import PlayResult
from flow8_streams.errors import InvalidCommand, InvalidInput, LimitExceeded, StoreUnavailable
from flow8_streams.redact import redact_uri, scrub
from flow8_streams.runtimes.streams import codec
from flow8_streams.runtimes.streams.client import CommandProducer, tail_results
from flow8_streams.settings import Settings, load_settings

__all__ = ["Producer", "kafka_settings", "results"]

SecurityProtocol = Literal["PLAINTEXT", "SASL_PLAINTEXT", "SASL_SSL"]
SaslMechanism = Literal["SCRAM-SHA-256", "SCRAM-SHA-512", "PLAIN"]

# sends not yet known delivered that a producer keeps before it waits for them (a flush)
MAX_UNCONFIRMED = 10_000

M = TypeVar("M", bound=BaseModel)

_company_id: TypeAdapter[str] = TypeAdapter(CompanyId)
_play_id: TypeAdapter[str] = TypeAdapter(PlayId)


def kafka_settings(
    servers: str | Settings | None = None,
    *,
    topic_prefix: str | None = None,
    security_protocol: SecurityProtocol | None = None,
    sasl_mechanism: SaslMechanism | None = None,
    sasl_username: str | None = None,
    sasl_password: str | None = None,
    ssl_cafile: Path | str | None = None,
) -> Settings:
    """The settings a client connects with: ``servers`` (``host:port[,host:port...]``) and the
    options given, the environment for the others. A ``Settings`` is used as it is.

    Raises ``InvalidInput`` naming the setting that is wrong."""
    options: dict[str, Any] = {
        "kafka_security_protocol": security_protocol,
        "kafka_sasl_mechanism": sasl_mechanism,
        "kafka_sasl_username": sasl_username,
        "kafka_sasl_password": sasl_password,
        "kafka_ssl_cafile": ssl_cafile,
    }
    if isinstance(servers, Settings):
        given = [name for name, value in {**options, "topic_prefix": topic_prefix}.items() if value is not None]
        if given:
            raise InvalidInput(f"give either a Settings or Kafka options, not both ({', '.join(given)} given)")
        return servers
    if topic_prefix is not None:
        options["topics"] = {"prefix": topic_prefix}
    return load_settings(kafka_bootstrap_servers=servers, **options)


def _valid(model: type[M], **fields: Any) -> M:
    """``model`` made of ``fields``, or InvalidCommand naming each field that is wrong."""
    try:
        return model(**fields)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg'].removeprefix('Value error, ')}"
            for e in exc.errors(include_url=False)
        )
        raise InvalidCommand(f"{model.__name__}: {problems}") from None


def _check_id(adapter: TypeAdapter[str], field: str, value: str) -> str:
    try:
        return adapter.validate_python(value)
    except ValidationError as exc:
        raise InvalidCommand(f"{field}: {exc.errors(include_url=False)[0]['msg']}") from None


class Producer:
    """Sends StartPlay and CancelPlay commands to the deployment's ``commands`` topic.

    Sends are queued and sent in batches: ``start_play`` returns once its command is queued,
    ``flush()`` (and leaving ``async with``) waits until the broker has every one queued so
    far, and raises ``StoreUnavailable`` if it failed to take any."""

    def __init__(
        self,
        servers: str | Settings | None = None,
        *,
        topic_prefix: str | None = None,
        security_protocol: SecurityProtocol | None = None,
        sasl_mechanism: SaslMechanism | None = None,
        sasl_username: str | None = None,
        sasl_password: str | None = None,
        ssl_cafile: Path | str | None = None,
    ) -> None:
        self.settings = kafka_settings(
            servers,
            topic_prefix=topic_prefix,
            security_protocol=security_protocol,
            sasl_mechanism=sasl_mechanism,
            sasl_username=sasl_username,
            sasl_password=sasl_password,
            ssl_cafile=ssl_cafile,
        )
        self._commands: CommandProducer | None = None
        self._unconfirmed: list[asyncio.Future[Any]] = []

    async def __aenter__(self) -> Self:
        commands = CommandProducer(self.settings)
        await commands.__aenter__()
        self._commands = commands
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        commands, self._commands = self._commands, None
        if commands is None:
            return
        try:
            if exc_type is None:
                await self._confirm(commands)
        finally:
            await commands.__aexit__(exc_type, exc, tb)

    async def start_play(
        self,
        company: str,
        flow: str,
        input: Any = None,
        *,
        play_id: str | None = None,
        flow_version: int | None = None,
    ) -> str:
        """Queue a StartPlay of ``flow`` (its latest version unless ``flow_version``) for
        ``company`` with ``input`` (an empty object when None); returns the play's id:
        ``play_id`` when given (a repeat of it is a no-op), else a new uuid4.

        Raises ``InvalidCommand`` naming the field that is wrong, ``LimitExceeded`` when the
        command is over the deployment's limits."""
        command = _valid(
            StartPlay,
            company_id=company,
            flow=flow,
            input={} if input is None else input,
            play_id=str(uuid.uuid4()) if play_id is None else play_id,
            flow_version=flow_version,
        )
        await self._send(command)
        assert command.play_id is not None
        return command.play_id

    async def cancel_play(self, company: str, play_id: str, *, reason: str | None = None) -> None:
        """Queue a CancelPlay of ``company``'s play ``play_id`` (a finished or unknown play is left as it is)."""
        fields: dict[str, Any] = {"company_id": company, "play_id": play_id}
        if reason is not None:
            fields["reason"] = reason
        await self._send(_valid(CancelPlay, **fields))

    async def flush(self) -> None:
        """Wait until the broker has every command queued so far."""
        await self._confirm(self._started())

    def _started(self) -> CommandProducer:
        if self._commands is None:
            raise RuntimeError("use the Producer in `async with Producer(...) as producer:`")
        return self._commands

    async def _send(self, command: StartPlay | CancelPlay) -> None:
        try:
            codec.decode_command(codec.encode(command), self.settings.limits)
        except codec.BadMessage as exc:
            error = LimitExceeded if exc.reason in {"too_large", "too_deep"} else InvalidCommand
            raise error(exc.detail) from None
        except PydanticSerializationError as exc:
            raise InvalidCommand(f"{type(command).__name__}: input is not JSON: {exc}") from None
        commands = self._started()
        try:
            self._unconfirmed.append(await commands.enqueue(command))
        except KafkaError as exc:
            raise self._unavailable(exc) from None
        if len(self._unconfirmed) >= MAX_UNCONFIRMED:
            await self._confirm(commands)

    async def _confirm(self, commands: CommandProducer) -> None:
        await commands.flush()
        unconfirmed, self._unconfirmed = self._unconfirmed, []
        outcomes = await asyncio.gather(*unconfirmed, return_exceptions=True)
        failed = [o for o in outcomes if isinstance(o, BaseException)]
        if failed:
            raise self._unavailable(failed[0], of=len(failed))

    def _unavailable(self, exc: BaseException, *, of: int = 1) -> StoreUnavailable:
        servers = self.settings.kafka_bootstrap_servers
        return StoreUnavailable(
            f"Kafka at {redact_uri(servers)} did not take {of} command(s) for {self.settings.topics.commands}: "
            f"{scrub(f'{type(exc).__name__}: {exc}', servers)}"
        )


async def results(
    servers: str | Settings | None = None,
    *,
    company: str,
    play_id: str | None = None,
    from_beginning: bool = False,
    group_id: str | None = None,
    idle_timeout: float | None = None,
    on_ready: Callable[[], None] | None = None,
    topic_prefix: str | None = None,
    security_protocol: SecurityProtocol | None = None,
    sasl_mechanism: SaslMechanism | None = None,
    sasl_username: str | None = None,
    sasl_password: str | None = None,
    ssl_cafile: Path | str | None = None,
) -> AsyncGenerator[PlayResult, None]:
    """The results of ``company``'s plays as they are committed (from the oldest kept with
    ``from_beginning``); with ``play_id`` only that play's, and the iteration ends after it.

    Without ``group_id`` nothing is committed and each call reads on its own; with one, the
    group's committed position is where it resumes. ``idle_timeout`` ends the iteration after
    that many seconds without any result on the topic; ``on_ready`` is called once the
    consumer holds its position, so a play started after it cannot be missed.

    The filter is a convenience, not a boundary: a reader of the topic can read every company's results."""
    company = _check_id(_company_id, "company", company)
    if play_id is not None:
        play_id = _check_id(_play_id, "play_id", play_id)
    settings = kafka_settings(
        servers,
        topic_prefix=topic_prefix,
        security_protocol=security_protocol,
        sasl_mechanism=sasl_mechanism,
        sasl_username=sasl_username,
        sasl_password=sasl_password,
        ssl_cafile=ssl_cafile,
    )
    stream = cast(  # an async generator: closed here, its consumer stopped, when this one ends
        "AsyncGenerator[tuple[PlayResult, float], None]",
        tail_results(
            settings, from_beginning=from_beginning, group_id=group_id, idle_timeout=idle_timeout, on_ready=on_ready
        ),
    )
    async with contextlib.aclosing(stream):
        async for result, _ in stream:
            if result.company_id != company or (play_id is not None and result.play_id != play_id):
                continue
            yield result
            if play_id is not None:
                return
