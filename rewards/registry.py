"""Reward functions by name, so configs can say ``reward: math`` or ``reward: my_pkg.mod:fn``.

A reward is a plain callable ``fn(completion: str, **columns) -> float``, where ``columns`` are
the dataset row's other fields (e.g. ``answer``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from alignlib.imports import import_attr
from alignlib.suggest import did_you_mean

__all__ = ["RewardFn", "get_reward", "list_rewards", "register_reward", "resolve_reward"]

RewardFn = Callable[..., float]
F = TypeVar("F", bound=Callable[..., float])

_REGISTRY: dict[str, RewardFn] = {}


def _describe(fn: object) -> str:
    module = getattr(fn, "__module__", "?")
    return f"{module}.{getattr(fn, '__qualname__', repr(fn))}"


def register_reward(name: str) -> Callable[[F], F]:
    """Decorator registering a reward function under ``name``.

    A name can be registered only once (registering the very same function again is a no-op,
    so re-importing a module is harmless); a different function under a taken name is refused.
    """
    if not isinstance(name, str) or not name or ":" in name:
        raise ValueError(f"reward name must be a non-empty string without ':', got {name!r}")

    def decorator(fn: F) -> F:
        if not callable(fn):
            raise TypeError(f"register_reward({name!r}) needs a callable, got {fn!r}")
        existing = _REGISTRY.get(name)
        if existing is not None and existing is not fn:
            raise ValueError(
                f"reward name {name!r} is already registered to {_describe(existing)}; "
                "pick another name"
            )
        _REGISTRY[name] = fn
        return fn

    return decorator


def list_rewards() -> list[str]:
    """Registered reward names, sorted."""
    return sorted(_REGISTRY)


def get_reward(name: str) -> RewardFn:
    """The reward registered as ``name``; an unknown name's error lists the valid ones."""
    fn = _REGISTRY.get(name)
    if fn is not None:
        return fn
    raise ValueError(
        f"unknown reward {name!r}{did_you_mean(name, _REGISTRY)}; registered rewards: "
        f"{', '.join(list_rewards())}; "
        "or give a function as 'package.module:function'."
    )


def _import_attr(spec: str) -> object:
    if spec.partition(":")[0] == "reward_model":
        raise ValueError(
            f"reward spec {spec!r}: reward_model:PATH is supported only as iterative.oracle; for "
            "online rewards wrap a RewardModelScorer in a function (see alignlib.rewards)"
        )
    return import_attr(spec, "reward spec", "function")


def resolve_reward(spec: str | RewardFn) -> RewardFn:
    """A reward from a registered name or a ``"package.module:function"`` string.

    A callable is returned unchanged, so callers can accept either form.
    """
    if callable(spec):
        return spec
    if not isinstance(spec, str):
        raise TypeError(f"reward must be a name, 'module:function' or a callable, got {spec!r}")
    if ":" not in spec:
        return get_reward(spec)
    fn = _import_attr(spec)
    if not callable(fn):
        raise ValueError(
            f"reward spec {spec!r} points to a {type(fn).__name__}, not a function; "
            "give a callable fn(completion, **columns) -> float"
        )
    return fn
