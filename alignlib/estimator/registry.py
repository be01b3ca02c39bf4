"""One registry per component kind: duplicates are refused, unknown names list the valid ones."""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Callable, Collection, Iterator
from typing import Any, Generic, TypeVar

from alignlib.suggest import did_you_mean

T = TypeVar("T")


class RegistryError(ValueError):
    """A component name or parameter that does not exist (the message lists the valid ones)."""


class ParameterError(ValueError):
    """A component or preset parameter out of its range. ``param`` names the parameter and
    ``detail`` says what is wrong without it, so a config error can put the key in front
    (``algorithm.params.beta: must be > 0, got 0``)."""

    def __init__(self, owner: str, param: str, detail: str) -> None:
        super().__init__(f"{owner}: {param} {detail}")
        self.owner, self.param, self.detail = owner, param, detail


class ParameterTypeError(ParameterError, TypeError):
    """A parameter of the wrong type (``beta: high``)."""


_BOUNDS: tuple[tuple[str, Callable[[float, float], bool]], ...] = (
    (">", lambda v, b: v > b),
    (">=", lambda v, b: v >= b),
    ("<", lambda v, b: v < b),
    ("<=", lambda v, b: v <= b),
)


def check_number(
    owner: str,
    param: str,
    value: object,
    *,
    gt: float | None = None,
    ge: float | None = None,
    lt: float | None = None,
    le: float | None = None,
    optional: bool = False,
    why: str = "",
) -> None:
    """Refuse a non-number, a non-finite number or one outside the bounds, naming ``param``.

    Components call this in ``__post_init__`` so that the Python API refuses a bad value when
    the object is built, long before a run trains the wrong objective with it (β = 0 trains
    nothing, β < 0 learns the rejected answers). ``why`` is appended to a range error."""
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        kind = "a number or null" if optional else "a number"
        got = f"{type(value).__name__} {value!r}"
        raise ParameterTypeError(owner, param, f"must be {kind}, got {got}")
    if not math.isfinite(value):
        raise ParameterError(owner, param, f"must be finite, got {value!r}")
    for (op, holds), bound in zip(_BOUNDS, (gt, ge, lt, le), strict=True):
        if bound is not None and not holds(float(value), bound):
            suffix = f" ({why})" if why else ""
            raise ParameterError(owner, param, f"must be {op} {bound:g}, got {value!r}{suffix}")


def check_choice(owner: str, param: str, value: object, choices: Collection[str]) -> None:
    """Refuse a value that is not one of ``choices`` (with a did-you-mean)."""
    if value not in choices:
        hint = did_you_mean(value, choices) if isinstance(value, str) else ""
        raise ParameterError(
            owner, param, f"must be one of {', '.join(choices)}, got {value!r}{hint}"
        )


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
                f"unknown {self.kind} {name!r}{did_you_mean(name, valid)}; "
                f"valid: {', '.join(valid)}"
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
                        f"{self.kind} {name!r} has no parameter {key!r}"
                        f"{did_you_mean(key, fields)}; valid: {', '.join(fields) or '(none)'}"
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
