"""Errors of the channel pool and its workers, in the project's one exception tree."""

from __future__ import annotations

from flow8_streams.errors import Flow8Error, InvalidInput


class ChannelError(Flow8Error):
    """Something went wrong with a channel (a worker process behind one port)."""


class ChannelSettingsInvalid(InvalidInput):
    """The channel settings cannot work: a bad range, a pool larger than its range."""


class PortInUse(ChannelSettingsInvalid):
    """A channel port is taken, most likely by another instance whose range overlaps."""

    def __init__(self, ports: list[int], host: str) -> None:
        self.ports = ports
        listed = ", ".join(str(p) for p in ports)
        noun = "port" if len(ports) == 1 else "ports"
        super().__init__(
            f"channel {noun} {listed} on {host} already in use; another flow8 instance's "
            "CHANNEL_PORT_RANGE probably overlaps this one's (give each instance a range of its own)"
        )


class WorkerStartFailed(ChannelError):
    """A channel worker process did not come up on its port."""


class ProtocolError(InvalidInput):
    """A line on a channel port is not a message of the channel protocol."""


class PoolClosed(ChannelError):
    """The pool was closed before a submitted task ran or finished."""


class NoKVStore(ChannelError):
    """A module on a channel used the KV store, and the channel was started without one."""
