"""The worker's pages on ``SERVER_PORT``: ``/metrics``, ``/healthz`` (live) and ``/readyz``
(Kafka and MongoDB answer, partitions assigned)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

from flow8_streams.metrics import Metrics, replace_samples
from flow8_streams.runtimes.streams.kafka.faust_app import FaustApp, committed_offset

READY_CHECK_TIMEOUT_S = 1.0  # each dependency answers /readyz's ping within this, or is not ready
READY_CACHE_S = 1.5  # /readyz answers from its last checks this long: a scrape storm pings nothing more


class WebPages:
    def __init__(
        self,
        app: FaustApp,
        metrics: Metrics,
        worker_id: str,
        pings: dict[str, Callable[[], Awaitable[Any]]],
        outages: dict[str, Callable[[], dict[str, Any] | None]] | None = None,
    ) -> None:
        self.app = app
        self.metrics = metrics
        self.worker_id = worker_id
        self.pings = pings  # dependency name -> a call that returns when it answers
        self.outages = outages or {}  # dependency name -> the outage its callers wait out now, if any
        self._lag_labels: set[tuple[str, ...]] = set()  # the consumer-lag samples on the page
        self._readiness: tuple[float, dict[str, Any]] | None = None  # (when, checks) of the last look
        self._readiness_check: asyncio.Future[dict[str, Any]] | None = None  # the look under way

    def register(self) -> None:
        # faust makes a View class of each page function: give it plain functions
        async def metrics_page(view: Any, request: Any) -> Any:
            return await self.metrics_page(view)

        async def health_page(view: Any, request: Any) -> Any:
            return await self.health_page(view)

        async def ready_page(view: Any, request: Any) -> Any:
            return await self.ready_page(view)

        self.app.page("/metrics")(metrics_page)
        self.app.page("/healthz")(health_page)
        self.app.page("/readyz")(ready_page)

    async def metrics_page(self, web: Any) -> Any:
        self._update_lag()
        return web.bytes(self.metrics.render(), headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"})

    async def health_page(self, web: Any) -> Any:
        """Live: this answer comes from the worker's event loop, whatever Kafka and MongoDB do."""
        consumer = self.app.consumer
        assigned = sorted(f"{tp.topic}[{tp.partition}]" for tp in consumer.assignment())
        return web.json({"status": "ok", "worker": self.worker_id, "assigned": assigned})

    async def ready_page(self, web: Any) -> Any:
        """Ready: Kafka and MongoDB answer a ping and this worker has partitions; 503 names what fails."""
        checks = await self._readiness_checks()
        failing = sorted(name for name, check in checks.items() if not check["ok"])
        status = "not_ready" if failing else "ready"
        body: dict[str, Any] = {"status": status, "worker": self.worker_id, "checks": checks}
        if failing:
            body["failing"] = failing
        return web.json(body, status=503 if failing else 200)

    async def _readiness_checks(self) -> dict[str, Any]:
        """The last checks if younger than READY_CACHE_S, else new ones; requests that come
        while a check runs share it."""
        if self._readiness is not None and time.monotonic() - self._readiness[0] < READY_CACHE_S:
            return self._readiness[1]
        if self._readiness_check is None:
            self._readiness_check = asyncio.ensure_future(self._check_readiness())
        check = self._readiness_check
        try:
            return await asyncio.shield(check)
        finally:
            if check.done() and self._readiness_check is check:
                self._readiness_check = None

    async def _check_readiness(self) -> dict[str, Any]:
        async def bounded(ping: Callable[[], Awaitable[Any]]) -> dict[str, Any]:
            started = time.perf_counter()
            try:
                async with asyncio.timeout(READY_CHECK_TIMEOUT_S):
                    await ping()
            except TimeoutError:
                return {"ok": False, "error": f"no answer within {READY_CHECK_TIMEOUT_S} s"}
            except Exception as exc:  # the error's type only: messages can carry addresses
                return {"ok": False, "error": type(exc).__name__}
            return {"ok": True, "ms": round((time.perf_counter() - started) * 1000, 1)}

        names = list(self.pings)
        answers = await asyncio.gather(*(bounded(self.pings[name]) for name in names))
        assigned = len(self.app.consumer.assignment())
        checks: dict[str, Any] = dict(zip(names, answers, strict=True))
        for name, note in self.outages.items():
            outage = note()
            if outage is not None and name in checks and not checks[name]["ok"]:
                checks[name]["outage"] = outage  # since when the agents wait for it, and how many
        checks["partitions"] = {"ok": assigned > 0, "assigned": assigned}
        self._readiness = (time.monotonic(), checks)
        return checks

    def _update_lag(self) -> None:
        """Lag of each partition assigned now; a partition revoked since the last sample leaves the page."""
        consumer = self.app.consumer
        samples: dict[tuple[str, ...], float] = {}
        for tp in consumer.assignment():
            high = consumer.highwater(tp)
            if high is not None:
                samples[(tp.topic, str(tp.partition))] = max(0, high - (committed_offset(consumer, tp) or 0))
        self._lag_labels = replace_samples(self.metrics.consumer_lag, samples, self._lag_labels)
