"""Claims of client play ids, batched: the orchestrator reserves each client's own play id
for its company before the play's first event is written (see ``MongoPlays.claim``).

A claim is a store round trip on the orchestrator's path. So when one is needed, the
StartPlays already waiting in the agent's queue are claimed in the same request, and every
answer is remembered (a claim is permanent: the company holding an id never changes).
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Iterable, Sequence
from datetime import datetime
from typing import Any, TypeGuard

import orjson
from cachetools import LRUCache

from flow8_streams.domain.limits import Limits
from flow8_streams.domain.messages import GENERATED_PREFIX, ID_PATTERN

ClaimFn = Callable[[Sequence[tuple[str, str]], datetime], Awaitable[dict[str, str]]]
MAX_BATCH = 256  # claims in one request
REMEMBERED = 100_000  # play ids whose holder this worker remembers
_ID = re.compile(ID_PATTERN)


def _is_id(value: object) -> TypeGuard[str]:
    return isinstance(value, str) and _ID.fullmatch(value) is not None


def client_claims(raws: Iterable[bytes | None], limits: Limits) -> list[tuple[str, str]]:
    """``(company_id, play_id)`` of the StartPlays among raw commands that name their own play id.
    Cheap and forgiving: anything malformed is skipped here (its own decode refuses it later)."""
    found = []
    for raw in raws:
        if not raw or len(raw) > limits.max_message_bytes or b'"play_id"' not in raw:
            continue
        try:
            data: Any = orjson.loads(raw)
        except orjson.JSONDecodeError:
            continue
        if not isinstance(data, dict) or data.get("type") != "StartPlay":
            continue
        company, play_id = data.get("company_id"), data.get("play_id")
        if _is_id(company) and _is_id(play_id) and not play_id.startswith(GENERATED_PREFIX):
            found.append((company, play_id))
    return found


class PlayIdClaims:
    """Who holds each client play id, claimed in batches and remembered."""

    def __init__(self, claim: ClaimFn, limits: Limits) -> None:
        self._claim = claim
        self._limits = limits
        self._holder: LRUCache[str, str] = LRUCache(maxsize=REMEMBERED)
        self.requests = 0  # round trips made, for tests and metrics

    async def holder(self, company_id: str, play_id: str, ahead: Iterable[bytes | None], now: datetime) -> str:
        """The company holding ``play_id``, after claiming it for ``company_id`` if nobody had;
        StartPlays of ``ahead`` (raw commands waiting behind this one) are claimed with it."""
        held = self._holder.get(play_id)
        if held is not None:
            return held
        batch = [(company_id, play_id)]
        seen = {play_id}
        for company, other in client_claims(ahead, self._limits):
            if len(batch) >= MAX_BATCH:
                break
            if other not in seen and other not in self._holder:
                seen.add(other)
                batch.append((company, other))
        self.requests += 1
        holders = await self._claim(batch, now)
        self._holder.update(holders)
        return holders[play_id]
