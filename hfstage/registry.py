"""A small name -> object registry used for losses, models, augmentations and tasks."""

from __future__ import annotations

from typing import Callable, Generic, Iterator, TypeVar

from hfstage.arguments import closest
from hfstage.errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps names to classes or factories; unknown names raise a ConfigError naming the choices."""

    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def decorator(obj: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} '{name}' is registered twice")
            self._items[name] = obj
            return obj

        return decorator

    def get(self, name: str, where: str = "") -> T:
        if name not in self._items:
            prefix = f"{where}: " if where else ""
            raise ConfigError(
                f"{prefix}unknown {self.kind} '{name}'{closest(name, self._items)}; "
                f"choose one of: {', '.join(sorted(self._items))}"
            )
        return self._items[name]

    def names(self) -> list[str]:
        return sorted(self._items)

    def registered(self) -> list[str]:
        """The names in the order they were registered (where order matters: stage steps)."""
        return list(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())
