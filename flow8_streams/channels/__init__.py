"""Channels: background worker processes for long flowlets, one per port of the
instance's CHANNEL_PORT_RANGE. See ``pool.ChannelPool`` (dispatch), ``worker`` (the
process behind a port) and ``protocol`` (what goes over a port).

A module hands its work to an outside service by returning ``Pending(token=...)``.
``ChannelPool`` is imported on first use, so modules importing ``Pending`` stay light.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from flow8_streams.channels.exceptions import (
    ChannelError,
    ChannelSettingsInvalid,
    PoolClosed,
    PortInUse,
    ProtocolError,
    WorkerStartFailed,
)
from flow8_streams.channels.pending import Pending

if TYPE_CHECKING:
    from flow8_streams.channels.pool import ChannelPool

__all__ = [
    "ChannelError",
    "ChannelPool",
    "ChannelSettingsInvalid",
    "Pending",
    "PoolClosed",
    "PortInUse",
    "ProtocolError",
    "WorkerStartFailed",
]


def __getattr__(name: str) -> Any:
    if name == "ChannelPool":
        from flow8_streams.channels.pool import ChannelPool

        return ChannelPool
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
