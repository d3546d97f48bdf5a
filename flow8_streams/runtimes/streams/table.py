"""The orchestrator's table of plays: faust's in-memory table, made safe across rebalances.

An entry is ``b"<partition>|<state JSON>"``, or ``b"<partition>|#<status> <company>"`` for
a finished play (kept so a repeated StartPlay stays a no-op, and one of another company
is refused; entries written before the company was kept have none).

faust's memory store restores every assigned partition from its changelog at each
rebalance, up to the last stable offset, even a partition this worker kept. A decision
whose transaction was still open at that moment is past that offset: the restore put
its plays back to their previous states, and the next input of such a play was decided
again from there, writing the same ``(play_id, seq)`` twice once the transaction
committed. ``PlaysStore`` never lets a restored record replace a newer state of the
same play (a higher ``seq``; a finished play is final). Keys of a partition the worker
lost are forgotten at the end of the rebalance (faust's store does that for the keys
it knows the partition of; ``remember`` tells it those the orchestrator writes), so a
partition that comes back is restored whole.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import faust
import orjson
from faust.stores import memory
from faust.types import EventT

TOMBSTONE = b"#"


class Slot:
    """A play's entry in the table: its partition and its state."""

    @staticmethod
    def pack(partition: int, body: bytes) -> bytes:
        return b"%d|" % partition + body

    @staticmethod
    def unpack(raw: bytes) -> tuple[int, bytes]:
        head, _, body = raw.partition(b"|")
        return int(head), body

    @staticmethod
    def finished(partition: int, status: str, company_id: str) -> bytes:
        return Slot.pack(partition, TOMBSTONE + f"{status} {company_id}".encode())

    @staticmethod
    def finished_company(body: bytes) -> str | None:
        """The company of a finished play's entry (None for an entry that predates it)."""
        _, _, company = body.partition(b" ")
        return company.decode() or None

    @staticmethod
    def version(raw: bytes) -> float:
        """How far the play got: its ``seq``; a finished play is final."""
        _, body = Slot.unpack(raw)
        return math.inf if body.startswith(TOMBSTONE) else float(orjson.loads(body)["seq"])


def restores(record: bytes | None, held: bytes | None) -> bool:
    """Whether a changelog ``record`` replaces the entry ``held`` in memory: not when the
    memory is further on (this worker's decision whose transaction was still open)."""
    return record is None or held is None or Slot.version(record) >= Slot.version(held)


class PlaysStore(memory.Store[Any, Any]):
    def remember(self, key: Any, partition: int) -> None:
        """``key`` belongs to ``partition`` (forgotten with it)."""
        self._key_partition[key] = partition

    def apply_changelog_batch(
        self, batch: Iterable[EventT[Any]], to_key: Callable[[Any], Any], to_value: Callable[[Any], Any]
    ) -> None:
        for event in batch:
            key, value = to_key(event.key), to_value(event.value)
            self._key_partition[key] = event.message.partition
            if restores(value, self.data.get(key)):
                self.data[key] = value


class PlaysTable(faust.Table[Any, Any]):
    def _new_store(self) -> Any:
        return PlaysStore(
            self._store or self.app.conf.store,
            self.app,
            self,
            table_name=self.name,
            key_type=self.key_type,
            key_serializer=self.key_serializer,
            value_serializer=self.value_serializer,
            value_type=self.value_type,
            loop=self.loop,
            options=self.options,
        )


def plays_table(app: faust.App, name: str, partitions: int) -> PlaysTable:
    table = PlaysTable(app, name=name, beacon=app.tables.beacon, partitions=partitions, key_type=str, value_type=bytes)
    app.tables.add(table)
    return table
