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
from flow8_streams.modules.context import KV, ModuleContext, SyncKV
from flow8_streams.modules.registry import ModuleRegistry
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
        started = clock()
        ok, output, error, retryable = True, None, None, True
        try:
            spec = registry.get(module_ref)
            what = f"flowlet {play_id}/{flowlet} (attempt {attempt}, module {module_ref!r})"
            store = KV(kv, company_id, f"{play_id}/{flowlet}")
            sync_kv = None if spec.is_async else SyncKV(store, asyncio.get_running_loop(), what)
            ctx = ModuleContext(
                play_id=play_id,
                company_id=company_id,
                flowlet=flowlet,
                attempt=attempt,
                input=task_input,
                kv=sync_kv or store,
                completion_token=completion_token,
            )
            if spec.is_async:
                output = await spec.fn(ctx)
            elif spec.inline:
                output = spec.fn(ctx)
            else:
                assert sync_kv is not None
                try:
                    output = await threads.call(spec.fn, ctx, what=what)
                except asyncio.CancelledError:
                    sync_kv.end()  # a thread that runs on writes nothing more
                    raise
            orjson.dumps(output)
        except ModuleFailed as exc:
            ok, error, retryable = False, str(exc), exc.retryable
        except orjson.JSONEncodeError as exc:
            ok, output, retryable = False, None, False
            error = f"module {module_ref!r} returned an output that is not JSON: {exc}"
        except StoreUnavailable as exc:  # the store failed, not the module: another attempt may pass
            ok, error, retryable = False, str(exc), True
        except Flow8Error as exc:
            ok, error, retryable = False, str(exc), False
        except Exception as exc:  # a module's bug fails its flowlet, never the host
            ok, error = False, f"{type(exc).__name__}: {exc}"
            log.info("module %s failed in %s/%s:\n%s", module_ref, play_id, flowlet, traceback.format_exc())
        return FlowletResult.model_construct(
            type="FlowletResult",
            play_id=play_id,
            company_id=company_id,
            flowlet=flowlet,
            attempt=attempt,
            ok=ok,
            output=output,
            error=error,
            retryable=retryable,
            started_at=started,
            ended_at=clock(),
        )
