"""Reward registry: names, duplicates, 'module:function' specs, and the built-in rewards."""

from __future__ import annotations

import pytest

from alignlib.rewards import format_reward, length_penalty, math_reward, registry
from alignlib.rewards.registry import get_reward, list_rewards, register_reward, resolve_reward


@pytest.fixture(autouse=True)
def _isolated_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    # Tests register throwaway names; keep them out of the process-wide registry.
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))


def test_builtins_registered() -> None:
    assert {"math", "format", "length_penalty"} <= set(list_rewards())
    assert resolve_reward("math") is math_reward
    assert resolve_reward("format") is format_reward
    assert resolve_reward("length_penalty") is length_penalty


def test_register_and_resolve_by_name() -> None:
    @register_reward("always_one")
    def always_one(completion: str, **_: object) -> float:
        return 1.0

    assert resolve_reward("always_one") is always_one
    assert resolve_reward("always_one")("anything") == 1.0


def test_duplicate_name_refused() -> None:
    @register_reward("dup")
    def first(completion: str, **_: object) -> float:
        return 0.0

    def second(completion: str, **_: object) -> float:
        return 1.0

    with pytest.raises(ValueError, match=r"'dup' is already registered to .*first"):
        register_reward("dup")(second)
    assert get_reward("dup") is first  # the original survives
    register_reward("dup")(first)  # re-registering the very same function is harmless


def test_unknown_name_lists_valid_names_and_closest() -> None:
    with pytest.raises(ValueError) as info:
        resolve_reward("fromat")
    message = str(info.value)
    assert "(did you mean 'format'?)" in message
    for name in ("format", "length_penalty", "math"):
        assert name in message
    assert "\n" not in message


def test_module_function_spec() -> None:
    assert resolve_reward("alignlib.rewards.basic:format_reward") is format_reward
    assert resolve_reward("os.path:join") is __import__("os").path.join
    fn = resolve_reward("alignlib.rewards.registry:resolve_reward")
    assert fn is resolve_reward


@pytest.mark.parametrize(
    ("spec", "pattern"),
    [
        ("no_such_pkg_xyz.mod:fn", "cannot import module 'no_such_pkg_xyz.mod'"),
        ("alignlib.rewards.basic:nope", "has no attribute 'nope'"),
        ("alignlib.rewards.basic:__doc__", "points to a str, not a function"),
        (":fn", "must look like 'package.module:function'"),
        ("alignlib.rewards.basic:", "must look like 'package.module:function'"),
    ],
)
def test_bad_specs(spec: str, pattern: str) -> None:
    with pytest.raises(ValueError, match=pattern):
        resolve_reward(spec)


def test_callable_passes_through_and_bad_types_refused() -> None:
    def fn(completion: str, **_: object) -> float:
        return 0.5

    assert resolve_reward(fn) is fn
    with pytest.raises(TypeError, match="name, 'module:function' or a callable"):
        resolve_reward(3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="non-empty string without ':'"):
        register_reward("a:b")
