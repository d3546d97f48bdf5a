"""The orchestrator's table of plays: faust's in-memory table, made safe across rebalances.

faust's memory store knows no offsets (``persisted_offset`` is None), so every
rebalance restores each assigned partition from the start of its changelog up to its
last stable offset, even a partition this worker kept. A decision whose transaction
was still open at the rebalance is past that offset: its plays went back to their
previous state in memory, and the next input of such a play was decided again from
there, writing the same ``(play_id, seq)`` twice once the transaction committed.

``PlaysStore`` remembers, per changelog partition, the last offset its memory holds:
records restored, and records this worker sent (the orchestrator reports each one).
A restore starts after it, so it only brings newer records (another owner's, while the
partition was away). A partition the worker lost forgets its keys and offset at the
end of the rebalance, and comes back whole from the changelog.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import faust
from faust.stores import memory
from faust.types import TP, EventT


class PlaysStore(memory.Store[Any, Any]):
    def __post_init__(self) -> None:
        super().__post_init__()
        self.held: dict[TP, int] = {}  # changelog partition -> last offset in memory

    def note(self, tp: TP, offset: int, key: Any = None) -> None:
        """Memory holds the changelog record at ``offset`` of ``tp`` (of ``key``)."""
        if offset > self.held.get(tp, -1):
            self.held[tp] = offset
        if key is not None:
            self._key_partition[key] = tp.partition  # what forgetting a lost partition goes by

    def persisted_offset(self, tp: TP) -> int | None:
        return self.held.get(tp)

    def set_persisted_offset(self, tp: TP, offset: int) -> None:
        self.note(tp, offset)

    def apply_changelog_batch(
        self, batch: Iterable[EventT[Any]], to_key: Callable[[Any], Any], to_value: Callable[[Any], Any]
    ) -> None:
        events = list(batch)
        super().apply_changelog_batch(events, to_key, to_value)
        for event in events:
            self.note(event.message.tp, event.message.offset)

    async def on_recovery_completed(self, active_tps: set[TP], standby_tps: set[TP]) -> None:
        await super().on_recovery_completed(active_tps, standby_tps)  # drops the keys of lost partitions
        for tp in [tp for tp in self.held if tp not in active_tps]:
            del self.held[tp]


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
