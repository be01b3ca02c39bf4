"""Sampling metrics for k answers per problem: pass@k, avg@k, maj@k, best-of-k by a verifier's
scores, and confidence intervals."""

from __future__ import annotations

import math
import statistics
from collections import Counter
from collections.abc import Sequence

__all__ = ["avg_at_k", "best_of_k", "doubling_ks", "maj_at_k", "mean_with_ci", "pass_at_k"]


def _check_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    return value


def doubling_ks(n: int) -> list[int]:
    """k = 2, 4, 8, … below ``n``, and ``n`` itself (none for n = 1): where pass@k, maj@k and
    best@k of n samples are reported."""
    ks = {n} if n > 1 else set()
    k = 2
    while k < n:
        ks.add(k)
        k *= 2
    return sorted(ks)


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from ``n`` samples of which ``c`` are correct (Chen et al., 2021).

    ``1 - C(n-c, k) / C(n, k)``, computed as ``1 - prod_{i=n-c+1}^{n} (1 - k/i)``, which never
    forms the huge binomials; exactly 1.0 when ``n - c < k`` (every k-subset has a correct one).
    """
    n, c, k = _check_int("n", n), _check_int("c", c), _check_int("k", k)
    if n < 1:
        raise ValueError(f"pass_at_k: n (samples per problem) must be >= 1, got {n}")
    if not 0 <= c <= n:
        raise ValueError(f"pass_at_k: c (correct samples) must be in [0, n={n}], got {c}")
    if not 1 <= k <= n:
        raise ValueError(
            f"pass_at_k: k must be in [1, n={n}], got k={k}; draw at least k samples per problem"
        )
    if n - c < k:
        return 1.0
    prod = 1.0
    for i in range(n - c + 1, n + 1):
        prod *= 1.0 - k / i
    return 1.0 - prod


def avg_at_k(correct: Sequence[bool]) -> float:
    """Mean correctness over the k samples of one problem (avg@k, a.k.a. mean@k)."""
    if len(correct) == 0:
        raise ValueError("avg_at_k: got no samples; pass the k correctness flags of one problem")
    return sum(bool(x) for x in correct) / len(correct)


def maj_at_k(answers: Sequence[str | None], correct: Sequence[bool], k: int | None = None) -> bool:
    """Whether the majority answer among the first ``k`` samples is correct (maj@k).

    ``answers`` are the extracted answers, compared as given: pass them already normalized
    (e.g. ``normalize_answer(extract_boxed(text))``) so that ``0.50`` and ``.5`` vote together.
    A None answer (nothing extracted) does not vote; if no sample votes, the result is False.
    Ties are broken deterministically in favour of the tied answer that appears first among
    the samples. The winner's correctness is ``correct`` at its first occurrence.
    """
    if len(answers) != len(correct):
        raise ValueError(
            f"maj_at_k: got {len(answers)} answers but {len(correct)} correctness flags; "
            "pass one flag per answer"
        )
    if k is None:
        k = len(answers)
    k = _check_int("k", k)
    if not 1 <= k <= len(answers):
        raise ValueError(f"maj_at_k: k must be in [1, {len(answers)}] (the samples), got {k}")
    votes = Counter(a for a in answers[:k] if a is not None)
    if not votes:
        return False
    top = max(votes.values())
    for i, answer in enumerate(answers[:k]):
        if answer is not None and votes[answer] == top:
            return bool(correct[i])
    raise AssertionError("unreachable: some answer has the top vote count")


def best_of_k(scores: Sequence[float], correct: Sequence[bool], k: int) -> bool:
    """Whether the sample a verifier scores highest among the first ``k`` is correct (best-of-k,
    Qwen2.5-Math's RM@k); a tie goes to the first of the tied samples."""
    if len(scores) != len(correct):
        raise ValueError(
            f"best_of_k: got {len(scores)} scores but {len(correct)} correctness flags; "
            "pass one score per sample"
        )
    k = _check_int("k", k)
    if not 1 <= k <= len(scores):
        raise ValueError(f"best_of_k: k must be in [1, {len(scores)}] (the samples), got {k}")
    best = max(range(k), key=lambda i: (scores[i], -i))
    return bool(correct[best])


def mean_with_ci(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float, float]:
    """``(mean, low, high)``: the mean with a two-sided confidence interval.

    For 0/1 data (correctness) this is the Wilson score interval, which stays inside [0, 1]
    and behaves at 0% and 100% accuracy where the normal approximation collapses to a point.
    For other data it is the normal approximation ``mean ± z * s / sqrt(n)`` with the sample
    standard deviation ``s``; with a single value the interval is undefined, (nan, nan).
    """
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"mean_with_ci: confidence must be in (0, 1), got {confidence}")
    n = len(values)
    if n == 0:
        raise ValueError("mean_with_ci: got no values")
    xs = [float(v) for v in values]
    mean = math.fsum(xs) / n
    z = statistics.NormalDist().inv_cdf(0.5 + confidence / 2)
    if all(x in (0.0, 1.0) for x in xs):
        denom = 1.0 + z * z / n
        center = (mean + z * z / (2 * n)) / denom
        half = z / denom * math.sqrt(mean * (1 - mean) / n + z * z / (4 * n * n))
        return mean, max(0.0, center - half), min(1.0, center + half)
    if n == 1:
        return mean, math.nan, math.nan
    half = z * statistics.stdev(xs) / math.sqrt(n)
    return mean, mean - half, mean + half
