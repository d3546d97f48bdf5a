"""Run one flowlet attempt and turn whatever happens into a ``FlowletResult``.

Shared by every host: the local runtime, the streams executor agent and channel
workers. A module's exception never escapes: it becomes a failed result. A plain
(not async) module runs on one of the host's ``ModuleThreads``, never on the event
loop, so the host's timeouts hold; only one declared inline (quick and pure, the
operator's word) runs in place.
"""

from __future__ import annotations

import asyncio
import logging
import traceback
from collections.abc import Callable
from datetime import datetime
from typing import Any

import orjson

from flow8_streams.domain.messages import FlowletResult, Task
from flow8_streams.errors import Flow8Error, ModuleFailed, StoreUnavailable
from flow8_streams.logs import log_context
from flow8_streams.modules.context import KV, InlineKV, ModuleContext, SyncKV
from flow8_streams.modules.registry import ModuleRegistry, ModuleSpec
from flow8_streams.modules.threads import ModuleThreads
from flow8_streams.stores.ports import KVStore

log = logging.getLogger("flow8.executor")


async def execute_task(
    registry: ModuleRegistry,
    kv: KVStore,
    clock: Callable[[], datetime],
    task: Task,
    *,
    threads: ModuleThreads,
    completion_token: str | None = None,
) -> FlowletResult:
    """``execute`` of a ``Task`` (what executors and channels receive)."""
    return await execute(
        registry,
        kv,
        clock,
        threads=threads,
        play_id=task.play_id,
        company_id=task.company_id,
        flowlet=task.flowlet,
        attempt=task.attempt,
        module_ref=task.module_ref,
        task_input=task.input,
        completion_token=completion_token,
    )


async def execute(
    registry: ModuleRegistry,
    kv: KVStore,
    clock: Callable[[], datetime],
    *,
    threads: ModuleThreads,
    play_id: str,
    company_id: str,
    flowlet: str,
    attempt: int,
    module_ref: str,
    task_input: Any,
    completion_token: str | None = None,
) -> FlowletResult:
    with log_context(company_id=company_id, play_id=play_id, flowlet=flowlet):
        attempt_of = _Attempt(play_id, company_id, flowlet, attempt, module_ref, clock)
        try:
            spec = registry.get(module_ref)
            ctx, sync_kv = attempt_of.context(spec, kv, task_input, completion_token)
            if spec.is_async:
                output = await spec.fn(ctx)
            elif spec.inline:
                output = spec.fn(ctx)
            else:
                assert sync_kv is not None
                try:
                    output = await threads.call(spec.fn, ctx, what=attempt_of.what)
                except asyncio.CancelledError:
                    sync_kv.end()  # a thread that runs on writes nothing more
                    raise
            return attempt_of.succeeded(output)
        except Exception as exc:  # a module's failure or bug fails its flowlet, never the host
            return attempt_of.failed(exc)


def execute_inline(
    registry: ModuleRegistry,
    clock: Callable[[], datetime],
    *,
    play_id: str,
    company_id: str,
    flowlet: str,
    attempt: int,
    module_ref: str,
    task_input: Any,
) -> FlowletResult:
    """``execute`` of an inline module, here and now: the module is a quick pure function
    (``ModuleSpec.inline``), so it neither awaits, nor needs a thread, nor may use the KV. A
    module that is not inline fails the attempt (its host must ``execute`` it)."""
    with log_context(company_id=company_id, play_id=play_id, flowlet=flowlet):
        attempt_of = _Attempt(play_id, company_id, flowlet, attempt, module_ref, clock)
        try:
            spec = registry.get(module_ref)
            if not spec.inline:
                raise Flow8Error(f"module {module_ref!r} is not inline: it cannot run in place")
            ctx, _ = attempt_of.context(spec, None, task_input, None)
            return attempt_of.succeeded(spec.fn(ctx))
        except Exception as exc:  # a module's failure or bug fails its flowlet, never the host
            return attempt_of.failed(exc)


class _Attempt:
    """One attempt of a flowlet: its module's context, and its result either way."""

    def __init__(
        self, play_id: str, company_id: str, flowlet: str, attempt: int, module_ref: str, clock: Callable[[], datetime]
    ) -> None:
        self.play_id, self.company_id, self.flowlet, self.attempt = play_id, company_id, flowlet, attempt
        self.module_ref = module_ref
        self.clock = clock
        self.started = clock()
        self.what = f"flowlet {play_id}/{flowlet} (attempt {attempt}, module {module_ref!r})"

    def context(
        self, spec: ModuleSpec, kv: KVStore | None, task_input: Any, completion_token: str | None
    ) -> tuple[ModuleContext, SyncKV | None]:
        """What the module is given, and the ``SyncKV`` of one that runs on a thread (None for
        one that runs on the event loop: async, or inline, which needs no ``kv``)."""
        sync_kv = None
        store: KV | SyncKV | InlineKV
        if spec.inline:
            store = InlineKV(self.what)
        else:
            assert kv is not None
            store = KV(kv, self.company_id, f"{self.play_id}/{self.flowlet}")
            if not spec.is_async:
                store = sync_kv = SyncKV(store, asyncio.get_running_loop(), self.what)
        ctx = ModuleContext(
            play_id=self.play_id,
            company_id=self.company_id,
            flowlet=self.flowlet,
            attempt=self.attempt,
            input=task_input,
            kv=store,
            completion_token=completion_token,
        )
        return ctx, sync_kv

    def succeeded(self, output: Any) -> FlowletResult:
        orjson.dumps(output)  # not JSON: JSONEncodeError, which ``failed`` reports
        return self._result(ok=True, output=output, error=None, retryable=True)

    def failed(self, exc: Exception) -> FlowletResult:
        """The result of an attempt that raised ``exc`` (called while it is handled)."""
        retryable = True
        if isinstance(exc, ModuleFailed):
            error, retryable = str(exc), exc.retryable
        elif isinstance(exc, orjson.JSONEncodeError):
            error, retryable = f"module {self.module_ref!r} returned an output that is not JSON: {exc}", False
        elif isinstance(exc, StoreUnavailable):  # the store failed, not the module: another attempt may pass
            error = str(exc)
        elif isinstance(exc, Flow8Error):
            error, retryable = str(exc), False
        else:
            error = f"{type(exc).__name__}: {exc}"
            log.info(
                "module %s failed in %s/%s:\n%s", self.module_ref, self.play_id, self.flowlet, traceback.format_exc()
            )
        return self._result(ok=False, output=None, error=error, retryable=retryable)

    def _result(self, *, ok: bool, output: Any, error: str | None, retryable: bool) -> FlowletResult:
        # validated: of a few fields, quicker than model_construct
        return FlowletResult.model_validate(
            {
                "play_id": self.play_id,
                "company_id": self.company_id,
                "flowlet": self.flowlet,
                "attempt": self.attempt,
                "ok": ok,
                "output": output,
                "error": error,
                "retryable": retryable,
                "started_at": self.started,
                "ended_at": self.clock(),
            }
        )
