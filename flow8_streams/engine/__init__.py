"""The deterministic engine: ``decide`` and ``evolve``."""

from flow8_streams.engine.core import EngineError, decide, evolve, fold, in_flight, next_wakeup, step

__all__ = ["EngineError", "decide", "evolve", "fold", "in_flight", "next_wakeup", "step"]
