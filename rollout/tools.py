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
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from typing import Any

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
    strings); at most ``max_calls`` calls per episode, then the episode ends."""

    def __init__(self, functions: Sequence[str | Callable[..., Any]], max_calls: int = 8) -> None:
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
        if not calls or self.calls >= self.max_calls:
            return None
        calls = calls[: self.max_calls - self.calls]
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
