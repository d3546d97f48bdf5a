"""The streams runtime's plays table: which changelog record a restore keeps."""

from __future__ import annotations

import math

from flow8_streams.runtimes.streams.table import TOMBSTONE, Slot, restores


def entry(seq: int, partition: int = 3) -> bytes:
    return Slot.pack(partition, b'{"play_id":"p","seq":%d}' % seq)


FINISHED = Slot.pack(3, TOMBSTONE + b"succeeded")


def test_an_entry_packs_its_partition_and_knows_how_far_its_play_got() -> None:
    assert Slot.unpack(entry(7)) == (3, b'{"play_id":"p","seq":7}')
    assert Slot.version(entry(7)) == 7
    assert Slot.version(FINISHED) == math.inf


def test_a_restore_brings_newer_states_and_never_older_ones() -> None:
    assert restores(entry(5), None)  # nothing in memory
    assert restores(entry(6), entry(5))  # another owner got further
    assert restores(entry(5), entry(5))  # the same state, as committed
    assert not restores(entry(5), entry(8))  # memory holds a decision whose transaction is still open
    assert not restores(entry(9), FINISHED)  # a finished play stays finished
    assert restores(FINISHED, entry(9))
