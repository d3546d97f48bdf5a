"""Signed checkpoints of the streams runtime (``FLOW8_AUDIT_SIGNING_KEY``).

The orchestrator notes the chain head of every play it publishes events for, by partition.
Every ``audit_checkpoint_seconds`` it signs, per company, the heads noted since the last
checkpoint and sends the checkpoint to ``flow8.checkpoints`` on the company's partition, in
the transaction that partition's decisions go in; the company's last checkpoint is kept in
the orchestrator's table (key ``#checkpoint/<company>``), so the chain of numbers goes on
whichever worker owns the partition next. What is signed was written by this worker, never
read from a topic anyone may write to; and a head is never signed unless it is committed or
goes in the checkpoint's own transaction: heads noted before a rebalance or an aborted
transaction are forgotten (those plays stay unanchored until their next event, never
wrongly anchored).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import orjson

from flow8_streams.audit.checkpoints import Heads, SignedCheckpoint, Signer
from flow8_streams.clock import utcnow
from flow8_streams.domain import events as ev

KEY_PREFIX = "#checkpoint/"  # a table key no play id can be ('#' is not in ID_PATTERN)


def table_key(company: str) -> str:
    return KEY_PREFIX + company


def is_checkpoint_key(key: str) -> bool:
    return key.startswith(KEY_PREFIX)


def table_entry(checkpoint: SignedCheckpoint) -> bytes:
    """The table's record of a company's last checkpoint: its ``seq`` is the checkpoint's number,
    so a restore never puts back an older one over a newer (``table.restores``)."""
    return orjson.dumps({"seq": checkpoint.body["number"], "body": checkpoint.body})


def last_body(entry: bytes) -> dict[str, Any]:
    body: dict[str, Any] = orjson.loads(entry)["body"]
    return body


class StreamCheckpoints:
    def __init__(self, signer: Signer) -> None:
        self.signer = signer
        self._noted: dict[int, Heads] = {}  # partition -> the heads published there since its last checkpoint
        self._generation: int | None = None  # the consumer group generation they were noted in

    def note(self, partition: int, events: Iterable[ev.Event], generation: int) -> None:
        if generation != self._generation:  # a rebalance since: what was noted before may be aborted
            self.forget()
            self._generation = generation
        heads = self._noted.setdefault(partition, Heads())
        for e in events:
            heads.note(e.play_id, e.company_id, e.seq, e.hash)

    def forget(self) -> None:
        """A rebalance or an aborted transaction: what was noted may not be committed."""
        self._noted.clear()

    def partitions(self, generation: int) -> list[int]:
        """The partitions with heads to sign, noted in ``generation`` (none after a rebalance)."""
        if generation != self._generation:
            self.forget()
            return []
        return sorted(p for p, heads in self._noted.items() if heads)

    def due(self, partition: int) -> dict[str, list[dict[str, Any]]]:
        """The heads to sign on ``partition``, by company."""
        heads = self._noted.get(partition)
        return heads.by_company() if heads is not None else {}

    def sign(self, company: str, heads: list[dict[str, Any]], before: dict[str, Any] | None) -> SignedCheckpoint:
        return self.signer.sign(company, heads, utcnow(), before)

    def signed(self, partition: int, grouped: dict[str, list[dict[str, Any]]]) -> None:
        heads = self._noted.get(partition)
        if heads is not None:
            heads.forget(grouped)
