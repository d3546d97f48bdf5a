"""Built-in modules. Each takes a ``ModuleContext`` and returns the flowlet's output."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

from flow8_streams.errors import ModuleFailed
from flow8_streams.modules.context import KV, ModuleContext


def _arg(ctx: ModuleContext, name: str, kind: type | tuple[type, ...], default: Any = ...) -> Any:
    data = ctx.input if isinstance(ctx.input, Mapping) else {}
    if name not in data:
        if default is ...:
            raise ModuleFailed(f"input needs {name!r}", retryable=False)
        return default
    value = data[name]
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not object):
        raise ModuleFailed(f"input {name!r} must be {getattr(kind, '__name__', kind)}, got {value!r}", retryable=False)
    return value


def echo(ctx: ModuleContext) -> Any:
    """Output = input."""
    return ctx.input


def noop(ctx: ModuleContext) -> None:
    """Does nothing, outputs null (benchmarks)."""
    return None


def transform(ctx: ModuleContext) -> Any:
    """Output = its input mapping, after the flowlet's templating."""
    return ctx.input


async def sleep(ctx: ModuleContext) -> Any:
    """``{"seconds": x}``: wait x seconds, output = input."""
    seconds = _arg(ctx, "seconds", (int, float))
    if seconds < 0:
        raise ModuleFailed(f"input 'seconds' must be >= 0, got {seconds}", retryable=False)
    await asyncio.sleep(seconds)
    return ctx.input


def fail(ctx: ModuleContext) -> Any:
    """``{"times": n, "message": m}``: fails its first n attempts, then succeeds (output = input)."""
    times = _arg(ctx, "times", int, 1_000_000)
    message = _arg(ctx, "message", str, "failed on purpose")
    if ctx.attempt <= times:
        raise ModuleFailed(f"{message} (attempt {ctx.attempt} of the {times} that fail)")
    return ctx.input


def _kv(ctx: ModuleContext) -> KV:
    """The awaitable KV an async module is given."""
    assert isinstance(ctx.kv, KV)
    return ctx.kv


async def kv_get(ctx: ModuleContext) -> Any:
    """``{"key": k}``: the value stored under k (null when absent)."""
    return await _kv(ctx).get(_arg(ctx, "key", str))


async def kv_set(ctx: ModuleContext) -> Any:
    """``{"key": k, "value": v}``: store v; output ``{"key", "value", "version"}``."""
    entry = await _kv(ctx).set(_arg(ctx, "key", str), _arg(ctx, "value", object, None))
    return {"key": entry.key, "value": entry.value, "version": entry.version}


async def kv_incr(ctx: ModuleContext) -> Any:
    """``{"key": k, "by": n}``: add n (default 1) exactly once per flowlet; output = the new value."""
    return await _kv(ctx).incr(_arg(ctx, "key", str), _arg(ctx, "by", (int, float), 1))


# Quick pure functions: the streams orchestrator runs them in place.
for _fn in (echo, noop, transform, fail):
    _fn.flow8_inline = True  # type: ignore[union-attr]

MODULES = {
    "echo": echo,
    "noop": noop,
    "transform": transform,
    "sleep": sleep,
    "fail": fail,
    "kv.get": kv_get,
    "kv.set": kv_set,
    "kv.incr": kv_incr,
}
