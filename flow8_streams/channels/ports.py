"""Channel port ranges: parsing them, checking that their ports are free, holding them."""

from __future__ import annotations

import contextlib
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


def check_pool_warm(warm: int, size: int) -> int:
    """How many channels a pool starts with: ``warm``, capped at the pool's ``size``."""
    if isinstance(warm, bool) or not isinstance(warm, int) or warm < 0:
        raise ChannelSettingsInvalid(f"CHANNEL_POOL_WARM {warm!r} must be a whole number, 0 or more")
    return min(warm, size)


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


def reserve_port(port: int, host: str = DEFAULT_HOST) -> socket.socket | None:
    """Hold ``host:port`` for a channel not started yet: a socket bound without SO_REUSEADDR
    and not listening. Nobody else can bind the port (another instance's worker fails its
    start, naming the port), a client connecting to it is refused at once (nothing hangs),
    and closing the socket frees it for our worker. None when it cannot be held now: a port
    with connections still in TIME_WAIT is free to a worker but not to such a socket.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        return None
    return sock


def held_not_listening(port: int, host: str = DEFAULT_HOST) -> bool:
    """Whether ``host:port`` is bound by someone but refuses connections: a cold channel,
    held by its pool until a task needs it. False when that cannot be told from here."""
    try:
        if port_is_free(port, host):
            return False
    except OSError:  # not an address of this machine
        return False
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.2)
        try:
            sock.connect((host, port))
        except ConnectionRefusedError:
            return True
        except OSError:
            return False
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
    return False
