"""The module registry: built in, from the ``flow8.modules`` entry-point group, or
from files and packages named with ``--modules``. Built explicitly, never filled by
import side effects."""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import inspect
import sys
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flow8_streams.errors import InvalidInput, UnknownModule

ModuleFn = Callable[[Any], Any] | Callable[[Any], Awaitable[Any]]
ENTRY_POINT_GROUP = "flow8.modules"


@dataclass(frozen=True, slots=True)
class ModuleSpec:
    name: str
    fn: ModuleFn
    is_async: bool
    channel: bool = False  # always runs on a background channel
    inline: bool = False  # quick and pure: a host may run it in place, without a trip through a queue


class ModuleRegistry:
    def __init__(self) -> None:
        self._modules: dict[str, ModuleSpec] = {}

    def register(self, name: str, fn: ModuleFn, *, channel: bool | None = None, inline: bool | None = None) -> None:
        """Add a module. ``channel``/``inline`` default to the function's ``flow8_channel``
        / ``flow8_inline`` attributes (set them in a module file to declare either)."""
        if not callable(fn):
            raise InvalidInput(f"module {name!r} is not callable: {fn!r}")
        on_channel = bool(getattr(fn, "flow8_channel", False)) if channel is None else channel
        in_place = bool(getattr(fn, "flow8_inline", False)) if inline is None else inline
        is_async = inspect.iscoroutinefunction(fn)
        if in_place and (is_async or on_channel):
            raise InvalidInput(f"module {name!r}: only a plain (not async, not channel) function can be inline")
        self._modules[name] = ModuleSpec(name, fn, is_async, on_channel, in_place)

    def update(self, modules: Mapping[str, ModuleFn]) -> None:
        for name, fn in modules.items():
            self.register(name, fn)

    def get(self, name: str) -> ModuleSpec:
        try:
            return self._modules[name]
        except KeyError:
            raise UnknownModule(f"unknown module {name!r}; known: {', '.join(self.names())}") from None

    def names(self) -> list[str]:
        return sorted(self._modules)

    def __contains__(self, name: object) -> bool:
        return name in self._modules

    @classmethod
    def default(cls, sources: Iterable[str] = (), *, entry_points: bool = True) -> ModuleRegistry:
        """Built-ins, then entry points, then each of ``sources`` (later ones win)."""
        from flow8_streams.modules import builtin

        registry = cls()
        registry.update(builtin.MODULES)
        if entry_points:
            for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
                try:
                    registry.register(ep.name, ep.load())
                except Exception as exc:  # a broken plug-in must not hide the others
                    raise InvalidInput(f"module entry point {ep.name!r} ({ep.value}) failed to load: {exc}") from exc
        for source in sources:
            registry.update(load_source(source))
        return registry


def load_source(source: str) -> Mapping[str, ModuleFn]:
    """``MODULES`` of a Python file (``path/to/mods.py``) or an importable package."""
    path = Path(source)
    try:
        if source.endswith(".py") or path.exists():
            if not path.is_file():
                raise InvalidInput(f"--modules {source}: no such file")
            name = f"flow8_user_modules_{abs(hash(str(path.resolve())))}"
            spec = importlib.util.spec_from_file_location(name, path)
            assert spec is not None and spec.loader is not None
            module = importlib.util.module_from_spec(spec)
            sys.modules[name] = module
            spec.loader.exec_module(module)
        else:
            module = importlib.import_module(source)
    except InvalidInput:
        raise
    except Exception as exc:
        raise InvalidInput(f"--modules {source}: cannot be loaded: {type(exc).__name__}: {exc}") from exc
    modules = getattr(module, "MODULES", None)
    if not isinstance(modules, Mapping):
        raise InvalidInput(f"--modules {source}: defines no MODULES mapping of name -> function")
    return modules
