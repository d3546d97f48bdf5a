"""A worker in the deprecated transaction mode says so at start; the default says nothing."""

from __future__ import annotations

from flow8_streams.runtimes.streams.app import mode_warning
from flow8_streams.settings import Settings


def test_the_partition_mode_is_called_deprecated_and_the_default_is_quiet() -> None:
    warning = mode_warning(Settings(transactions="partition"))
    assert warning is not None and "deprecated" in warning and "loses plays" in warning
    assert mode_warning(Settings()) is None
