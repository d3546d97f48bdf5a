"""The Restate side of ``scripts/bench_restate``: flow8's bench diamond as one Restate service.

Service ``Diamond``, handler ``run``: four journaled no-op steps, a -> (b, c concurrently) -> d,
as ``flow8 bench`` runs four ``noop`` flowlets. Served by hypercorn (HTTP/2 cleartext, which
Restate speaks to a deployment by default) as ``diamond:app``.
"""

from __future__ import annotations

from typing import Any

import restate

diamond = restate.Service("Diamond")


def noop(step: str) -> str:
    return step


@diamond.handler()
async def run(ctx: restate.Context, play: dict[str, Any]) -> dict[str, Any]:
    await ctx.run_typed("a", noop, restate.RunOptions(), "a")
    b = ctx.run_typed("b", noop, restate.RunOptions(), "b")
    c = ctx.run_typed("c", noop, restate.RunOptions(), "c")
    await restate.gather(b, c)
    await ctx.run_typed("d", noop, restate.RunOptions(), "d")
    return play


app = restate.app(services=[diamond])
