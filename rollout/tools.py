"""The built-in `tools` environment: Python functions as tools, called the way chat models that
were trained on tool use call them (the Hermes format of Qwen2.5/Qwen3 and other templates):

    <tool_call>
    {"name": "add", "arguments": {"a": 2, "b": 3}}
    </tool_call>

Each call of a turn is run (an `async def` function is awaited) and its result becomes one
`tool` message: with `observation_format: chat` the chat template renders it (Qwen's wraps it in
<tool_response>), and the functions' JSON schemas (from their type hints and docstrings, as
transformers' `get_json_schema` reads them) are shown to the model in the prompt through the
template's tool list, as TRL's `tools=[...]` does. A failing call answers with
{"error": "..."} (the model can recover, as in TRL); a turn without a call ends the episode.

A TRL `environment_factory` class runs unchanged (`methods_as_tools`): it has `reset(**row)`, no
`step`, and its public methods are the tools, called on the episode's own instance; its
`get_reward()` (which may be `async def`) is the episode's reward.
"""

from __future__ import annotations

import inspect
import json
import re
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

from alignlib.awaiting import resolve_awaitables
from alignlib.imports import import_attr
from alignlib.rollout.environments import register_environment

_CALL = re.compile(r"<tool_call>\s*(.*?)\s*(?:</tool_call>|$)", re.DOTALL)


def parse_tool_calls(turn: str) -> list[dict[str, Any] | str]:
    """Each <tool_call> block of ``turn`` as {"name", "arguments"}, or the reason it is not one
    (a string) so the model is told what went wrong."""
    calls: list[dict[str, Any] | str] = []
    for body in _CALL.findall(turn):
        try:
            call = json.loads(body)
        except json.JSONDecodeError as exc:
            calls.append(f"the tool call is not JSON ({exc.msg})")
            continue
        if not isinstance(call, dict) or not isinstance(call.get("name"), str):
            calls.append('a tool call is {"name": ..., "arguments": {...}}')
            continue
        arguments = call.get("arguments", {})
        if isinstance(arguments, str):  # some models encode the arguments as a JSON string
            try:
                arguments = json.loads(arguments)
            except json.JSONDecodeError:
                arguments = None
        if not isinstance(arguments, dict):
            calls.append(f"the arguments of {call['name']} must be a JSON object")
            continue
        calls.append({"name": call["name"], "arguments": arguments})
    return calls


def _content(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, default=str)


@register_environment("tools")
class FunctionTools:
    """Calls the model's tool calls on ``functions`` (callables or ``"module:function"``
    strings); at most ``max_calls`` calls per episode (None: no limit but `max_turns` and the
    token budget), then the episode ends."""

    def __init__(
        self, functions: Sequence[str | Callable[..., Any]], max_calls: int | None = 8
    ) -> None:
        if not functions:
            raise ValueError("give at least one function, e.g. {functions: ['my_tools:search']}")
        resolved = [
            import_attr(f, "tools function", "function") if isinstance(f, str) else f
            for f in functions
        ]
        for function in resolved:
            if not callable(function):
                raise ValueError(f"tools function {function!r} is not callable")
        self.functions = {getattr(f, "__name__", repr(f)): f for f in resolved}
        self.max_calls, self.calls = max_calls, 0

    @property
    def tools(self) -> list[Callable[..., Any]]:
        """The functions, for the chat template's tool list (their schemas)."""
        return list(self.functions.values())

    def reset(self, **row: Any) -> None:
        self.calls = 0

    def step(self, turn: str) -> list[str] | None:
        calls = parse_tool_calls(turn)
        left = len(calls) if self.max_calls is None else self.max_calls - self.calls
        if not calls or left <= 0:
            return None
        calls = calls[:left]
        self.calls += len(calls)
        results = resolve_awaitables([self._call(call) for call in calls])
        return [
            _content({"error": f"{type(r).__name__}: {r}"} if isinstance(r, BaseException) else r)
            for r in results
        ]

    def _call(self, call: dict[str, Any] | str) -> Any:
        """The function's result (or awaitable), or the error the model should read."""
        if isinstance(call, str):
            return {"error": call}
        function = self.functions.get(call["name"])
        if function is None:
            return {"error": f"no tool named {call['name']!r}; tools: {', '.join(self.functions)}"}
        try:
            return function(**call["arguments"])
        except Exception as exc:  # the model's arguments, or the tool itself: the model reads it
            return {"error": f"{type(exc).__name__}: {exc}"}


def tool_method_names(environment_class: type) -> list[str]:
    """The tools of a TRL environment class, as TRL picks them: its methods except `reset`,
    `get_reward` and names starting with '_' (read on the class: no property is evaluated)."""
    return [
        name
        for name, _ in inspect.getmembers(environment_class, predicate=inspect.isfunction)
        if name not in ("reset", "get_reward") and not name.startswith("_")
    ]


class MethodTools(FunctionTools):
    """An episode of a TRL-style environment: one instance of ``environment_class`` built with
    the config's params (``wrapped_environment``: what TRL rewards read as `environments`), its
    public methods called as tools (no limit on calls)."""

    environment_class: ClassVar[type]

    def __init__(self, **params: Any) -> None:
        self.wrapped_environment = self.environment_class(**params)
        methods = [
            getattr(self.wrapped_environment, name)
            for name in tool_method_names(self.environment_class)
        ]
        super().__init__(methods, max_calls=None)

    def reset(self, **row: Any) -> Any:
        super().reset(**row)
        return self.wrapped_environment.reset(**row)


def methods_as_tools(environment_class: type) -> type[MethodTools]:
    """A `MethodTools` class for ``environment_class``: defines `get_reward` and `stop` only
    when that class does, so asking the class whether episodes are rewarded stays truthful."""
    namespace: dict[str, Any] = {
        "environment_class": environment_class,
        "__doc__": environment_class.__doc__,
        "__module__": environment_class.__module__,
        # The config's params are the user's class's: checked against its signature.
        "__signature__": inspect.signature(environment_class),
    }
    if callable(getattr(environment_class, "get_reward", None)):
        namespace["get_reward"] = lambda self: self.wrapped_environment.get_reward()
    if hasattr(environment_class, "stop"):
        namespace["stop"] = environment_class.stop
    return type(environment_class.__name__, (MethodTools,), namespace)
