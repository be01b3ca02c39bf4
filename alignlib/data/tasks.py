"""Small arithmetic tasks generated offline, for online-RL runs that must show learning on a CPU.

A 135M model (SmolLM2-135M-Instruct, 4-bit origin) solves no GSM8K problem, but it often writes
the right sum of two single-digit numbers, without the `\\boxed{}` the grader needs. These
one-step problems start from what it can almost do: HPT's SFT rows teach the boxed format on
prompts it fails, and RL takes over on the ones it sometimes solves.

Rows are {prompt, answer, solution}. The held-out split uses names and objects that never occur
in training, so no held-out prompt is a training prompt.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from functools import cache
from importlib.resources import files
from typing import Any

from alignlib.data.prompts import prompt_of

INSTRUCTION = "Give the final answer in \\boxed{}."

TRAIN_NAMES = ("Tom", "Anna", "Sam", "Lily", "Ben", "Mia", "Leo", "Emma", "Max", "Zoe")
HELDOUT_NAMES = ("Ravi", "Olga", "Kofi", "Ines")
TRAIN_THINGS = ("apples", "books", "coins", "pens", "cards", "shells", "stamps", "balls")
HELDOUT_THINGS = ("kites", "cups", "rings")

# (template, operation); {n} name, {t} things, {a} {b} the operands.
WORD_PROBLEMS: tuple[tuple[str, str], ...] = (
    ("{n} has {a} {t} and gets {b} more. How many {t} does {n} have now?", "+"),
    ("{n} had {a} {t} and found {b} more. How many {t} does {n} have?", "+"),
    ("{n} has {a} {t} and gives away {b}. How many {t} are left?", "-"),
    ("{n} had {a} {t} and lost {b} of them. How many {t} does {n} have now?", "-"),
)
BARE: tuple[tuple[str, str], ...] = (("What is {a} + {b}?", "+"), ("What is {a} - {b}?", "-"))


def _operands(rng: random.Random, op: str) -> tuple[int, int]:
    a, b = rng.randint(1, 9), rng.randint(1, 9)
    # Subtraction stays non-negative and non-trivial: a > b.
    if op == "-":
        a, b = max(a, b) + (a == b), min(a, b)
    return a, b


def solution_of(a: int, b: int, op: str) -> tuple[str, str]:
    """(answer, demonstration): the equation, then the boxed result."""
    value = a + b if op == "+" else a - b
    return str(value), f"{a} {op} {b} = {value}. The answer is \\boxed{{{value}}}."


def _rows(
    count: int, seed: int, names: tuple[str, ...], things: tuple[str, ...], bare: bool
) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    templates = WORD_PROBLEMS + (BARE if bare else ())
    rows: list[dict[str, Any]] = []
    seen: set[str] = set()
    while len(rows) < count:
        template, op = rng.choice(templates)
        a, b = _operands(rng, op)
        problem = template.format(n=rng.choice(names), t=rng.choice(things), a=a, b=b)
        if problem in seen:
            continue
        seen.add(problem)
        answer, solution = solution_of(a, b, op)
        rows.append({"prompt": f"{problem} {INSTRUCTION}", "answer": answer, "solution": solution})
    return rows


@cache
def _arithmetic_train() -> tuple[dict[str, Any], ...]:
    return tuple(_rows(2000, seed=1, names=TRAIN_NAMES, things=TRAIN_THINGS, bare=True))


@cache
def _arithmetic_heldout() -> tuple[dict[str, Any], ...]:
    return tuple(_rows(128, seed=2, names=HELDOUT_NAMES, things=HELDOUT_THINGS, bare=False))


def arithmetic_train() -> list[dict[str, Any]]:
    """2,000 one-step addition/subtraction problems (word problems and bare sums)."""
    return [dict(row) for row in _arithmetic_train()]


def arithmetic_heldout() -> list[dict[str, Any]]:
    """128 word problems with names and objects that training never uses."""
    return [dict(row) for row in _arithmetic_heldout()]


CALCULATOR_INSTRUCTION = (
    "Use the calculator: write <calculator>expression</calculator> and read the <result>. "
    "Give the final answer in \\boxed{}."
)
PRODUCT_PROBLEMS = (
    "What is {a} * {b}?",
    "{n} buys {b} boxes of {a} {t}. How many {t} is that?",
    "Each of {b} shelves holds {a} {t}. How many {t} are on the shelves?",
)
HELDOUT_PRODUCT = "A crate holds {a} {t}. How many {t} are in {b} crates?"


def _products(
    count: int,
    seed: int,
    templates: tuple[str, ...],
    names: tuple[str, ...],
    things: tuple[str, ...],
) -> list[dict[str, Any]]:
    """Three-digit by two-digit products: beyond what a 135M model computes in its head, one
    calculator call away (the demonstration makes that call and reads its result)."""
    rng = random.Random(seed)
    rows: list[dict[str, Any]] = []
    seen: set[str] = set()
    while len(rows) < count:
        a, b = rng.randint(101, 999), rng.randint(11, 99)
        problem = rng.choice(templates).format(n=rng.choice(names), t=rng.choice(things), a=a, b=b)
        if problem in seen:
            continue
        seen.add(problem)
        value = a * b
        call = f"<calculator>{a} * {b}</calculator><result>{value}</result>"
        solution = f"{call} The answer is \\boxed{{{value}}}."
        rows.append(
            {
                "prompt": f"{problem} {CALCULATOR_INSTRUCTION}",
                "answer": str(value),
                "solution": solution,
            }
        )
    return rows


@cache
def _calculator_train() -> tuple[dict[str, Any], ...]:
    return tuple(_products(2000, 3, PRODUCT_PROBLEMS, TRAIN_NAMES, TRAIN_THINGS))


@cache
def _calculator_heldout() -> tuple[dict[str, Any], ...]:
    return tuple(_products(128, 4, (HELDOUT_PRODUCT,), HELDOUT_NAMES, HELDOUT_THINGS))


def calculator_train() -> list[dict[str, Any]]:
    """2,000 products of a three-digit and a two-digit number, whose demonstrations call the
    `calculator` environment (online.environment) and box its result."""
    return [dict(row) for row in _calculator_train()]


def calculator_heldout() -> list[dict[str, Any]]:
    """128 product word problems with objects and a wording that training never uses."""
    return [dict(row) for row in _calculator_heldout()]


@cache
def _math_prompts() -> tuple[dict[str, Any], ...]:
    text = files("alignlib.data").joinpath("math_train.jsonl").read_text(encoding="utf-8")
    rows = [json.loads(line) for line in text.split("\n") if line.strip()]
    return tuple({"prompt": prompt_of(r["problem"]), "answer": r["answer"]} for r in rows)


def math_prompts() -> list[dict[str, Any]]:
    """The 7,470 MATH training problems as online-RL prompts {prompt, answer} (no worked
    solutions, so no demonstrations: for GRPO, Clip-Cov, KL-Cov, not HPT or LUFFY)."""
    return [dict(row) for row in _math_prompts()]


TASKS: dict[str, Callable[[], list[dict[str, Any]]]] = {
    "arithmetic_prompts": arithmetic_train,
    "arithmetic_heldout": arithmetic_heldout,
    "math_prompts": math_prompts,
    "calculator_prompts": calculator_train,
    "calculator_heldout": calculator_heldout,
}
"""Builtin data sets built as a whole (not row by row from GSM8K)."""
