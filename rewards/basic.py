"""Simple shaping rewards: answer format and length."""

from __future__ import annotations

import re

from alignlib.rewards.math_normalize import last_boxed_span
from alignlib.rewards.registry import register_reward

__all__ = ["format_reward", "length_penalty", "math_format_reward", "soft_overlong_penalty"]

# What may follow the final box when it must end the completion: closing math delimiters,
# punctuation, and an end-of-sequence marker some chat templates leave in the text.
_TRAILER = re.compile(r"^(?:\s|\$|\\\]|\\\)|[.!]|</s>|<\|im_end\|>|<\|eot_id\|>)*$")


@register_reward("format")
def format_reward(completion: str, *, require_end: bool = False, **_: object) -> float:
    """1.0 if ``completion`` has a non-empty, closed ``\\boxed{...}`` answer, else 0.0.

    With ``require_end=True`` the last box must also end the completion: only whitespace,
    ``$``, ``\\]``, ``\\)``, ``.``, ``!`` or an end-of-turn token may follow it.
    """
    span = last_boxed_span(completion)
    if span is None or not completion[span[0] : span[1]].strip():
        return 0.0
    if require_end and not _TRAILER.match(completion[span[2] :]):
        return 0.0
    return 1.0


@register_reward("length_penalty")
def length_penalty(
    completion: str,
    *,
    target_length: int = 4096,
    slope: float | None = None,
    max_penalty: float = 1.0,
    num_tokens: int | None = None,
) -> float:
    """Non-positive penalty that grows linearly once the completion exceeds ``target_length``.

    ``length`` is ``num_tokens`` when the caller passes it (a rollout knows the token count),
    otherwise ``len(completion)`` in characters. The result is
    ``-min(max_penalty, slope * max(0, length - target_length))``; the default ``slope`` is
    ``1 / target_length``, so a completion twice the target costs 1.0, as much as a correct
    math answer earns.

    It has no ``**`` catch-all on purpose: a misspelled parameter is an error, not ignored
    (the online trainer passes only the data columns a reward names).
    """
    if target_length <= 0:
        raise ValueError(f"length_penalty: target_length must be > 0, got {target_length}")
    if max_penalty < 0:
        raise ValueError(f"length_penalty: max_penalty must be >= 0, got {max_penalty}")
    length = num_tokens if num_tokens is not None else len(completion)
    rate = 1.0 / target_length if slope is None else slope
    penalty = min(max_penalty, rate * max(0, length - target_length))
    return -penalty if penalty > 0 else 0.0  # never -0.0


@register_reward("soft_overlong")
def soft_overlong_penalty(
    completion: str,
    *,
    max_length: int = 20480,
    cache_length: int = 4096,
    factor: float = 1.0,
    floor: bool = True,
    num_tokens: int | None = None,
) -> float:
    """DAPO's soft overlong punishment (Yu et al. 2025, eq. 13), added to the task reward.

    With L = ``num_tokens`` (characters when the caller has no token count), L_max =
    ``max_length`` and L_cache = ``cache_length``: 0 while L ≤ L_max − L_cache, then
    ``factor`` · (L_max − L_cache − L) / L_cache, falling linearly to −``factor`` at L_max, and
    −``factor`` beyond L_max. ``floor=False`` drops that last case and keeps the linear ramp
    (verl's ``overlong_buffer``, whose penalty factor is ``factor``). Set max_length to the
    rollout's max_new_tokens. Defaults: the paper's 20480 / 4096.
    """
    if not 0 < cache_length <= max_length:
        raise ValueError(
            f"soft_overlong: need 0 < cache_length <= max_length, got {cache_length}, {max_length}"
        )
    if factor < 0:
        raise ValueError(f"soft_overlong: factor must be >= 0, got {factor}")
    length = num_tokens if num_tokens is not None else len(completion)
    expected = max_length - cache_length
    if length <= expected:
        return 0.0
    if length > max_length and floor:
        return -factor
    return factor * (expected - length) / cache_length


@register_reward("math_format")
def math_format_reward(completion: str, answer: str, **_: object) -> float:
    """A graded preference for sample-and-rank oracles (INPO, BVPO pair building).

    1.0 for a right boxed answer, 0.2 for a wrong but boxed one, 0 otherwise, minus a tie-break
    of 1e-4 per 100 characters so that among equal verdicts the shorter response wins (a weak
    model that gets every sample wrong still yields informative pairs).
    """
    from alignlib.rewards.math_grader import math_reward

    verdict = math_reward(completion, answer)
    boxed = format_reward(completion)
    return verdict + 0.2 * boxed * (1.0 - verdict) - 1e-4 * len(completion) / 100
