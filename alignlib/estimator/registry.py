"""One registry per component kind: duplicates are refused, unknown names list the valid ones."""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class RegistryError(ValueError):
    """A component name or parameter that does not exist (the message lists the valid ones)."""


def closest(name: str, valid: list[str]) -> str:
    """' (did you mean X?)' for the closest valid name, or '' when nothing is close."""
    match = difflib.get_close_matches(name, valid, n=1)
    return f" (did you mean {match[0]!r}?)" if match else ""


class Registry(Generic[T]):
    """Maps names to component classes of one kind (masks, references, advantages, ...)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, type[T]] = {}

    def register(self, name: str) -> Callable[[type[T]], type[T]]:
        """Class decorator registering a component as ``name``; a second use is refused."""

        def decorate(cls: type[T]) -> type[T]:
            if name in self._items:
                raise RegistryError(
                    f"{self.kind} {name!r} is already registered by "
                    f"{self._items[name].__qualname__}; pick another name"
                )
            self._items[name] = cls
            cls.registered_name = name  # type: ignore[attr-defined]
            return cls

        return decorate

    def get(self, name: str) -> type[T]:
        """The class registered as ``name``; an unknown name raises with the list of valid ones."""
        if name not in self._items:
            valid = sorted(self._items)
            raise RegistryError(
                f"unknown {self.kind} {name!r}{closest(name, valid)}; valid: {', '.join(valid)}"
            )
        return self._items[name]

    def build(self, name: str, **params: Any) -> T:
        """Instantiate ``name`` with ``params``, refusing parameters the component does not have."""
        cls = self.get(name)
        if dataclasses.is_dataclass(cls):
            fields = [f.name for f in dataclasses.fields(cls) if f.init]
            for key in params:
                if key not in fields:
                    raise RegistryError(
                        f"{self.kind} {name!r} has no parameter {key!r}{closest(key, fields)}; "
                        f"valid: {', '.join(fields) or '(none)'}"
                    )
        return cls(**params)

    def resolve(self, spec: T | str) -> T:
        """Accept a component instance or a registered name (built with its defaults)."""
        return self.build(spec) if isinstance(spec, str) else spec

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())
