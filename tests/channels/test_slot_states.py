"""A slot changes state in one place, by the moves ``MOVES`` lists: any other is refused."""

from __future__ import annotations

import pytest

from flow8_streams.channels.slot import MOVES, ChannelSlot, WorkerCommand


def _slot() -> ChannelSlot:
    command = WorkerCommand(
        host="127.0.0.1", module_sources=[], kv_db=None, heartbeat_s=1.0, pool_secret=b"s" * 32, token_key=b"k" * 32
    )
    return ChannelSlot(20_000, command)


def test_a_slot_goes_cold_starting_idle_busy_restarting_down_idle_closed() -> None:
    slot = _slot()
    slot.starting()
    slot.up()
    slot.restarting()
    slot.failed("port taken")
    assert (slot.state, slot.error) == ("down", "port taken")
    slot.up(restarted=True)
    assert (slot.state, slot.error, slot.restarts) == ("idle", None, 1)
    slot.close()
    assert slot.state == "closed" and not MOVES["closed"]


def test_a_move_not_listed_is_refused() -> None:
    slot = _slot()
    with pytest.raises(RuntimeError, match="does not move from cold to idle"):
        slot.up()
    slot.close()
    with pytest.raises(RuntimeError, match="from closed to starting"):
        slot.starting()
