"""Which flowlets run on a channel, and what a ``Pending`` returned elsewhere becomes: one
rule for every runtime."""

from __future__ import annotations

from typing import TYPE_CHECKING

from flow8_streams.channels.pending import Pending

if TYPE_CHECKING:
    from flow8_streams.domain.messages import FlowletResult
    from flow8_streams.modules.registry import ModuleRegistry


def runs_on_channel(registry: ModuleRegistry, module_ref: str, defer_after_ms: int | None) -> bool:
    """A flowlet goes to a channel (when its host has channels) if it has ``defer_after_ms``
    or its module is declared a channel module (``fn.flow8_channel = True``)."""
    if defer_after_ms is not None:
        return True
    return module_ref in registry and registry.get(module_ref).channel


def without_pending(result: FlowletResult, module_ref: str, start_with_channels: str) -> FlowletResult:
    """A ``Pending`` returned off a channel cannot be completed from outside: it fails the
    flowlet, not retryable, saying how to run it (``start_with_channels``: the command)."""
    if not (result.ok and isinstance(result.output, Pending)):
        return result
    return result.model_copy(
        update={
            "ok": False,
            "output": None,
            "retryable": False,
            "error": f"module {module_ref!r} returned Pending, which needs a channel: give the flowlet "
            f"defer_after_ms (or declare the module channel) and run with channels ({start_with_channels})",
        }
    )
