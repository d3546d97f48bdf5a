"""What every route module shares: the JSON response, errors naming a field, bounded bodies,
and the key a request proves (``Caller``)."""

from __future__ import annotations

import contextlib
import math
import time
from collections import Counter
from collections.abc import Callable, Coroutine, Iterator
from typing import Annotated, Any

import orjson
from fastapi import Depends, HTTPException, Request, Response
from fastapi.routing import APIRoute
from fastapi.security import HTTPBearer
from prometheus_client import Gauge

from flow8_streams.domain.bounded import TooLarge, decode_json
from flow8_streams.domain.limits import Limits
from flow8_streams.errors import InvalidInput
from flow8_streams.http.backends import Backend
from flow8_streams.http.keys import authenticate
from flow8_streams.settings import Settings
from flow8_streams.stores.ports import ApiKey

JSON_OPTIONS = orjson.OPT_UTC_Z | orjson.OPT_NON_STR_KEYS  # what flow8 run --json writes


class Json(Response):
    """A JSON response written by orjson, dates in UTC with a Z (as ``flow8 run --json``)."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content, option=JSON_OPTIONS)


def problem(status: int, message: str, *, field: tuple[str, ...] = (), kind: str = "invalid") -> HTTPException:
    """An HTTP error whose ``detail`` has FastAPI's validation shape when a field is named."""
    if field:
        return HTTPException(status, detail=[{"loc": list(field), "msg": message, "type": kind}])
    return HTTPException(status, detail=message)


class BoundedRequest(Request):
    """A request whose JSON body is decoded within the deployment's limits (size, depth)."""

    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            limits: Limits = self.app.state.backend.limits
            try:
                self._json = decode_json(await self.body(), limits, "the request body")
            except TooLarge as exc:
                raise problem(413, str(exc), field=("body",), kind=exc.reason) from None
            except InvalidInput as exc:
                raise problem(422, str(exc), field=("body",), kind=exc.reason) from None
        return self._json


class BoundedRoute(APIRoute):
    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def bounded(request: Request) -> Response:
            return await handler(BoundedRequest(request.scope, request.receive))

        return bounded


# dependencies are coroutines: FastAPI runs a plain function in a worker thread, per request


async def backend_of(request: Request) -> Backend:
    backend: Backend = request.app.state.backend
    return backend


async def settings_of(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


_bearer = HTTPBearer(auto_error=False, description="An API key of flow8 keys create: Authorization: Bearer f8k_...")


class RateLimit:
    """A token bucket per API key, in this process: ``per_second`` requests, bursts of as many
    (at least one). ``take`` answers how long to wait when the bucket is empty."""

    def __init__(self, per_second: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = per_second
        self.burst = max(1.0, per_second)
        self.clock = clock
        self.buckets: dict[str, tuple[float, float]] = {}  # key id -> (tokens, when)

    def take(self, key_id: str) -> float | None:
        now = self.clock()
        tokens, then = self.buckets.get(key_id, (self.burst, now))
        tokens = min(self.burst, tokens + (now - then) * self.rate)
        if tokens < 1:
            self.buckets[key_id] = (tokens, now)
            return (1 - tokens) / self.rate
        self.buckets[key_id] = (tokens - 1, now)
        return None


class WaitSlots:
    """How many waits (``GET /v1/plays/{id}/wait``) this instance holds at once: at most ``total``,
    and ``per_key`` for one API key. A wait past either is refused at once, naming the setting."""

    def __init__(self, total: int, per_key: int, gauge: Gauge) -> None:
        self.total = total
        self.per_key = per_key
        self.gauge = gauge
        self.held: Counter[str] = Counter()  # key id -> waits held

    @contextlib.contextmanager
    def hold(self, key_id: str) -> Iterator[None]:
        if self.held.total() >= self.total:
            raise HTTPException(
                503,
                detail=f"this instance holds {self.total} waits already (http.max_waits); try again shortly",
                headers={"Retry-After": "1"},
            )
        if self.held[key_id] >= self.per_key:
            raise HTTPException(
                429,
                detail=f"this key holds {self.per_key} waits on this instance already (http.max_waits_per_key)",
                headers={"Retry-After": "1"},
            )
        self.held[key_id] += 1
        self.gauge.inc()
        try:
            yield
        finally:
            self.gauge.dec()
            self.held[key_id] -= 1
            if not self.held[key_id]:
                del self.held[key_id]


async def caller(request: Request, _: Annotated[Any, Depends(_bearer)]) -> ApiKey:
    """The key the request's ``Authorization: Bearer KEY`` proves; the company is the key's."""
    key = await authenticate(request.app.state.keys, request.headers.get("authorization"))
    limit: RateLimit | None = request.app.state.rate_limit
    if limit is not None and (wait := limit.take(key.key_id)) is not None:
        raise HTTPException(
            429,
            detail=f"over {limit.rate:g} requests per second for this key (http.rate_limit_per_second)",
            headers={"Retry-After": str(math.ceil(wait))},
        )
    return key


Caller = Annotated[ApiKey, Depends(caller)]
Store = Annotated[Backend, Depends(backend_of)]
Config = Annotated[Settings, Depends(settings_of)]
