"""The ``flow8`` command (``flow8_streams.cli:main``).

``common`` holds what every command shares, ``local`` the embedded runtime's commands, ``streams``
those of Kafka + MongoDB, ``ops`` the operators' tools; ``errors`` maps every error to its message
and exit code, in one table.
"""

from flow8_streams.cli.main import app, main

__all__ = ["app", "main"]
