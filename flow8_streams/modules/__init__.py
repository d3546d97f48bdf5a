"""Modules: the units of work flowlets run, the registry that finds them, and the
context a module sees."""

from flow8_streams.modules.context import KV, ModuleContext
from flow8_streams.modules.registry import ModuleRegistry, ModuleSpec

__all__ = ["KV", "ModuleContext", "ModuleRegistry", "ModuleSpec"]
