"""Channel port ranges: parsing them and checking that their ports are free."""

from __future__ import annotations

import errno
import re
import socket
from collections.abc import Iterable, Sequence

from flow8_streams.channels.exceptions import ChannelSettingsInvalid, PortInUse

PORT_RANGE = re.compile(r"^\s*(\d{1,5})\s*-\s*(\d{1,5})\s*$")
DEFAULT_HOST = "127.0.0.1"


def parse_port_range(value: str, *, name: str = "CHANNEL_PORT_RANGE") -> range:
    """``"7701-7799"`` -> ``range(7701, 7800)``; a message naming the value otherwise."""
    match = PORT_RANGE.match(value) if isinstance(value, str) else None
    if not match:
        raise ChannelSettingsInvalid(f"{name} {value!r} is not a range like 7701-7799")
    low, high = int(match.group(1)), int(match.group(2))
    if not 1 <= low <= high <= 65535:
        raise ChannelSettingsInvalid(f"{name} {value!r}: ports must satisfy 1 <= low <= high <= 65535")
    return range(low, high + 1)


def format_port_range(ports: Sequence[int]) -> str:
    """``7701-7799`` for a contiguous range, the ports one by one otherwise."""
    ports = list(ports)
    if ports and ports == list(range(ports[0], ports[0] + len(ports))):
        return f"{ports[0]}-{ports[-1]}"
    return ",".join(str(p) for p in ports)


def check_pool_fits(ports: Sequence[int], size: int) -> None:
    if size < 1:
        raise ChannelSettingsInvalid(f"CHANNEL_POOL_SIZE {size} must be at least 1")
    if size > len(ports):
        raise ChannelSettingsInvalid(
            f"CHANNEL_POOL_SIZE {size} is larger than CHANNEL_PORT_RANGE {format_port_range(ports)} "
            f"({len(ports)} ports)"
        )


def port_is_free(port: int, host: str = DEFAULT_HOST) -> bool:
    """Whether a worker could listen on ``host:port`` now (bound the way asyncio's
    ``start_server`` binds: with SO_REUSEADDR, so connections in TIME_WAIT do not count)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                return False
            raise
    return True


def check_ports_free(ports: Iterable[int], host: str = DEFAULT_HOST) -> None:
    """Raise ``PortInUse`` naming every port of ``ports`` that is taken."""
    taken = [p for p in ports if not port_is_free(p, host)]
    if taken:
        raise PortInUse(taken, host)
