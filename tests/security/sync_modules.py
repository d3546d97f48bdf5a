"""Plain (not async) modules of the sync-module tests: ``MODULES`` for ``--modules``."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from flow8_streams.errors import ModuleFailed
from flow8_streams.modules import ModuleContext

RELEASE = threading.Event()  # lets ``blocks`` return
ON_RETURN: list[Callable[[], None]] = []  # called on ``blocks``' thread when it is done
LATE: list[str] = []  # what ``blocks``' KV write after its timeout met


def blocks(ctx: ModuleContext) -> Any:
    """Blocks its thread until released (as ``time.sleep`` would), then writes the KV."""
    RELEASE.wait(timeout=60)
    try:
        ctx.kv.set("late", "written after the timeout")
        LATE.append("written")
    except ModuleFailed as exc:
        LATE.append(str(exc))
    finally:
        for call in ON_RETURN:
            call()
    return "late result"


def sleeps(ctx: ModuleContext) -> Any:
    """``{"seconds": x}``: ``time.sleep(x)``, output = input."""
    time.sleep(ctx.input["seconds"])
    return ctx.input


def counts(ctx: ModuleContext) -> Any:
    """Uses the KV the way a plain module can: no await."""
    first = ctx.kv.incr("hits")
    second = ctx.kv.incr("hits", 2)
    ctx.kv.set("note", {"seen": second})
    return {"first": first, "second": second, "note": ctx.kv.get("note")}


def inline_kv(ctx: ModuleContext) -> Any:
    return ctx.kv.get("note")


inline_kv.flow8_inline = True  # type: ignore[attr-defined]

MODULES = {"blocks": blocks, "sleeps": sleeps, "counts": counts, "inline_kv": inline_kv}
