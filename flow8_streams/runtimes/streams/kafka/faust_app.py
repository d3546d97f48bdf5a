"""flow8's faust app: its transport (consumer, one transaction per worker) and web server."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, cast

import faust
from aiohttp import web as aiohttp_web
from faust.auth import SASLCredentials
from faust.transport.drivers import aiokafka as kafka_driver
from faust.web.drivers import aiohttp as web_driver
from mode.utils.objects import cached_property
from mode.utils.queues import FlowControlEvent

from flow8_streams.runtimes.streams.kafka.consumer import Flow8Consumer
from flow8_streams.runtimes.streams.kafka.partition_txn import Flow8Producer
from flow8_streams.runtimes.streams.kafka.transactions import WorkerTransactions
from flow8_streams.runtimes.streams.kafka.wiring import Wiring
from flow8_streams.settings import Settings

log = logging.getLogger("flow8.streams")


class Flow8Transport(kafka_driver.Transport):
    Consumer = Flow8Consumer
    Producer = Flow8Producer

    def create_transaction_manager(self, consumer: Any, producer: Any, **kwargs: Any) -> Any:
        wiring = cast(FaustApp, self.app).wiring
        if not wiring.per_worker:  # faust's, one transaction per input partition
            return super().create_transaction_manager(consumer=consumer, producer=producer, **kwargs)
        return WorkerTransactions(self, consumer=consumer, producer=producer, worker=wiring.transaction, **kwargs)


class Flow8Web(web_driver.Web):
    """The worker's HTTP port serves only the pages flow8 adds (``/metrics``, ``/healthz``,
    ``/readyz``): none of faust's own (``/router``, ``/table`` show table contents, ``/``,
    ``/graph``, statistics), whatever faust's settings say."""

    def __init__(self, app: Any, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self.web_app.middlewares.append(self._count_refused)

    def _enabled_blueprints(self) -> list[Any]:
        return []

    @aiohttp_web.middleware
    async def _count_refused(self, request: Any, handler: Any) -> Any:
        """Every 4xx of the router (an unknown path or method) is counted in flow8_http_refused_total."""
        try:
            return await handler(request)
        except aiohttp_web.HTTPClientError as exc:
            cast(FaustApp, self.app).wiring.metrics.http_refused.labels(str(exc.status)).inc()
            raise


class Flow8FlowControl(FlowControlEvent):
    """faust's flow control of the stream queues, which empties them whenever it resumes.
    faust's recovery resumes it to restore the tables, then resumes the inputs, seeks them
    back to their committed offsets and resumes it again: records delivered to the queues in
    between (their read offset moved past them) were thrown away unprocessed, and a play
    whose StartPlay or completion it was waited forever. Resumed while flowing, it keeps the
    queues; what they hold is worked on (and read again from the committed offset, at most
    once more, which the engine takes as a repeat)."""

    def resume(self) -> None:
        if self.is_active():
            return
        super().resume()


Hook = Callable[[], Awaitable[None]]


class FaustApp(faust.App):
    """``on_start`` hooks run before the agents start; ``on_stop`` ones, in order, before they stop."""

    def __init__(
        self, *args: Any, wiring: Wiring, on_start: Sequence[Hook] = (), on_stop: Sequence[Hook] = (), **kwargs: Any
    ) -> None:
        self.wiring = wiring
        self.flow8_on_start = tuple(on_start)
        self.flow8_on_stop = tuple(on_stop)
        super().__init__(*args, **kwargs)

    @cached_property
    def flow_control(self) -> FlowControlEvent:
        return Flow8FlowControl(loop=self.loop)

    def _new_transport(self) -> Any:
        return Flow8Transport(self.conf.broker_consumer, self)

    def _new_web(self) -> Any:
        return Flow8Web(self)

    async def on_first_start(self) -> None:
        await super().on_first_start()
        for hook in self.flow8_on_start:
            await hook()

    async def on_stop(self) -> None:
        for hook in self.flow8_on_stop:
            try:
                await hook()
            except Exception:
                log.exception("stopping: %s failed", hook)
        await super().on_stop()


def committed_offset(consumer: Any, tp: Any) -> int | None:
    """The offset faust last committed for ``tp`` (it has no public accessor)."""
    offset: int | None = consumer._committed_offset.get(tp)
    return offset


def changelog_sent(table: Any) -> Callable[[Any], None]:
    """The table's callback for a changelog record sent (faust records the offset there)."""
    callback: Callable[[Any], None] = table._on_changelog_sent
    return callback


def kafka_credentials(settings: Settings) -> SASLCredentials | None:
    """faust's login for every client it makes (consumer, producers, admin), from the settings."""
    if not settings.kafka_security_protocol.startswith("SASL_"):
        return None
    assert settings.kafka_sasl_password is not None  # the settings refuse SASL without a password
    return SASLCredentials(
        username=settings.kafka_sasl_username,
        password=settings.kafka_sasl_password.get_secret_value(),
        mechanism=settings.kafka_sasl_mechanism,
        ssl_context=settings.kafka_ssl_context(),
    )
