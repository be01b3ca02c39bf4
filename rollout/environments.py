"""The environments a config can name: built-ins registered by name (`calculator`, `tools`), or
any class given as ``"package.module:Class"`` (alignlib.rollout.environment runs them): one with
a ``step(turn)`` method, or a TRL ``environment_factory`` class whose public methods are tools."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from alignlib.imports import import_attr
from alignlib.suggest import did_you_mean

__all__ = [
    "EpisodeError",
    "available_environments",
    "gives_rewards",
    "register_environment",
    "resolve_environment",
]


class EpisodeError(ValueError):
    """An environment that cannot be built as configured, or that failed during an episode."""


_ENVIRONMENTS: dict[str, Callable[..., Any]] = {}


def register_environment(name: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Class decorator: makes an environment nameable in `online.environment.name`."""

    def deco(factory: Callable[..., Any]) -> Callable[..., Any]:
        _ENVIRONMENTS[name] = factory
        return factory

    return deco


def available_environments() -> list[str]:
    """Registered environment names (the built-ins are imported first)."""
    from alignlib.rollout import calculator, tools  # noqa: F401 - they register themselves

    return sorted(_ENVIRONMENTS)


def resolve_environment(spec: str, where: str = "online.environment.name") -> Callable[..., Any]:
    """The environment class (or factory) a registered name or ``"module:Class"`` names."""
    if ":" in spec:
        factory = import_attr(spec, where, "class")
    else:
        names = available_environments()
        if spec not in _ENVIRONMENTS:
            raise EpisodeError(
                f"{where}: unknown environment {spec!r}{did_you_mean(spec, names)}; "
                f"registered: {', '.join(names)}; "
                "or give your own class as 'package.module:Class'"
            )
        factory = _ENVIRONMENTS[spec]
    if callable(factory) and callable(getattr(factory, "step", None)):
        return factory
    if isinstance(factory, type) and callable(getattr(factory, "reset", None)):
        from alignlib.rollout.tools import methods_as_tools, tool_method_names

        if tool_method_names(factory):
            return methods_as_tools(factory)
    raise EpisodeError(
        f"{where}: {spec!r} is not an environment class: it needs a step(turn) method, or (TRL's "
        "environment_factory form) public methods that are its tools; and reset(**row), "
        "optionally get_reward(); see alignlib.rollout.environment"
    )


def gives_rewards(factory: Callable[..., Any]) -> bool:
    """Whether an environment class rewards its episodes itself (defines ``get_reward``)."""
    return callable(getattr(factory, "get_reward", None))
