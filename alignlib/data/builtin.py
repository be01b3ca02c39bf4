"""Data sets built offline from the bundled GSM8K train split, one per training format.

Wrong answers are the right answer plus a seeded offset, so a pair differs in its final answer.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Callable
from functools import cache
from importlib.resources import files
from typing import Any

from alignlib.data.errors import DataError
from alignlib.data.prompts import prompt_of
from alignlib.data.tasks import TASKS  # generated sets, not built row by row from GSM8K

EMPTY_THINK = "<think>\n\n</think>\n\n"
"""The empty reasoning block BVPO puts at the start of an empty-trace response (Qwen3/R1 style)."""


@cache
def gsm8k_train() -> list[dict[str, Any]]:
    text = files("alignlib.data").joinpath("gsm8k_train.jsonl").read_text(encoding="utf-8")
    # split("\n"), not splitlines(): solutions contain U+2028, which splitlines() breaks on.
    return [json.loads(line) for line in text.split("\n") if line.strip()]


def clean_solution(solution: str) -> str:
    """GSM8K's worked steps without the <<calculator>> annotations or the #### line."""
    steps = re.sub(r"<<[^>]*>>", "", solution.split("####")[0]).strip()
    return steps


def wrong_answer(answer: str, rng: random.Random) -> str:
    value = int(answer.replace(",", ""))
    return str(value + rng.choice([-1, 1]) * rng.randint(1, 9))


def _rows(builder: Callable[[dict[str, Any], random.Random], list[dict[str, Any]]], seed: int = 0):
    rng = random.Random(seed)
    out: list[dict[str, Any]] = []
    for row in gsm8k_train():
        out.extend(builder(row, rng))
    return out


def _sft(row: dict[str, Any], rng: random.Random) -> list[dict[str, Any]]:
    completion = f"{clean_solution(row['solution'])}\nThe answer is \\boxed{{{row['answer']}}}."
    return [
        {"prompt": prompt_of(row["problem"]), "completion": completion, "answer": row["answer"]}
    ]


def _pairs(row: dict[str, Any], rng: random.Random) -> list[dict[str, Any]]:
    steps = clean_solution(row["solution"])
    return [
        {
            "prompt": prompt_of(row["problem"]),
            "chosen": f"{steps}\nThe answer is \\boxed{{{row['answer']}}}.",
            "rejected": f"{steps}\nThe answer is \\boxed{{{wrong_answer(row['answer'], rng)}}}.",
        }
    ]


def _short_pairs(row: dict[str, Any], rng: random.Random) -> list[dict[str, Any]]:
    """Final answers only: a pair differs in a few tokens, so CPU runs stay short."""
    return [
        {
            "prompt": prompt_of(row["problem"]),
            "chosen": f"The answer is \\boxed{{{row['answer']}}}.",
            "rejected": f"The answer is \\boxed{{{wrong_answer(row['answer'], rng)}}}.",
        }
    ]


def _tpo(row: dict[str, Any], rng: random.Random) -> list[dict[str, Any]]:
    steps = clean_solution(row["solution"])
    return [
        {
            "prompt": prompt_of(row["problem"]),
            "reference": f"{steps}\nThe answer is \\boxed{{{row['answer']}}}.",
            "chosen": f"The answer is \\boxed{{{row['answer']}}}.",
            "rejected": f"The answer is \\boxed{{{wrong_answer(row['answer'], rng)}}}.",
        }
    ]


def _bvpo(row: dict[str, Any], rng: random.Random) -> list[dict[str, Any]]:
    # The last ~240 characters of the reasoning: the trace stays short enough for CPU runs
    # and keeps the final computation next to the answer.
    steps = clean_solution(row["solution"])[-240:]
    wrong = wrong_answer(row["answer"], rng)
    prompt = prompt_of(row["problem"])
    return [
        {
            "prompt": prompt,
            "chosen": f"<think>\n{steps}\n</think>\n\n\\boxed{{{row['answer']}}}",
            "rejected": f"<think>\n{steps}\n</think>\n\n\\boxed{{{wrong}}}",
            "trace": True,
        },
        {
            "prompt": prompt,
            "chosen": f"{EMPTY_THINK}\\boxed{{{row['answer']}}}",
            "rejected": f"{EMPTY_THINK}\\boxed{{{wrong}}}",
            "trace": False,
        },
    ]


def _prompts(row: dict[str, Any], rng: random.Random) -> list[dict[str, Any]]:
    return [
        {
            "prompt": prompt_of(row["problem"]),
            "answer": row["answer"],
            "solution": _sft(row, rng)[0]["completion"],
        }
    ]


BUILDERS = {
    "gsm8k_sft": _sft,
    "gsm8k_pairs": _pairs,
    "gsm8k_short_pairs": _short_pairs,
    "gsm8k_tpo": _tpo,
    "gsm8k_bvpo": _bvpo,
    "gsm8k_prompts": _prompts,
}


def build(name: str) -> list[dict[str, Any]]:
    """Rows of the builtin data set ``name``."""
    if name in TASKS:
        return TASKS[name]()
    if name not in BUILDERS:
        raise DataError(
            f"unknown builtin data set {name!r}; valid: {', '.join([*BUILDERS, *TASKS])}"
        )
    return _rows(BUILDERS[name])
