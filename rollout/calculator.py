"""The built-in `calculator` environment: arithmetic as a tool call.

The model writes ``<calculator>(3 + 4) * 12</calculator>`` and sees ``<result>84</result>``
appended; a turn without a call ends the episode. Expressions are evaluated from their parsed
syntax tree (numbers, + − × ÷ // % ** and parentheses), never with ``eval``, with bounds on
length, exponents and magnitudes, so a sampled expression cannot hang or exhaust the trainer.
"""

from __future__ import annotations

import ast
import math
import operator
import re
from collections.abc import Callable
from typing import Any

from alignlib.rollout.environments import register_environment

_BINARY: dict[type[ast.operator], Callable[[Any, Any], Any]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}
_UNARY: dict[type[ast.unaryop], Callable[[Any], Any]] = {
    ast.UAdd: operator.pos,
    ast.USub: operator.neg,
}
_CALL = re.compile(r"<calculator>(.*?)(?:</calculator>|$)", re.DOTALL)
MAX_LENGTH = 200
MAX_EXPONENT = 64
MAX_MAGNITUDE = 1e30


def evaluate(expression: str) -> float | int:
    """The value of an arithmetic expression; ValueError (with why) for anything else."""
    if len(expression) > MAX_LENGTH:
        raise ValueError(f"expression longer than {MAX_LENGTH} characters")
    try:
        tree = ast.parse(expression.strip().replace("^", "**"), mode="eval")
    except SyntaxError:
        raise ValueError("not an arithmetic expression") from None
    return _value(tree.body)


def _value(node: ast.expr) -> float | int:
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        return _bounded(node.value)
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        return _UNARY[type(node.op)](_value(node.operand))
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        left, right = _value(node.left), _value(node.right)
        if isinstance(node.op, ast.Pow) and abs(right) > MAX_EXPONENT:
            raise ValueError(f"exponent above {MAX_EXPONENT}")
        try:
            return _bounded(_BINARY[type(node.op)](left, right))
        except ZeroDivisionError:
            raise ValueError("division by zero") from None
        except OverflowError:
            raise ValueError("result out of range") from None
    raise ValueError("only numbers, + - * / // % ** and parentheses are allowed")


def _bounded(value: Any) -> float | int:
    if isinstance(value, complex) or not math.isfinite(value) or abs(value) > MAX_MAGNITUDE:
        raise ValueError("result out of range")
    return value


def show(value: float | int) -> str:
    """Integers as integers, other values to 10 significant digits."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value) if isinstance(value, int) else f"{value:.10g}"


@register_environment("calculator")
class Calculator:
    """Answers the last ``<calculator>EXPR</calculator>`` of a turn with
    ``<result>VALUE</result>`` (or ``<result>error: why</result>``); ends the episode on a turn
    without one, or after ``max_calls`` calls. Gives no reward of its own: the task's reward
    (the math grader) scores the final answer."""

    stop = ("</calculator>",)

    def __init__(self, max_calls: int = 8) -> None:
        self.max_calls = max_calls
        self.calls = 0

    def reset(self, **row: Any) -> None:
        self.calls = 0

    def step(self, turn: str) -> str | None:
        found = _CALL.findall(turn)
        if not found or self.calls >= self.max_calls:
            return None
        self.calls += 1
        try:
            return f"<result>{show(evaluate(found[-1]))}</result>"
        except ValueError as exc:
            return f"<result>error: {exc}</result>"
