"""A small name -> object registry used for losses, models, augmentations, tasks, stage steps and executors.

A registry with an entry-point ``group`` (``hfstage.tasks``, ``hfstage.models``, ``hfstage.losses``,
``hfstage.steps``, ``hfstage.executors``) also holds what outside packages declare there, found when the registry
is first asked (``importlib.metadata`` entry points): an entry point's object is registered under the entry point's
name, unless loading it registered that name already (a module whose classes register themselves). A plug-in that
fails to load is reported once, with its package and its error, and everything else keeps working; asking for a
name whose plug-in failed raises a ``ConfigError`` naming the package and that error.
"""

from __future__ import annotations

import logging
from typing import Callable, Generic, Iterator, TypeVar

from hfstage.arguments import closest
from hfstage.errors import ConfigError

T = TypeVar("T")
logger = logging.getLogger("hfstage")


class Registry(Generic[T]):
    """Maps names to classes or factories; unknown names raise a ConfigError naming the choices."""

    def __init__(self, kind: str, group: str | None = None):
        self.kind = kind
        self.group = group  # entry-point group of plug-ins, loaded on first use
        self._items: dict[str, T] = {}
        self._failed: dict[str, str] = {}  # plug-in name -> "package: error"
        self._loaded = group is None

    def register(self, name: str) -> Callable[[T], T]:
        def decorator(obj: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} '{name}' is registered twice")
            self._items[name] = obj
            return obj

        return decorator

    def load_plugins(self) -> None:
        """Register what the installed packages declare in this registry's entry-point group (once)."""
        if self._loaded:
            return
        self._loaded = True
        from importlib.metadata import entry_points

        for ep in entry_points(group=self.group):
            package = ep.dist.name if ep.dist is not None else ep.value.split(":")[0].split(".")[0]
            try:
                obj = ep.load()
                if ep.name not in self._items:
                    self.register(ep.name)(obj)
            except Exception as exc:  # noqa: BLE001  a broken plug-in must not break hfstage
                text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
                self._failed[ep.name] = f"{package}: {type(exc).__name__}{': ' + text if text else ''}"
                logger.warning("plug-in %s '%s' from package %s failed to load (%s); hfstage goes on without it",
                               self.kind, ep.name, package, self._failed[ep.name].split(": ", 1)[1])

    def get(self, name: str, where: str = "") -> T:
        self.load_plugins()
        if name not in self._items:
            prefix = f"{where}: " if where else ""
            if name in self._failed:
                package, error = self._failed[name].split(": ", 1)
                raise ConfigError(f"{prefix}{self.kind} '{name}' comes from the plug-in package {package}, which failed "
                                  f"to load: {error}")
            raise ConfigError(
                f"{prefix}unknown {self.kind} '{name}'{closest(name, self._items)}; "
                f"choose one of: {', '.join(sorted(self._items))}"
            )
        return self._items[name]

    def names(self) -> list[str]:
        self.load_plugins()
        return sorted(self._items)

    def registered(self) -> list[str]:
        """The names in the order they were registered (where order matters: stage steps)."""
        self.load_plugins()
        return list(self._items)

    def __contains__(self, name: object) -> bool:
        self.load_plugins()
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())
