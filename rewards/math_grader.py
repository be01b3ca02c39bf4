"""Grade a model's final answer against a reference answer.

``grade`` takes the answer from the last ``\\boxed{}`` of the response and compares it with
the reference in two steps:

1. In-process: :func:`normalize_answer` string equality. Most correct answers stop here and
   never pay for a process round trip.
2. math-verify (``parse`` + ``verify``, symbolic and numeric equivalence) in a pool of worker
   processes, with a hard time limit per answer that works from any thread: a worker that runs
   past it is killed (the answer counts as wrong) and replaced. math-verify sees the answers
   after :func:`light_clean` (units, degrees, ``1.5e3`` -> ``1.5\\times 10^{3}``, column
   vectors -> tuples), and two plain numbers must also agree to a relative 1e-4, because
   math-verify alone rounds to 6 decimals and calls ``1.3e-27`` equal to ``2.9e-19``. The first
   call starts the workers once (about a second), which is not billed to the time limit.
"""

from __future__ import annotations

from collections.abc import Sequence

from alignlib.rewards._verify_pool import configure_pool, get_pool, shutdown_pool
from alignlib.rewards.math_normalize import extract_boxed, light_clean, normalize_answer
from alignlib.rewards.registry import register_reward

__all__ = [
    "configure_pool",
    "extract_boxed",
    "grade",
    "grade_many",
    "math_reward",
    "normalize_answer",
    "shutdown_pool",
]

Pairs = list[tuple[str, str]]


def _as_text(value: object, what: str) -> str:
    if isinstance(value, str):
        return value
    # Numeric answer columns (27, 0.5) are common in user datasets; anything else is a bug.
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    raise TypeError(f"{what} must be a str, got {type(value).__name__}: {value!r:.80}")


def _prepare(response: object, reference: object) -> tuple[bool | None, Pairs]:
    """Verdict if decidable in-process, else the (gold, pred) pairs for math-verify."""
    response = _as_text(response, "response")
    reference = _as_text(reference, "reference")
    pred = extract_boxed(response)
    gold = extract_boxed(reference)
    if gold is None:
        gold = reference.strip()
    if pred is None or not normalize_answer(pred) or not normalize_answer(gold):
        return False, []
    if normalize_answer(pred) == normalize_answer(gold):
        return True, []
    return None, [(light_clean(gold), light_clean(pred))]


def grade_many(
    responses: Sequence[str], references: Sequence[str], timeout_s: float = 5.0
) -> list[bool]:
    """Grade many responses at once; the math-verify work is spread over the worker pool.

    ``timeout_s`` is the hard limit per answer (an answer past it is graded False).
    """
    if len(responses) != len(references):
        raise ValueError(
            f"grade_many: got {len(responses)} responses but {len(references)} references; "
            "pass one reference per response"
        )
    if not timeout_s > 0:
        raise ValueError(f"timeout_s must be > 0 seconds, got {timeout_s!r}")
    verdicts: list[bool] = []
    todo: list[int] = []
    tasks: list[Pairs] = []
    for i, (response, reference) in enumerate(zip(responses, references, strict=True)):
        verdict, pairs = _prepare(response, reference)
        verdicts.append(bool(verdict))
        if verdict is None:
            todo.append(i)
            tasks.append(pairs)
    if tasks:
        for i, ok in zip(todo, get_pool().run(tasks, timeout_s), strict=True):
            verdicts[i] = ok
    return verdicts


def grade(response: str, reference: str, *, timeout_s: float = 5.0) -> bool:
    """Whether the last ``\\boxed{}`` answer in ``response`` equals ``reference``.

    No box in the response means False. ``reference`` may be a bare answer or contain a
    ``\\boxed{}`` (then its last box is used). Safe to call from any thread; never takes longer
    than about ``timeout_s`` (plus a one-off worker start on the first call).
    """
    return grade_many([response], [reference], timeout_s=timeout_s)[0]


@register_reward("math")
def math_reward(completion: str, answer: str, *, timeout_s: float = 5.0, **_: object) -> float:
    """Training reward: 1.0 if the completion's boxed answer equals ``answer``, else 0.0.

    ``timeout_s`` is the hard limit per answer (set it with ``{name: math, params:
    {timeout_s: 10}}``); other row columns are ignored."""
    return 1.0 if grade(completion, answer, timeout_s=timeout_s) else 0.0
