"""flow8-streams: an event-sourced workflow engine; embedded on SQLite, distributed on Kafka + MongoDB.

The public API is what ``__all__`` names; everything else may change between releases.
Each name is imported on first use, so ``import flow8_streams`` (and so every submodule,
a channel process's too) stays cheap, and faust, aiokafka and pymongo are never loaded by
it. The Kafka client of upstream and downstream systems is ``flow8_streams.client``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from flow8_streams.channels.pending import Pending
    from flow8_streams.domain.flow import FlowDefinition, FlowletDefinition, RetryPolicy
    from flow8_streams.domain.limits import Limits
    from flow8_streams.domain.messages import CancelPlay, StartPlay
    from flow8_streams.domain.results import PlayResult
    from flow8_streams.domain.state import PlayState
    from flow8_streams.errors import (
        BadMessage,
        CompanyMismatch,
        EngineError,
        Flow8Error,
        InvalidCommand,
        InvalidFlow,
        InvalidInput,
        LimitExceeded,
        ModuleFailed,
        NotFound,
        ReadTimedOut,
        ReadTooLarge,
        StoreUnavailable,
        TemplateError,
        UnknownModule,
    )
    from flow8_streams.modules.context import ModuleContext
    from flow8_streams.runtimes.local import LocalRuntime

__version__ = "0.1.0"

_ERRORS = "flow8_streams.errors"
_HOME = {
    "BadMessage": _ERRORS,
    "EngineError": _ERRORS,
    "TemplateError": _ERRORS,
    "CancelPlay": "flow8_streams.domain.messages",
    "CompanyMismatch": _ERRORS,
    "Flow8Error": _ERRORS,
    "FlowDefinition": "flow8_streams.domain.flow",
    "FlowletDefinition": "flow8_streams.domain.flow",
    "InvalidCommand": _ERRORS,
    "InvalidFlow": _ERRORS,
    "InvalidInput": _ERRORS,
    "LimitExceeded": _ERRORS,
    "Limits": "flow8_streams.domain.limits",
    "LocalRuntime": "flow8_streams.runtimes.local",
    "ModuleContext": "flow8_streams.modules.context",
    "ModuleFailed": _ERRORS,
    "NotFound": _ERRORS,
    "Pending": "flow8_streams.channels.pending",
    "PlayResult": "flow8_streams.domain.results",
    "PlayState": "flow8_streams.domain.state",
    "RetryPolicy": "flow8_streams.domain.flow",
    "ReadTimedOut": _ERRORS,
    "ReadTooLarge": _ERRORS,
    "StartPlay": "flow8_streams.domain.messages",
    "StoreUnavailable": _ERRORS,
    "UnknownModule": _ERRORS,
}

__all__ = [
    "BadMessage",
    "CancelPlay",
    "CompanyMismatch",
    "EngineError",
    "Flow8Error",
    "FlowDefinition",
    "FlowletDefinition",
    "InvalidCommand",
    "InvalidFlow",
    "InvalidInput",
    "LimitExceeded",
    "Limits",
    "LocalRuntime",
    "ModuleContext",
    "ModuleFailed",
    "NotFound",
    "Pending",
    "PlayResult",
    "PlayState",
    "ReadTimedOut",
    "ReadTooLarge",
    "RetryPolicy",
    "StartPlay",
    "StoreUnavailable",
    "TemplateError",
    "UnknownModule",
    "__version__",
]


def __getattr__(name: str) -> Any:
    home = _HOME.get(name)
    if home is None:
        raise AttributeError(f"module 'flow8_streams' has no attribute {name!r}")
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
