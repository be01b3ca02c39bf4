"""Reward functions by name, so configs can say ``reward: math`` or ``reward: my_pkg.mod:fn``.

A reward is a plain callable ``fn(completion: str, **columns) -> float``, where ``columns`` are
the dataset row's other fields (e.g. ``answer``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from alignlib.imports import import_attr
from alignlib.suggest import did_you_mean

__all__ = [
    "RewardFn",
    "get_reward",
    "list_rewards",
    "named_rewards",
    "register_reward",
    "resolve_reward",
]

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


def named_rewards(sections: dict[str, Any]) -> dict[str, Any]:
    """A config dict whose ``online.rewards`` may hold functions (TRL's ``reward_funcs=[fn]``),
    as ``fn`` or ``{name: fn, ...}``, with each registered under its ``__name__`` (a suffix
    when a different function holds it) and named by it; other dicts are returned as given."""
    online = sections.get("online")
    rewards = online.get("rewards") if isinstance(online, dict) else None
    if not isinstance(rewards, list) or not any(
        callable(e) or (isinstance(e, dict) and callable(e.get("name"))) for e in rewards
    ):
        return sections
    named = [
        {**entry, "name": _registered(entry["name"])}
        if isinstance(entry, dict) and callable(entry.get("name"))
        else {"name": _registered(entry)}
        if callable(entry)
        else entry
        for entry in rewards
    ]
    return {**sections, "online": {**online, "rewards": named}}


def _registered(fn: Callable[..., Any]) -> str:
    """The name ``fn`` is (now) registered under."""
    base = getattr(fn, "__name__", "reward").replace(":", "_").replace("<", "").replace(">", "")
    name, count = base or "reward", 1
    while _REGISTRY.get(name, fn) is not fn:
        count += 1
        name = f"{base}_{count}"
    register_reward(name)(fn)
    return name


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
